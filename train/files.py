"""Atomic file writes: into a temporary sibling, then renamed over the target, so readers never see half a file."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from convert.model_dir import default_mode


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
