"""How every gptscratch command reports: bad input is one line on stderr naming the input and the fix, exit 2.

`run_command` runs a command's work with fields spelled as its flags (`common.errors.field`), turns an
`InputError` (the library's, or the command line's `UsageError`, which `ArgumentParser` raises for bad flags) into
that line and exit status, and does the same for an output location that is full or read-only. It also keeps that
line the only one a failing command leaves on stderr: progress bars are drawn only on a terminal, and cleared there
before the error is printed. Only the standard library is imported here (tqdm aside, once a command runs), so every
command can refuse bad input before it imports torch or transformers.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn

from common.compat import DEEPSPEED_CPU_NOTICE, clear_progress_bars, disable_progress_bars, drop_log_messages
from common.errors import STORAGE_FAILURES, InputError, failed_path, spelling, storage_failure


class UsageError(InputError):
    """A command used wrongly: a bad flag, a missing one, flags that do not go together."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are UsageErrors: one line on stderr and exit status 2, like every other bad input."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message}; see {self.prog} --help")


def flag_name(field_name: str) -> str:
    """A field's flag: `max_steps` -> `--max-steps`."""
    return "--" + field_name.replace("_", "-")


def run_command(name: str, main: Callable[[], int | None]) -> None:
    """Runs a command's `main` with fields spelled as flags; an InputError becomes `name: error: message` on stderr
    and exit status 2, and so does an output location that is full or read-only (any other error keeps its
    traceback)."""
    progress_bars_only_on_a_terminal()
    drop_log_messages(*DEEPSPEED_CPU_NOTICE)  # before anything imports accelerate, and with it DeepSpeed
    try:
        with spelling(flag_name):
            status = main()
    except InputError as error:
        print_error(f"{name}: error: {error}")
        sys.exit(2)
    except KeyboardInterrupt:
        print_error(f"{name}: interrupted")
        sys.exit(130)
    except Exception as error:
        code = storage_failure(error)
        if code is None:
            raise
        # A write that no writer of common.files wrapped (a library's cache, say): the errno's own file name.
        reason, fix = STORAGE_FAILURES[code]
        print_error(
            f"{name}: error: cannot write {failed_path(error) or 'an output'}: {reason}; {fix.format(where='location')}"
        )
        sys.exit(2)
    sys.exit(status or 0)


# ---------------------------------------------------------------------------------------------------------------------
# stderr: progress bars only on a terminal, and the error as the last line


def progress_bars_only_on_a_terminal() -> None:
    """Turns every progress bar off unless stderr is a terminal, as git and pip do.

    In a log file or a pipe, bars are carriage-return noise, and the line a failing command prints must be the only
    one it leaves there. Every bar of the libraries a command runs (datasets, transformers and its Trainer,
    huggingface_hub, accelerate, lm-eval) is a tqdm bar, so tqdm itself is told (processes launched anew, such as
    torchrun's, run a command of their own).
    """
    if not sys.stderr.isatty():
        disable_progress_bars()


def print_error(line: str) -> None:
    """Prints `line` on stderr, first clearing any progress bar still drawn on the terminal's last line."""
    if sys.stderr.isatty():
        clear_progress_bars()
    print(line, file=sys.stderr)
