"""Users' files in, outputs out, with nothing half-written: the readers and writers every command shares.

Readers turn a user's file into an `InputError` that names it (`read_utf8_file`, `read_json_object`). Writers go
through a temporary sibling that is renamed over the target only once complete, so readers never see half a file
(`write_atomic` and its text and JSON forms) or half a directory (`atomic_directory`). A full or read-only disk
met while writing is an `InputError` naming what was being written, where, and the space it needed
(`writing_output`, which every writer here goes through); `check_writable` refuses a read-only location before any
work. Standard library only.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from common.errors import STORAGE_FAILURES, TORCH_WRITE_FAILED, InputError, field, storage_failure

# ---------------------------------------------------------------------------------------------------------------------
# Reading users' files


_JSON_TYPES = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "true/false"}


def parse_json_object(text: str, source: str, fix: str) -> dict[str, Any]:
    """The JSON object `text` holds; an InputError naming `source` and `fix` when it is not JSON or not an object."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        # JSONDecodeError's message is one line and says where: "Expecting value: line 1 column 2 (char 1)".
        raise InputError(f"{source} is not valid JSON ({error}); {fix}") from None
    if not isinstance(value, dict):
        raise InputError(f"{source} holds {_JSON_TYPES.get(type(value), 'null')}, not a JSON object; {fix}")
    return value


