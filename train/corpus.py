"""Where a run's text comes from, read in bounded pieces, checked, and split into training and validation text.

- Documents come from the embedded corpus (text that ships with Python), local UTF-8 files, or a Hugging Face
  dataset, as text pieces of a few megabytes at most: a large file is read in pieces cut where no token can change
  (`read_text_pieces`).
- A first pass reads every piece once (`scan_corpus`): it checks the text (UTF-8, no NUL byte), counts characters
  and, with `dedup`, finds duplicate documents. The split into training and validation text is made on characters,
  as the book does (`text[:int(0.9 * len(text))]`), at the cut that count gives (`split_pieces`).

Memory stays bounded whatever the corpus size: one piece being read, and a few bytes per document for `dedup`.
"""

from __future__ import annotations

import glob
import hashlib
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from common.compat import dataset_fingerprint
from common.errors import InputError, field, first_line
from common.files import format_size
from common.hub import offline_unless_reachable
from train.tokenizing import safe_cut

# Files are read, checked and stored in pieces of about this many bytes, so one huge file never sits in memory whole.
READ_BLOCK_BYTES = 8 << 20
STDLIB_SKIP_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"})


class DataError(InputError):
    """Unusable data or data settings; the message names the input and the fix."""


class NotTextError(DataError):
    """A file that is not text: its `path`, what it is (`reason`: "not UTF-8 text", or "not text: a NUL byte"), and
    the byte `offset` of the first bad byte."""

    def __init__(self, message: str, path: Path, reason: str, offset: int):
        super().__init__(message)
        self.path, self.reason, self.offset = path, reason, offset


@dataclass
class Corpus:
    """Where the documents come from: a one-line description, what identifies them (the key of their caches), and
    a function that reads them, each time anew, as (text piece, whether it starts a document) pairs."""

    description: str
    key: dict[str, Any]
    pieces: Callable[[], Iterator[tuple[str, bool]]]
    size: int | None = None  # bytes, when known before reading (for the progress bar)


# ---------------------------------------------------------------------------------------------------------------------
# Corpus sources


def embedded_corpus(name: str = "pydoc") -> Corpus:
    """Text that ships with every Python installation, so training needs no download.

    `pydoc`: the language and library reference topics that `help()` shows (module `pydoc_data.topics`, about
    465 KB of English), one document per topic. `stdlib`: the standard library's own Python sources (tests left
    out; about 12 MB of code), one document per file. A Python built without `pydoc_data` falls back to `stdlib`.
    """
    if name == "pydoc":
        try:
            from pydoc_data.topics import topics
        except ImportError:
            print("gptscratch: this Python has no pydoc_data; using the standard library's sources", file=sys.stderr)
            return embedded_corpus("stdlib")
        size = sum(len(text.encode("utf-8")) for text in topics.values())
        return Corpus(
            f"embedded corpus: Python's pydoc_data topics ({size / 1000:.0f} KB)",
            {"embedded": "pydoc", "python": sys.version, "size": size},  # another Python, another cache entry
            lambda: ((topics[key], True) for key in sorted(topics)),
            size,
        )
    if name == "stdlib":
        import sysconfig

        root = Path(sysconfig.get_paths()["stdlib"])
        files = sorted(
            path
            for path in root.rglob("*.py")
            if not STDLIB_SKIP_DIRS.intersection(path.relative_to(root).parts) and path.stat().st_size > 0
        )
        if not files:
            raise DataError(
                f"the standard library at {root} holds no .py sources; pass text files with {field('data')} PATH"
            )
        corpus = local_corpus([str(path) for path in files])
        corpus.description = (
            f"embedded corpus: the Python {sys.version_info.major}.{sys.version_info.minor} standard library's "
            f"sources ({len(files)} files, {corpus.size / 1e6:.1f} MB)"
        )
        return corpus
    raise DataError(f"unknown embedded corpus {name!r}; choose pydoc or stdlib")


