"""How every gptscratch command reports: bad input is one line on stderr naming the input and the fix, exit 2.

`UsageError` is that input error, `ArgumentParser` raises it for bad flags, `run_command` turns it into the line
and the exit status, and `first_line` shortens library errors whose messages run to many lines. `run_command` also
keeps that line the only one a failing command leaves on stderr: progress bars are drawn only on a terminal, and
cleared there before the error is printed. A full or read-only disk is an input error too (the output location is
the user's choice): `storage_failure` finds one in any error, and `run_command` reports whatever the writers in
`common.files` did not already name. Only the standard library is imported here (tqdm aside, once a command runs),
so every command can refuse bad input before it imports torch or transformers.
"""

from __future__ import annotations

import argparse
import errno
import functools
import os
import sys
from collections.abc import Callable
from typing import NoReturn


class UsageError(Exception):
    """Bad input from the user: the message names the input and the fix."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are UsageErrors: one line on stderr and exit status 2, like every other bad input."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message}; see {self.prog} --help")


def run_command(name: str, main: Callable[[], int | None]) -> None:
    """Runs a command's `main`; a UsageError becomes `name: error: message` on stderr and exit status 2, and so does
    an output location that is full or read-only (any other error keeps its traceback)."""
    progress_bars_only_on_a_terminal()
    try:
        status = main()
    except UsageError as error:
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
            f"{name}: error: cannot write {_failed_path(error) or 'an output'}: {reason}; "
            f"{fix.format(where='location')}"
        )
        sys.exit(2)
    sys.exit(status or 0)


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (library errors often run to many lines), or its type's name."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


# ---------------------------------------------------------------------------------------------------------------------
# A full or read-only output location

# What each failure means and how to get past it. EACCES and EPERM count only where a writer knows it was writing
# (`storage_failure(..., writing=True)`): elsewhere they may just as well be a file the user cannot read.
STORAGE_FAILURES = {
    errno.ENOSPC: ("no space left on device", "free some space there or choose another {where}"),
    errno.EDQUOT: ("disk quota exceeded", "free some space there or choose another {where}"),
    errno.EROFS: ("read-only file system", "choose a writable {where}"),
    errno.EACCES: ("permission denied", "choose a writable {where} or fix its permissions"),
    errno.EPERM: ("operation not permitted", "choose a writable {where} or fix its permissions"),
}
# torch.save reports a failed write without its errno: "[enforce fail at inline_container.cc:672] . unexpected pos
# 640 vs 598", caused by "basic_ios::clear: iostream error". The writer that sees it asks the disk (common.files).
TORCH_WRITE_FAILED = -1
_TORCH_WRITE_MESSAGES = ("inline_container.cc", "basic_ios::clear", "PytorchStreamWriter failed")


def storage_failure(error: BaseException, writing: bool = False) -> int | None:
    """The errno of a full or read-only disk behind `error` (ENOSPC, EDQUOT, EROFS, and with `writing` EACCES and
    EPERM), TORCH_WRITE_FAILED for torch.save's errno-less write failure (with `writing`), None for anything else.

    Looked for in the error and its causes: an OSError's errno, or the system's own wording of it, which is all that
    safetensors ("I/O error: No space left on device (os error 28)"), torch and git pass on.
    """
    codes = [errno.ENOSPC, errno.EDQUOT, errno.EROFS] + ([errno.EACCES, errno.EPERM] if writing else [])
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in codes:
            return error.errno
        text = str(error)
        for code in codes:
            if os.strerror(code) in text:
                return code
        if writing and any(message in text for message in _TORCH_WRITE_MESSAGES):
            return TORCH_WRITE_FAILED
        error = error.__cause__ or error.__context__
    return None


def _failed_path(error: BaseException | None) -> str | None:
    """The file name of the first OSError in `error`'s chain that has one."""
    while error is not None:
        if isinstance(error, OSError) and error.filename:
            return str(error.filename)
        error = error.__cause__ or error.__context__
    return None


# ---------------------------------------------------------------------------------------------------------------------
# stderr: progress bars only on a terminal, and the error as the last line


def progress_bars_only_on_a_terminal() -> None:
    """Turns every progress bar off unless stderr is a terminal, as git and pip do.

    In a log file or a pipe, bars are carriage-return noise, and the line a failing command prints must be the only
    one it leaves there. Every bar of the libraries a command runs (datasets, transformers and its Trainer,
    huggingface_hub, accelerate, lm-eval) is a tqdm bar, so tqdm itself is told (worker processes forked later
    inherit it; processes launched anew, such as torchrun's, run a command of their own).
    """
    if sys.stderr.isatty():
        return
    import tqdm.std  # a dependency of every command, and quick to import

    if getattr(tqdm.std.tqdm.__init__, "always_disabled", False):
        return
    # A bar asked for with disable=False (transformers' Trainer, the training loop) is off too: tqdm offers no
    # switch for that, so its constructor is given disable=True whatever it is passed.
    shown = tqdm.std.tqdm.__init__

    @functools.wraps(shown)
    def never_shown(self: tqdm.std.tqdm, *args: object, **kwargs: object) -> None:
        kwargs["disable"] = True
        shown(self, *args, **kwargs)

    never_shown.always_disabled = True  # type: ignore[attr-defined]
    tqdm.std.tqdm.__init__ = never_shown


def print_error(line: str) -> None:
    """Prints `line` on stderr, first clearing any progress bar still drawn on the terminal's last line."""
    tqdm = sys.modules.get("tqdm.std")
    if tqdm is not None and sys.stderr.isatty():
        for bar in list(getattr(tqdm.tqdm, "_instances", ())):
            bar.leave = False  # close() then wipes the bar's line instead of leaving it
            bar.close()
    print(line, file=sys.stderr)
