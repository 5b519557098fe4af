"""What every gptscratch command shares: bad input is one line on stderr naming the input and the fix, exit 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable


class UsageError(Exception):
    """Bad input from the user: the message names the input and the fix."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are UsageErrors: one line on stderr and exit status 2, like every other bad input."""

    def error(self, message: str) -> None:  # type: ignore[override]
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