def expand_data_paths(paths: Sequence[str], log: Callable[[str], None] | None = None) -> list[Path]:
    """Files named by paths, directories (every file below) and globs (`**` allowed), in order.

    A directory's walk leaves out hidden files and folders, files that hold models rather than text
    (`MODEL_FILE_SUFFIXES`), and folders that are a training run's output or a model directory
    (`is_model_output`): a run whose `output_dir` lies inside its `data` directory would otherwise read its own
    weights and metrics as text the next time. `log` hears what was left out. Raises DataError for a missing path,
    a glob that matches nothing, a directory without files or an empty file named on its own.
    """
    files: list[Path] = []
    for spec in paths:
        if glob.has_magic(spec):
            matches = sorted(Path(match) for match in glob.glob(spec, recursive=True))
            matched_files = [path for path in matches if path.is_file()]
            if not matched_files:
                raise DataError(
                    f"{field('data')} {spec}: the pattern matches no file; check it (quote it in the shell)"
                )
            files.extend(matched_files)
        elif os.path.isdir(spec):
            found, skipped = _walk_text_files(Path(spec))
            if skipped and log is not None:
                log(
                    f"{field('data')} {spec}: left out {', '.join(map(str, skipped[:3]))}"
                    + (f" and {len(skipped) - 3} more" if len(skipped) > 3 else "")
                    + " (model files and run or model directories are not text)"
                )
            if not found:
                raise DataError(
                    f"{field('data')} {spec}: the directory holds no text files; point it at your text files"
                )
            files.extend(found)
        elif os.path.isfile(spec):
            if os.path.getsize(spec) == 0:
                raise DataError(f"{field('data')} {spec}: the file is empty; give a file with text in it")
            files.append(Path(spec))
        else:
            raise DataError(f"{field('data')} {spec}: no such file or directory; check the path")
    return files


def data_roots(paths: Sequence[str]) -> list[Path]:
    """What `data` paths name on disk, without reading them: a file or directory itself, the files a glob matches.
    The places a run's outputs must stay out of."""
    roots = []
    for spec in paths:
        roots += (
            sorted(Path(match) for match in glob.glob(spec, recursive=True)) if glob.has_magic(spec) else [Path(spec)]
        )
    return roots


# What a directory of text may hold beside it that is no text: weights, optimizer and RNG states, arrays, the plots of
# a run. Left out when a data directory is walked (a file named on its own is read, and refused, as given).
MODEL_FILE_SUFFIXES = frozenset(
    {
        ".safetensors",
        ".bin",
        ".pt",
        ".pth",
        ".ckpt",
        ".pkl",
        ".pickle",
        ".npy",
        ".npz",
        ".h5",
        ".msgpack",
        ".onnx",
        ".gguf",
        ".arrow",
        ".png",
        ".pdf",
    }
)


def is_model_output(directory: Path) -> bool:
    """A gptscratch run's output directory (its checkpoints/run.json comes first) or any model directory (a
    config.json beside safetensors weights)."""
    is_run = (directory / "checkpoints" / "run.json").is_file()
    return is_run or ((directory / "config.json").is_file() and any(directory.glob("model*.safetensors*")))


def _walk_text_files(root: Path) -> tuple[list[Path], list[Path]]:
    """The files below `root` that `expand_data_paths` reads, sorted, and the model files and run or model
    directories it leaves out."""
    found, skipped = [], []
    for folder, subfolders, names in os.walk(root):
        folder = Path(folder)
        kept = []
        for name in sorted(subfolders):
            if name.startswith("."):
                continue
            (skipped if is_model_output(folder / name) else kept).append(folder / name)
        subfolders[:] = [path.name for path in kept]
        for name in names:
            path = folder / name
            if name.startswith(".") or not path.is_file():
                continue
            (skipped if path.suffix.lower() in MODEL_FILE_SUFFIXES else found).append(path)
    return sorted(found), sorted(skipped)


