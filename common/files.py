"""Users' files in, outputs out, with nothing half-written: the readers and writers every command shares.

Readers turn a user's file into a `UsageError` that names it (`read_utf8_file`, `read_json_object`). Writers go
through a temporary sibling that is renamed over the target only once complete, so readers never see half a file
(`write_atomic` and its text and JSON forms) or half a directory (`atomic_directory`). Standard library only.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from common.commands import UsageError

# ---------------------------------------------------------------------------------------------------------------------
# Reading users' files


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

# ---------------------------------------------------------------------------------------------------------------------
# Writing outputs atomically


def publish(temporary: str | os.PathLike, target: str | os.PathLike) -> None:
    """Gives a finished temporary file (created private, 0600) the permissions a new file would get, then renames it
    over `target`."""
    os.chmod(temporary, default_mode(directory=False))
    os.replace(temporary, target)


def write_atomic(target: str | os.PathLike, write: Callable[[str], None], suffix: str = "") -> None:
    """Calls `write(temporary_path)`, then publishes the file as `target`; on error the target is untouched."""
    target = Path(target)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{target.name}.tmp-", suffix=suffix, dir=target.parent)
    os.close(descriptor)
    try:
        write(temporary)
        publish(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def write_text_atomic(target: str | os.PathLike, text: str) -> None:
    write_atomic(target, lambda path: Path(path).write_text(text, encoding="utf-8"))


def write_json_atomic(target: str | os.PathLike, value: Any) -> None:
    write_text_atomic(target, json.dumps(value, indent=2) + "\n")


def check_output_directory(target: str | os.PathLike, overwrite: bool = False) -> Path:
    """The absolute `target` if a model directory may be written there, else a UsageError; writes nothing.

    `atomic_directory` checks this too; a command that reads for minutes before writing calls it first as well,
    so a refused output is reported before that work instead of after it.
    """
    target = Path(target).absolute()
    if target.exists() and not target.is_dir():
        raise UsageError(f"output {target} exists and is not a directory; choose another path")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise UsageError(f"output directory {target} exists and is not empty; pass --overwrite or choose another")
    return target


def _staging_prefix(target: Path) -> str:
    return f".{target.name}.tmp-"


def _retired_prefix(target: Path) -> str:
    return f".{target.name}.old-"


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yields an empty temporary sibling of `target`; renames it to `target` only when the block succeeds.

    A crash or error leaves `target` as it was (absent, or the previous good version) and removes the temporary.
    An existing non-empty `target` is refused unless `overwrite`, in which case it is replaced at the end.
    A process killed mid-way can leave its siblings behind; `recover_interrupted_writes` tidies them.
    """
    target = check_output_directory(target, overwrite)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=_staging_prefix(target), dir=target.parent))
    except OSError as error:
        raise UsageError(f"cannot write to {target.parent}: {error.strerror}; choose a writable location") from error
    try:
        yield staging
        _give_default_permissions(staging)
        if target.exists():
            # Two renames: the old version is moved aside before the new one takes its name.
            retired = Path(tempfile.mkdtemp(prefix=_retired_prefix(target), dir=target.parent))
            os.replace(target, retired / target.name)
            os.replace(staging, target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def recover_interrupted_writes(target: str | os.PathLike) -> None:
    """Tidies what a killed `atomic_directory(target)` left: puts back a `target` moved aside by a process killed
    between its two renames (the newest one moved aside, when `target` is missing), then removes every leftover
    staging and retired sibling.

    Call it only while no other writer can be at work on `target` (under a lock): a live writer's staging
    directory looks the same as a dead one's.
    """
    target = Path(target).absolute()
    if not target.parent.is_dir():
        return
    retired = sorted(
        (path for path in target.parent.glob(_retired_prefix(target) + "*") if (path / target.name).is_dir()),
        key=lambda path: path.stat().st_mtime_ns,
    )
    if retired and not target.exists():
        os.replace(retired[-1] / target.name, target)
    for prefix in (_staging_prefix(target), _retired_prefix(target)):
        for leftover in target.parent.glob(prefix + "*"):
            shutil.rmtree(leftover, ignore_errors=True)


def default_mode(directory: bool) -> int:
    """The mode a plain mkdir (0777) or open (0666) gives under the current umask."""
    umask = os.umask(0)  # the only way to read the umask is to set it
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def _give_default_permissions(staging: Path) -> None:
    """Gives the staged tree the modes a plain mkdir/open would instead of mkdtemp's private 0700 and the 0600 of
    writers that go through temporary files: outputs are there to be read. A .git folder keeps git's modes."""
    file_mode, directory_mode = default_mode(directory=False), default_mode(directory=True)
    staging.chmod(directory_mode)
    for path in staging.rglob("*"):
        if ".git" not in path.relative_to(staging).parts and not path.is_symlink():
            path.chmod(directory_mode if path.is_dir() else file_mode)
