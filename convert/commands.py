"""What every gptscratch command shares: bad input is one line on stderr naming the input and the fix, exit 2.

Also the small readers that turn a user's file into that kind of error: `read_json_object` for the JSON objects the
commands read (hparams.json, config.json, a book config, a training summary), and `first_line` for library errors
whose messages run to many lines. Only the standard library is imported here, so every command can refuse bad input
before it imports torch or transformers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn


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


_JSON_TYPES = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "true/false"}


def parse_json_object(text: str, source: str, fix: str) -> dict[str, Any]:
    """The JSON object `text` holds; a UsageError naming `source` and `fix` when it is not JSON or not an object."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        # JSONDecodeError's message is one line and says where: "Expecting value: line 1 column 2 (char 1)".
        raise UsageError(f"{source} is not valid JSON ({error}); {fix}") from None
    if not isinstance(value, dict):
        raise UsageError(f"{source} holds {_JSON_TYPES.get(type(value), 'null')}, not a JSON object; {fix}")
    return value


def read_utf8_file(path: str | os.PathLike, what: str, fix: str) -> str:
    """The text of the UTF-8 file at `path`, or a UsageError that names it as `what PATH` and ends with `fix`.

    Refused: a missing file, a directory, an unreadable file, and bytes that are not UTF-8 (with the byte offset).
    """
    path = Path(path)
    source = f"{what} {path}"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{source} does not exist; {fix}") from None
    except IsADirectoryError:
        raise UsageError(f"{source} is a directory, not a file; {fix}") from None
    except OSError as error:
        raise UsageError(f"cannot read {source} ({error.strerror}); {fix}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UsageError(f"{source} is not UTF-8 text (byte offset {error.start}); {fix}") from None


def read_json_object(path: str | os.PathLike, what: str, fix: str) -> dict[str, Any]:
    """The JSON object in the file at `path`, or a UsageError that names the file as `what PATH` and ends with `fix`.

    Refused: what `read_utf8_file` refuses, text that is not JSON, and JSON that is not an object (e.g. an array).
    """
    return parse_json_object(read_utf8_file(path, what, fix), f"{what} {Path(path)}", fix)