def local_corpus(paths: Sequence[str], log: Callable[[str], None] | None = None) -> Corpus:
    """UTF-8 text files, directories and globs: each file is a document, read in pieces (`read_text_pieces`);
    `log` hears what a directory walk left out.

    A file that is not UTF-8 text (or holds a NUL byte) raises NotTextError, naming the file and the byte offset,
    when its pieces are read.
    """
    files = expand_data_paths(paths, log)
    # Size and modification time make an edited file a new cache entry.
    stamps = [(str(path.absolute()), path.stat().st_size, path.stat().st_mtime_ns) for path in files]
    size = sum(stamp[1] for stamp in stamps)
    if size == 0:
        raise DataError(f"{field('data')} {' '.join(paths)}: every file is empty; give files with text in them")

    def pieces() -> Iterator[tuple[str, bool]]:
        for path in files:
            for index, piece in enumerate(read_text_pieces(path)):
                yield piece, index == 0

    names = ", ".join(path.name for path in files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
    return Corpus(f"{names} ({format_size(size)})", {"files": stamps}, pieces, size)


def read_text_pieces(path: Path, block_bytes: int | None = None) -> Iterator[str]:
    """A UTF-8 file's text in pieces of about `block_bytes` (default READ_BLOCK_BYTES), each cut after a newline
    between two non-space characters.

    Cutting there leaves GPT-2's pre-tokenisation unchanged (a lone "\\n" between words is a token of its own), so
    tokenising the pieces one by one gives the tokens of the whole file. Raises NotTextError with the byte offset of
    the first byte that is not UTF-8, or of a NUL byte.
    """
    block_bytes = block_bytes or READ_BLOCK_BYTES
    pending = b""  # the start of a multi-byte character cut by the block boundary
    consumed = 0  # bytes of the file before `pending`
    carry = ""
    with open(path, "rb") as stream:
        while True:
            block = stream.read(block_bytes)
            data = pending + block
            if not data:
                break
            try:
                text, pending = data.decode("utf-8"), b""
            except UnicodeDecodeError as error:
                truncated_at_end = block and error.reason == "unexpected end of data" and len(data) - error.start < 4
                if not truncated_at_end:
                    offset = consumed + error.start
                    raise NotTextError(
                        f"{path} is not UTF-8 text: byte 0x{data[error.start]:02x} at byte offset {offset}; convert "
                        f"it to UTF-8 or leave it out of {field('data')}",
                        path,
                        "not UTF-8 text",
                        offset,
                    ) from None
                text, pending = data[: error.start].decode("utf-8"), data[error.start :]
            nul = text.find("\x00")
            if nul >= 0:
                offset = consumed + len(text[:nul].encode("utf-8"))
                raise NotTextError(
                    f"{path} is not text: a NUL byte at byte offset {offset} (a binary file?); leave it out of "
                    f"{field('data')}",
                    path,
                    "not text: a NUL byte",
                    offset,
                )
            consumed += len(data) - len(pending)
            carry += text
            while len(carry) > block_bytes:
                cut = _block_cut(carry, block_bytes)
                if cut is None:
                    break
                yield carry[:cut]
                carry = carry[cut:]
            if not block:
                break
    if carry:
        yield carry


def _block_cut(text: str, target: int) -> int | None:
    """Where `read_text_pieces` cuts: the last safe place at or before `target`; None when there is none (one
    enormous line), and the caller reads on until a cut appears. Past four blocks of text it cuts at `target`
    anyway, which can change the tokens at that one point."""
    cut = safe_cut(text, target)
    if cut is None and len(text) > 4 * target:
        return target
    return cut


def hub_corpus(
    name: str,
    config: str | None = None,
    split: str = "train",
    text_column: str = "text",
    cache_dir: str | os.PathLike | None = None,
) -> Corpus:
    """A Hugging Face dataset by name (or a local dataset directory), config, split and text column; each row is a
    document.

    Downloads through `datasets.load_dataset` (Arrow files on disk, memory-mapped, read in batches of rows).
    Offline, or for a name that is not there, raises DataError that names the local-file alternative.
    """
    table = load_hub_split(name, config, split, text_column, cache_dir)

    def pieces() -> Iterator[tuple[str, bool]]:
        for batch in table.select_columns([text_column]).with_format("arrow").iter(batch_size=1000):
            for text in batch.column(text_column).to_pylist():
                yield text or "", True

    label = name + (f" ({config})" if config else "") + f", split {split}, column {text_column}"
    key = {
        "dataset": name,
        "config": config,
        "split": split,
        "column": text_column,
        "fingerprint": dataset_fingerprint(table),
    }
    return Corpus(f"Hugging Face dataset {label}", key, pieces)


def load_hub_split(
    name: str,
    config: str | None,
    split: str,
    text_column: str,
    cache_dir: str | os.PathLike | None = None,
    streaming: bool = False,
) -> Any:
    """`datasets.load_dataset(name, config, split=split)` (a `Dataset`, or with `streaming` an `IterableDataset`),
    checked to have the text column; DataError when it cannot be had, naming the local-file alternative."""
    import datasets

    try:
        with offline_unless_reachable():  # offline, the local cache at once, instead of a minute of retries
            table = datasets.load_dataset(
                name, config, split=split, streaming=streaming, cache_dir=None if cache_dir is None else str(cache_dir)
            )
    except (ConnectionError, OSError, ValueError, datasets.exceptions.DatasetNotFoundError) as error:
        raise DataError(
            f"{field('dataset')} {name}{(' ' + field('streaming')) * streaming}: could not load it from the Hugging "
            f"Face Hub ({first_line(error)}); when offline, pass local text files instead with {field('data')} PATH"
        ) from error
    check_text_column(name, table, text_column)
    return table


def check_text_column(name: str, table: Any, text_column: str) -> None:
    """Raises DataError unless `table` (a datasets Dataset or IterableDataset) has a text column `text_column`."""
    import datasets

    if isinstance(table, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        raise DataError(
            f"{field('dataset')} {name}: choose a split with {field('dataset_split')} (one of: {', '.join(table)})"
        )
    if table.features is None:  # a stream whose columns are only known once read
        return
    if text_column not in table.features:
        raise DataError(
            f"{field('dataset')} {name} has no column {text_column!r}; choose one with {field('text_column')} "
            f"(columns: {', '.join(table.features)})"
        )
    if getattr(table.features[text_column], "dtype", None) not in ("string", "large_string"):
        raise DataError(
            f"{field('text_column')} {text_column}: the column holds {table.features[text_column]}, not text"
        )


def load_corpus(
    data: Sequence[str] | None = None,
    dataset: str | None = None,
    dataset_config: str | None = None,
    dataset_split: str = "train",
    text_column: str = "text",
    embedded: str = "pydoc",
    cache_dir: str | os.PathLike | None = None,
    log: Callable[[str], None] | None = None,
) -> Corpus:
    """The corpus the command line names: local files (`data`), a hub dataset (`dataset`), else the embedded one."""
    if data and dataset:
        raise DataError(f"{field('data')} and {field('dataset')} both given; train on one source at a time")
    if data:
        return local_corpus(data, log=log)
    if dataset:
        return hub_corpus(dataset, dataset_config, dataset_split, text_column, cache_dir=cache_dir)
    return embedded_corpus(embedded)


# ---------------------------------------------------------------------------------------------------------------------
# Documents: the first pass (checks, characters, duplicates) and the train/validation split


@dataclass
class CorpusScan:
    """What the first pass over a corpus found: characters and documents kept, duplicates dropped, and with dedup
    which documents are kept (one byte per document, in order)."""

    characters: int
    documents: int
    duplicates_dropped: int = 0
    kept: bytearray | None = None


def scan_corpus(corpus: Corpus, dedup: bool = False, progress: bool = True) -> CorpusScan:
    """Reads every piece of `corpus` once: checks it, counts characters, and with `dedup` marks exact duplicate
    documents (a document spanning several pieces is compared whole; the first copy stays).

    Memory: with dedup, a 16-byte digest per distinct document (about 100 bytes in a Python set) and a byte per
    document; otherwise nothing that grows. Raises DataError (NotTextError) for a file that is not text, and for a
    corpus without text.
    """
    seen: set[bytes] = set()
    kept = bytearray() if dedup else None
    scan = CorpusScan(characters=0, documents=0, kept=kept)
    digest, document_chars = None, 0

    def finish() -> None:
        if digest is None:
            return
        if kept is not None:
            duplicate = digest.digest() in seen
            kept.append(not duplicate)
            if duplicate:
                scan.duplicates_dropped += 1
                return
            seen.add(digest.digest())
        scan.documents += 1
        scan.characters += document_chars

    with tqdm(total=corpus.size, desc="Reading", unit="B", unit_scale=True, disable=None if progress else True) as bar:
        for text, starts in corpus.pieces():
            if starts:
                finish()
                digest, document_chars = hashlib.blake2b(digest_size=16), 0
            data = text.encode("utf-8")
            if dedup:
                digest.update(data)
            document_chars += len(text)
            bar.update(len(data))
    finish()
    if scan.characters == 0:
        raise DataError(
            f"{corpus.description}: the corpus holds no text (every document is empty); give files or a dataset "
            "with text in them"
        )
    return scan


def split_pieces(
    pieces: Iterable[tuple[str, bool]], cut: int, kept: bytearray | None = None
) -> Iterator[tuple[str, str, bool]]:
    """(split, text, starts a document) for each piece of the documents kept: "train" up to character `cut`,
    "val" after it, as the book's `text[:cut]`, `text[cut:]`.

    With one document this is exactly the book's split. With several, the documents before the cut train, those
    after validate, and the one the cut falls in is shared: its head ends the training text, its tail (not a new
    document) starts the validation text.
    """
    seen, document = 0, -1
    for text, starts in pieces:
        document += starts
        if kept is not None and not kept[document]:
            continue
        if seen + len(text) <= cut:
            yield "train", text, starts
        elif seen >= cut:
            yield "val", text, starts
        else:
            yield "train", text[: cut - seen], starts
            yield "val", text[cut - seen :], False
        seen += len(text)


def training_text(corpus: Corpus, scan: CorpusScan, train_ratio: float) -> Iterator[str]:
    """The pieces of the training split, in order, and nothing after it."""
    for split, text, _ in split_pieces(corpus.pieces(), int(train_ratio * scan.characters), scan.kept):
        if split != "train":
            return
        yield text
