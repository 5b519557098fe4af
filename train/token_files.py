"""Prepared tokens on disk: flat token files, as nanoGPT's prepare.py and llm.c store them, cached by what made them.

A cache entry is a directory `<cache>/gptscratch-tokens/<key>/` holding `train.bin` and `val.bin` (the token IDs
one after another, uint16 while the vocabulary fits in 65,536 IDs, else uint32, native byte order) and
`meta.json`. It is built in a temporary sibling: the token files first, then `meta.json`, then one rename gives it
its name, so a directory with that name is always complete; a reader still checks the files' sizes against
`meta.json`. An interrupted build leaves only its temporary sibling, which the next build removes once the process
that made it is gone, and an error during a build (a full disk) removes it at once.

The key is a hash of everything that decides the tokens (`cache_key`): the corpus (each file's path, size and
modification time; or a dataset's name, configuration, split and fingerprint), the tokenizer (a hash of its
vocabulary, merges and special tokens), the train/validation ratio, deduplication and this format's version.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import InputError, field, storage_failure
from common.files import default_mode, write_json_atomic

FORMAT_VERSION = 1
SPLITS = ("train", "val")
META_FILE = "meta.json"
_STAGING_PREFIX = ".tmp-"


def cache_key(parts: dict[str, Any]) -> str:
    """A short stable hash of JSON-able `parts` (and the format version): the name of a cache entry."""
    text = json.dumps({"format": FORMAT_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


@dataclass
class TokenFiles:
    """A complete cache entry: where it is, its metadata, and each split's tokens, memory-mapped (read-only)."""

    directory: Path
    meta: dict[str, Any]
    made: bool = False  # built by this call, rather than found in the cache

    def tokens(self, split: str) -> np.ndarray:
        """The split's token IDs [tokens], memory-mapped: nothing is read until a window is."""
        count = self.meta["tokens"][split]
        if count == 0:  # mmap refuses an empty file
            return np.zeros(0, dtype=self.meta["dtype"])
        return np.memmap(self.directory / f"{split}.bin", dtype=self.meta["dtype"], mode="r", shape=(count,))

    @property
    def size(self) -> int:
        """Bytes on disk."""
        return sum(path.stat().st_size for path in self.directory.iterdir())


def open_entry(directory: Path) -> TokenFiles | None:
    """The cache entry at `directory` if it is there and complete (sizes as meta.json says), else None."""
    try:
        meta = json.loads((directory / META_FILE).read_text(encoding="utf-8"))
        itemsize = np.dtype(meta["dtype"]).itemsize
        complete = meta["format"] == FORMAT_VERSION and all(
            (directory / f"{split}.bin").stat().st_size == meta["tokens"][split] * itemsize for split in SPLITS
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return TokenFiles(directory, meta) if complete else None


class TokenFileWriter:
    """Appends token arrays to one split's file."""

    def __init__(self, path: Path, dtype: np.dtype):
        self.path = path
        self.dtype = dtype
        self.count = 0
        self._stream = open(path, "wb")

    def append(self, tokens: np.ndarray) -> None:
        """Writes `tokens` [n] (already of the file's dtype) at the end of the file."""
        self._stream.write(memoryview(np.ascontiguousarray(tokens, dtype=self.dtype)))
        self.count += len(tokens)

    def close(self, sync: bool = False) -> None:
        """Closes the file; with `sync`, once its bytes are on the disk (before meta.json vouches for them)."""
        if sync and not self._stream.closed:
            self._stream.flush()
            os.fsync(self._stream.fileno())
        self._stream.close()


class EntryBuilder:
    """Builds a cache entry in a temporary sibling and gives it its name when complete: `with EntryBuilder(...) as
    build: build.writers["train"].append(...); ...; entry = build.finish(meta)`.

    Leaving the block without `finish` (an error, Ctrl-C) removes the temporary directory. A full disk (or quota,
    or a read-only file system) becomes an InputError naming the cache directory, how much was written, and the fix.
    """

    def __init__(self, root: Path, key: str, dtype: np.dtype):
        self.root = root
        self.target = root / key
        self.dtype = dtype
        self.staging: Path | None = None
        self.writers: dict[str, TokenFileWriter] = {}

    def __enter__(self) -> EntryBuilder:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            remove_abandoned_builds(self.root)
            self.staging = Path(
                tempfile.mkdtemp(prefix=f"{_STAGING_PREFIX}{self.target.name}-{_owner()}-", dir=self.root)
            )
            self.writers = {split: TokenFileWriter(self.staging / f"{split}.bin", self.dtype) for split in SPLITS}
        except OSError as error:
            self.__exit__(type(error), error, None)
            raise
        return self

    def finish(self, meta: dict[str, Any]) -> TokenFiles:
        """Closes the token files, writes meta.json last, renames the entry into place and returns it."""
        meta = {
            "format": FORMAT_VERSION,
            "dtype": self.dtype.name,
            "tokens": {split: writer.count for split, writer in self.writers.items()},
            **meta,
        }
        for writer in self.writers.values():
            writer.close(sync=True)
        write_json_atomic(self.staging / META_FILE, meta)
        os.chmod(self.staging, default_mode(directory=True))
        try:
            os.rename(self.staging, self.target)
        except OSError:  # another process built the same entry first; theirs holds the same tokens
            if open_entry(self.target) is None:
                raise
        entry = open_entry(self.target)
        entry.made = True
        return entry

    def __exit__(self, exc_type: Any, error: BaseException | None, traceback: Any) -> None:
        for writer in self.writers.values():
            writer.close()
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
        if isinstance(error, OSError):
            usage_error = self._usage_error(error)
            if usage_error is not error:
                raise usage_error from error

    def _usage_error(self, error: OSError) -> Exception:
        if storage_failure(error, writing=True) is None:
            return error
        written = sum(writer.count for writer in self.writers.values()) * self.dtype.itemsize
        return InputError(
            f"cannot write token files under {self.root} ({error.strerror}, after {written / 1e6:.1f} MB); free "
            f"space there or pass {field('cache_dir')} on a disk with room (nothing was kept)"
        )


def _owner() -> str:
    """Who builds: host and process ID, so that a later build can tell an abandoned temporary from a live one."""
    return f"{socket.gethostname()}.{os.getpid()}"


def remove_abandoned_builds(root: Path) -> None:
    """Removes temporary entries whose builder, a process on this host, no longer runs (it was killed)."""
    host = socket.gethostname()
    for path in root.glob(f"{_STAGING_PREFIX}*"):
        # .tmp-<key>-<host>.<pid>-<random>: the key is hexadecimal and mkdtemp's random part has no dash
        owner = path.name[len(_STAGING_PREFIX) :].partition("-")[2].rpartition("-")[0]
        owner_host, _, pid = owner.rpartition(".")
        if owner_host == host and pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
