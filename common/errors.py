"""Bad input, as every part of the package reports it: an `InputError` whose message names the input and the fix.

The library names what it was given by field, as its Python caller passed it (`max_steps`, `output_dir`); a command's
user typed flags (`--max-steps`). `field(name)` spells a field the way the current caller knows it, and only a
command layer changes that (`spelling`, set by `common.commands.run_command`), so no module below the commands
spells a flag. A full or read-only disk is bad input too (the output location is the user's choice):
`storage_failure` finds one in any error. Standard library only.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import os
from collections.abc import Callable, Iterator

from common.compat import TORCH_WRITE_FAILURE_MESSAGES


class InputError(ValueError):
    """Bad input, to a Python function or a command: the message names the input, its value and the fix. A
    ValueError for Python callers; a command prints it as one line and exits with status 2."""


_SPELLING: contextvars.ContextVar[Callable[[str], str] | None] = contextvars.ContextVar("spelling", default=None)


def field(name: str) -> str:
    """Field `name` as the caller knows it: the name itself from Python, the flag a command spells it as."""
    spell = _SPELLING.get()
    return name if spell is None else spell(name)


@contextlib.contextmanager
def spelling(spell: Callable[[str], str]) -> Iterator[None]:
    """Within the block, `field` spells names with `spell` (a command's flags)."""
    token = _SPELLING.set(spell)
    try:
        yield
    finally:
        _SPELLING.reset(token)


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
# torch.save reports a failed write without its errno (`common.compat.TORCH_WRITE_FAILURE_MESSAGES`): the writer
# that sees one asks the disk (common.files).
TORCH_WRITE_FAILED = -1


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
        if writing and any(message in text for message in TORCH_WRITE_FAILURE_MESSAGES):
            return TORCH_WRITE_FAILED
        error = error.__cause__ or error.__context__
    return None


def failed_path(error: BaseException | None) -> str | None:
    """The file name of the first OSError in `error`'s chain that has one."""
    while error is not None:
        if isinstance(error, OSError) and error.filename:
            return str(error.filename)
        error = error.__cause__ or error.__context__
    return None
