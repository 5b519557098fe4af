"""How every gptscratch command reports: bad input is one line on stderr naming the input and the fix, exit 2.

`UsageError` is that input error, `ArgumentParser` raises it for bad flags, `run_command` turns it into the line
and the exit status, and `first_line` shortens library errors whose messages run to many lines. Only the standard
library is imported here, so every command can refuse bad input before it imports torch or transformers.
"""

from __future__ import annotations

import argparse
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
    """Runs a command's `main`; a UsageError becomes `name: error: message` on stderr and exit status 2."""
    try:
        status = main()
    except UsageError as error:
        print(f"{name}: error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(status or 0)


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (library errors often run to many lines), or its type's name."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