def read_utf8_file(path: str | os.PathLike, what: str, fix: str) -> str:
    """The text of the UTF-8 file at `path`, or an InputError that names it as `what PATH` and ends with `fix`.

    Refused: a missing file, a directory, an unreadable file, and bytes that are not UTF-8 (with the byte offset).
    """
    path = Path(path)
    source = f"{what} {path}"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{source} does not exist; {fix}") from None
    except IsADirectoryError:
        raise InputError(f"{source} is a directory, not a file; {fix}") from None
    except OSError as error:
        raise InputError(f"cannot read {source} ({error.strerror}); {fix}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InputError(f"{source} is not UTF-8 text (byte offset {error.start}); {fix}") from None


def read_json_object(path: str | os.PathLike, what: str, fix: str) -> dict[str, Any]:
    """The JSON object in the file at `path`, or an InputError that names the file as `what PATH` and ends with `fix`.

    Refused: what `read_utf8_file` refuses, text that is not JSON, and JSON that is not an object (e.g. an array).
    """
    return parse_json_object(read_utf8_file(path, what, fix), f"{what} {Path(path)}", fix)


# ---------------------------------------------------------------------------------------------------------------------
# Full and read-only output locations

# Less than this much free space after torch.save failed without saying why means the disk filled up.
_NEARLY_FULL_BYTES = 1 << 20


class OutputWriteError(InputError):
    """A write that failed for want of space or permission: what was written, where, the errno, the space, and the
    field that chose the location (`option`)."""

    def __init__(self, code: int, path: Path, what: str, size: int | None, free: int | None, option: str | None):
        self.code, self.path, self.what, self.size, self.free, self.option = code, path, what, size, free, option
        reason, fix = STORAGE_FAILURES[code]
        space = ""
        if code in (errno.ENOSPC, errno.EDQUOT) and free is not None:
            needs = f"it needs about {format_size(size)}; " if size else ""
            space = f" ({needs}{format_size(free)} free before writing)"
        where = f"{what} {path}" if what else str(path)
        chosen_by = field(option) if option else "location"
        super().__init__(f"cannot write {where}: {reason}{space}; {fix.format(where=chosen_by)}")


@contextlib.contextmanager
def writing_output(
    path: str | os.PathLike, what: str = "", size: int | None = None, option: str | None = None
) -> Iterator[None]:
    """Turns a full or read-only disk met inside the block into an `OutputWriteError`: "cannot write WHAT PATH:
    no space left on device (it needs about SIZE; FREE free before writing); free some space there or choose another
    OPTION". Other errors pass unchanged; removing what the block half wrote is its own business (the atomic writers
    below do it).

    `size` is the number of bytes the block writes, when known; `option` the field that chose the location.
    Nested, the outermost names the failure: a model directory is reported as such, not as the temporary folder it
    was being written into.
    """
    path = Path(path)
    free_before = free_space(path)
    try:
        yield
    except OutputWriteError as error:
        raise OutputWriteError(
            error.code, path, what or error.what, size or error.size, free_before, option or error.option
        ) from error.__cause__
    except InputError:
        raise
    except Exception as error:
        code = storage_failure(error, writing=True)
        if code == TORCH_WRITE_FAILED:  # no errno to go by: ask the disk
            free_now = free_space(path)
            filled = free_now is not None and free_now < _NEARLY_FULL_BYTES
            code = errno.ENOSPC if filled or (size and free_before is not None and free_before < size) else None
        if code is None:
            raise
        raise OutputWriteError(code, path, what, size, free_before, option) from error


def free_space(path: str | os.PathLike) -> int | None:
    """Bytes free for writing on the file system that holds `path` (or would: its nearest existing ancestor)."""
    try:
        return shutil.disk_usage(_existing_ancestor(Path(path))).free
    except OSError:
        return None


def check_writable(path: str | os.PathLike, what: str, option: str | None = None) -> None:
    """An InputError unless `path` is, or can be created as, a directory this process may write into; `option`
    is the field that chose it.

    Checked before a command's work, so a read-only or foreign location is refused at once, not after minutes.
    """
    path = Path(path).absolute()
    existing = _existing_ancestor(path)
    where = field(option) if option else "location"
    if not existing.is_dir():
        raise InputError(f"{what} {path} cannot be used: {existing} is not a directory; choose another {where}")
    if not os.access(existing, os.W_OK | os.X_OK):
        read_only = os.statvfs(existing).f_flag & os.ST_RDONLY
        reason = f"{existing} is on a read-only file system" if read_only else str(existing)
        raise InputError(f"{what} {path} is not writable ({reason}); choose a writable {where}")


def check_apart(output: str | os.PathLike, inputs: Mapping[str, Iterable[str | os.PathLike]], named: str) -> None:
    """An InputError when the `output` location is, contains or lies inside one of the `inputs` (paths by the field
    that named them): writing there, let alone replacing a whole output directory, could change or delete the input.
    `named` is how the message names the output (`--output-dir out`). Paths are compared resolved, links followed;
    whatever `overwrite` says."""
    target = Path(output).resolve()
    for name, paths in inputs.items():
        for path in paths:
            source = Path(path).resolve()
            if target == source:
                relation = "is"
            elif source in target.parents:
                relation = "lies inside"
            elif target in source.parents:
                relation = "contains"
            else:
                continue
            raise InputError(
                f"{named} {relation} {field(name)} {path}: writing there could change or delete the input; write "
                "elsewhere"
            )


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def format_size(size: int) -> str:
    """Bytes as people read them: 1.2 GB, 34.0 MB, 5.6 KB, 789 bytes."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"


# ---------------------------------------------------------------------------------------------------------------------
# Writing outputs atomically


def publish(temporary: str | os.PathLike, target: str | os.PathLike) -> None:
    """Gives a finished temporary file (created private, 0600) the permissions a new file would get, then renames it
    over `target`."""
    os.chmod(temporary, default_mode(directory=False))
    os.replace(temporary, target)


def write_atomic(target: str | os.PathLike, write: Callable[[str], None], suffix: str = "") -> None:
    """Calls `write(temporary_path)`, then publishes the file as `target`; on error the target is untouched and the
    temporary removed (a full or read-only disk is an `OutputWriteError` naming `target`)."""
    target = Path(target)
    with writing_output(target):
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
    """The absolute `target` if a model directory may be written there (a new or empty directory, or any with
    `overwrite`, in a writable location), else an InputError; writes nothing.

    `atomic_directory` checks this too; a command that reads for minutes before writing calls it first as well,
    so a refused output is reported before that work instead of after it.
    """
    target = Path(target).absolute()
    if target.exists() and not target.is_dir():
        raise InputError(f"output {target} exists and is not a directory; choose another path")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise InputError(
            f"output directory {target} exists and is not empty; pass {field('overwrite')} or choose another"
        )
    check_writable(target, "output directory")
    return target


def _staging_prefix(target: Path) -> str:
    return f".{target.name}.tmp-"


def _retired_prefix(target: Path) -> str:
    return f".{target.name}.old-"


@contextlib.contextmanager
def atomic_directory(
    target: str | os.PathLike, overwrite: bool = False, what: str = "output directory", size: int | None = None
) -> Iterator[Path]:
    """Yields an empty temporary sibling of `target`; renames it to `target` only when the block succeeds.

    A crash or error leaves `target` as it was (absent, or the previous good version) and removes the temporary;
    a full or read-only disk is an `OutputWriteError` naming `what`, `target` and the `size` to be written.
    An existing non-empty `target` is refused unless `overwrite`, in which case it is replaced at the end.
    A process killed mid-way can leave its siblings behind; `recover_interrupted_writes` tidies them.
    """
    target = check_output_directory(target, overwrite)
    with writing_output(target, what, size):
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=_staging_prefix(target), dir=target.parent))
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
