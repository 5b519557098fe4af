"""Text in, training windows out: corpus -> documents -> train/val split -> tokenizer -> token files -> windows.

The book's chapter 2 pipeline (`GPTDatasetV1`, `create_dataloader_v1`) with the same semantics, scaled to corpora far
larger than memory:

- Documents come from the embedded corpus (text that ships with Python), local UTF-8 files, or a Hugging Face
  dataset, as text pieces of a few megabytes at most: a large file is read in pieces cut where no token can change
  (`read_text_pieces`).
- A first pass reads every piece once (`scan_corpus`): it checks the text (UTF-8, no NUL byte), counts characters
  and, with `dedup`, finds duplicate documents. The split into training and validation text is made on characters,
  as the book does (`text[:int(0.9 * len(text))]`), at the cut that count gives; documents are joined with
  `<|endoftext|>`.
- A second pass tokenises the pieces in order, in `num_proc` worker processes, into flat token files
  (`train.token_files`), cached by corpus and tokenizer: the next run on the same data maps them in a second.
- Window i holds tokens [i * stride, i * stride + context_length + 1), read from the memory-mapped file: the
  inputs are its first context_length tokens, the targets its last context_length (the inputs shifted by one).

Memory stays bounded whatever the corpus size: one piece being read, a few pieces in flight to the workers, and a
few bytes per document for `dedup`. Hub datasets can also be streamed (`train.streaming`).
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import multiprocessing
import os
import shutil
import sys
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from common.commands import UsageError, first_line
from common.files import format_size
from common.model_dir import load_tokenizer_or_refuse
from common.tokenizer import load_tokenizer
from modeling_gptscratch import GPT2Tokenizer
from train.options import DEFAULT_MIN_FREQUENCY, DEFAULT_VOCAB_SIZE
from train.token_files import EntryBuilder, TokenFiles, cache_key, open_entry
from train.tokenizing import PieceTokenizer, safe_cut, safe_pieces, start_worker, token_dtype, tokenize_in_worker

EOS_TOKEN = "<|endoftext|>"
# Files are read, checked and stored in pieces of about this many bytes, so one huge file never sits in memory whole.
READ_BLOCK_BYTES = 8 << 20
# Text per task handed to a tokenising worker, and tasks in flight per worker: what bounds preparation's memory.
TASK_CHARS = 1 << 20
TASKS_IN_FLIGHT_PER_WORKER = 2
# Below this many characters a corpus is tokenised in one process: starting workers costs more than it saves.
PARALLEL_TOKENIZE_MIN_CHARS = 64 << 20
# `--tokenizer train` fits the BPE on at most this many characters of the training text: all of it below, else the
# same share of every piece, so that the sample spans the whole corpus.
TOKENIZER_SAMPLE_CHARS = 64 << 20
STDLIB_SKIP_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"})


class DataError(UsageError, ValueError):
    """Unusable data or data settings; the message names the input and the fix.

    A UsageError, so the command line reports it in one line with exit status 2, and a ValueError for Python callers.
    """


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
            raise DataError(f"the standard library at {root} holds no .py sources; pass text files with --data PATH")
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
    (`is_model_output`): a run whose --output-dir lies inside its --data directory would otherwise read its own
    weights and metrics as text the next time. `log` hears what was left out. Raises DataError for a missing path,
    a glob that matches nothing, a directory without files or an empty file named on its own.
    """
    files: list[Path] = []
    for spec in paths:
        if glob.has_magic(spec):
            matches = sorted(Path(match) for match in glob.glob(spec, recursive=True))
            matched_files = [path for path in matches if path.is_file()]
            if not matched_files:
                raise DataError(f"--data {spec}: the pattern matches no file; check it (quote it in the shell)")
            files.extend(matched_files)
        elif os.path.isdir(spec):
            found, skipped = _walk_text_files(Path(spec))
            if skipped and log is not None:
                log(
                    f"--data {spec}: left out {', '.join(map(str, skipped[:3]))}"
                    + (f" and {len(skipped) - 3} more" if len(skipped) > 3 else "")
                    + " (model files and run or model directories are not text)"
                )
            if not found:
                raise DataError(f"--data {spec}: the directory holds no text files; point it at your text files")
            files.extend(found)
        elif os.path.isfile(spec):
            if os.path.getsize(spec) == 0:
                raise DataError(f"--data {spec}: the file is empty; give a file with text in it")
            files.append(Path(spec))
        else:
            raise DataError(f"--data {spec}: no such file or directory; check the path")
    return files


# What a directory of text may hold beside it that is no text: weights, optimizer and RNG states, arrays, the plots of
# a run. Left out when a --data directory is walked (a file named on its own is read, and refused, as given).
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
        raise DataError(f"--data {' '.join(paths)}: every file is empty; give files with text in them")

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
                        "it to UTF-8 or leave it out of --data",
                        path,
                        "not UTF-8 text",
                        offset,
                    ) from None
                text, pending = data[: error.start].decode("utf-8"), data[error.start :]
            nul = text.find("\x00")
            if nul >= 0:
                offset = consumed + len(text[:nul].encode("utf-8"))
                raise NotTextError(
                    f"{path} is not text: a NUL byte at byte offset {offset} (a binary file?); leave it out of --data",
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
    key = {"dataset": name, "config": config, "split": split, "column": text_column, "fingerprint": table._fingerprint}
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
        table = datasets.load_dataset(name, config, split=split, streaming=streaming, cache_dir=_cache_str(cache_dir))
    except (ConnectionError, OSError, ValueError, datasets.exceptions.DatasetNotFoundError) as error:
        raise DataError(
            f"--dataset {name}{' --streaming' * streaming}: could not load it from the Hugging Face Hub "
            f"({first_line(error)}); when offline, pass local text files instead with --data PATH"
        ) from error
    check_text_column(name, table, text_column)
    return table


def check_text_column(name: str, table: Any, text_column: str) -> None:
    """Raises DataError unless `table` (a datasets Dataset or IterableDataset) has a text column `text_column`."""
    import datasets

    if isinstance(table, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        raise DataError(f"--dataset {name}: choose a split with --dataset-split (one of: {', '.join(table)})")
    if table.features is None:  # a stream whose columns are only known once read
        return
    if text_column not in table.features:
        raise DataError(
            f"--dataset {name} has no column {text_column!r}; choose one with --text-column "
            f"(columns: {', '.join(table.features)})"
        )
    if getattr(table.features[text_column], "dtype", None) not in ("string", "large_string"):
        raise DataError(f"--text-column {text_column}: the column holds {table.features[text_column]}, not text")


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
        raise DataError("--data and --dataset both given; train on one source at a time")
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


def check_train_ratio(train_ratio: float) -> None:
    if not 0 < train_ratio < 1:
        raise DataError(f"--train-ratio {train_ratio}: must be between 0 and 1 (0.9 keeps 10% for validation)")


# ---------------------------------------------------------------------------------------------------------------------
# Tokenizer


def train_bpe_tokenizer(
    texts: Iterable[str], vocab_size: int, min_frequency: int = DEFAULT_MIN_FREQUENCY
) -> PreTrainedTokenizerBase:
    """A byte-level BPE of at most `vocab_size` tokens fitted on `texts` (GPT-2's pre-tokenisation,
    `<|endoftext|>`), merging only pairs that occur at least `min_frequency` times in them.

    Returned as transformers' GPT-2 tokenizer class, so `save_pretrained` writes files that `AutoTokenizer` loads.
    The trainer sees the texts in pieces cut at safe places (the same words: 8 MB of text in one piece would take
    it 1.7 GB); its memory still grows with the distinct words, so a large corpus gives it a sample
    (`fit_tokenizer`).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    check_vocab_size(vocab_size)
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator((piece for text in texts for piece in safe_pieces(text)), trainer=trainer)
    model = json.loads(backend.to_str())["model"]
    return GPT2Tokenizer(vocab=model["vocab"], merges=[tuple(merge) for merge in model["merges"]])


def tokenizer_sample(texts: Iterable[str], characters: int, limit: int = TOKENIZER_SAMPLE_CHARS) -> Iterator[str]:
    """The texts whole while they hold at most `limit` characters in all, else the same leading share of each
    (about `limit` characters, spread over the whole corpus)."""
    share = min(1.0, limit / max(characters, 1))
    for text in texts:
        yield text if share == 1.0 else text[: math.ceil(share * len(text))]


def fit_tokenizer(
    sample: Callable[[], tuple[Iterable[str], int | None]],
    vocab_size: int,
    min_frequency: int,
    key: dict[str, Any],
    cache_root: Path,
    progress: bool = True,
) -> PreTrainedTokenizerBase:
    """`--tokenizer train`: a byte-level BPE fitted on the texts `sample()` gives (with their number of characters,
    when known), or the one fitted before for the same `key`.

    Cached under `cache_root` by `key`, the vocabulary size and the minimum frequency: reruns and the other
    processes of a multi-process run load the same tokenizer instead of fitting it again (and `sample` is not
    called).
    """
    check_vocab_size(vocab_size)
    name = cache_key(
        {**key, "vocab_size": vocab_size, "min_frequency": min_frequency, "sample": TOKENIZER_SAMPLE_CHARS}
    )
    cached = cache_root / "gptscratch-tokenizers" / f"bpe-{vocab_size}-{name}"
    if not (cached / "tokenizer.json").is_file():
        texts, characters = sample()
        with tqdm(
            total=characters,
            desc="Fitting the tokenizer",
            unit="char",
            unit_scale=True,
            disable=None if progress else True,
        ) as bar:
            tokenizer = train_bpe_tokenizer(_counted(texts, bar), vocab_size, min_frequency)
        cached.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{cached.name}.tmp-", dir=cached.parent))
        try:
            tokenizer.save_pretrained(staging)
            os.replace(staging, cached)
        except OSError:  # another process finished the same tokenizer first; theirs is identical
            if not (cached / "tokenizer.json").is_file():
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    # Loaded back, so a first and a cached call return the same object state (and the same token cache key).
    return load_tokenizer(cached)


def training_sample(corpus: Corpus, scan: CorpusScan, train_ratio: float) -> tuple[Iterator[str], int]:
    """What `--tokenizer train` fits on: the training split, sampled down to about TOKENIZER_SAMPLE_CHARS characters
    (`tokenizer_sample`), read lazily; and how many characters that is."""
    characters = int(train_ratio * scan.characters)
    texts = tokenizer_sample(training_text(corpus, scan, train_ratio), characters)
    return texts, min(characters, TOKENIZER_SAMPLE_CHARS)


def _counted(texts: Iterable[str], bar: tqdm) -> Iterator[str]:
    for text in texts:
        bar.update(len(text))
        yield text


def check_vocab_size(vocab_size: int) -> None:
    if vocab_size < 257:
        raise DataError(f"--vocab-size {vocab_size}: a byte-level BPE needs at least 257 (256 bytes + <|endoftext|>)")


def resolve_tokenizer(
    spec: str, fit: Callable[[], PreTrainedTokenizerBase], fitted_on: str = "the training split"
) -> tuple[PreTrainedTokenizerBase, str]:
    """The tokenizer `--tokenizer` names and a one-line description of it.

    `train`: `fit()`, a byte-level BPE fitted on `fitted_on` (`fit_tokenizer`); `gpt2`: GPT-2's from the Hugging
    Face Hub (or its cache); a path: a directory with OpenAI's encoder.json + vocab.bpe or a saved transformers
    tokenizer. Every one needs an end-of-text token and a fast (Rust) backend.
    """
    if spec == "train":
        tokenizer = fit()
        return tokenizer, f"byte-level BPE fitted on {fitted_on} ({len(tokenizer)} tokens)"
    tokenizer = load_tokenizer_or_refuse(
        spec,
        f"--tokenizer {spec} could not be loaded",
        "pass a directory with encoder.json + vocab.bpe or a saved tokenizer, or --tokenizer train",
        error_class=DataError,
    )
    if tokenizer.eos_token_id is None:
        raise DataError(f"--tokenizer {spec} has no end-of-text token; documents are joined with one, choose another")
    if getattr(tokenizer, "backend_tokenizer", None) is None:
        raise DataError(
            f"--tokenizer {spec} is not a fast (Rust) tokenizer, which tokenising at scale needs; save "
            "it with tokenizer.save_pretrained from a fast tokenizer, or choose another"
        )
    if spec == "gpt2":
        return tokenizer, f"GPT-2 BPE ({len(tokenizer)} tokens)"
    return tokenizer, f"tokenizer from {spec} ({len(tokenizer)} tokens)"


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A hash of what decides a fast tokenizer's IDs: its serialised vocabulary, merges, special tokens, normaliser
    and pre-tokeniser (not its truncation and padding settings, which transformers changes between calls)."""
    serialised = json.loads(tokenizer.backend_tokenizer.to_str())
    serialised.pop("truncation", None)
    serialised.pop("padding", None)
    text = json.dumps([serialised, tokenizer.eos_token_id], sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------------------------------
# Tokens: the second pass, into token files


def tokenize_tasks(split_stream: Iterable[tuple[str, str, bool]]) -> Iterator[tuple[str, list[tuple[str, bool]], int]]:
    """The split pieces grouped into tasks for the tokenisers: (split, [(text, `<|endoftext|>` before it)],
    characters), each of one split and about TASK_CHARS characters at most (longer pieces are cut at safe places).

    Each split's stream opens with its first piece, so `<|endoftext|>` goes before every other piece that starts a
    document.
    """
    opened: set[str] = set()
    split, task, chars = None, [], 0
    for piece_split, text, starts in split_stream:
        eos = starts and piece_split in opened
        opened.add(piece_split)
        parts = safe_pieces(text, TASK_CHARS) if len(text) > TASK_CHARS else [text]
        for index, part in enumerate(parts):
            if task and (piece_split != split or chars + len(part) > TASK_CHARS):
                yield split, task, chars
                task, chars = [], 0
            split = piece_split
            task.append((part, eos and index == 0))
            chars += len(part)
    if task:
        yield split, task, chars


def tokenize_in_order(
    tasks: Iterable[tuple[str, list[tuple[str, bool]], int]], encoder: tuple[str, int, str], num_proc: int
) -> Iterator[tuple[str, int, np.ndarray]]:
    """(split, characters, tokens) for each task, in order, tokenised by `num_proc` spawned workers (in this process
    for 1). At most TASKS_IN_FLIGHT_PER_WORKER tasks per worker are handed out ahead, so memory stays bounded
    however fast the corpus is read (`Pool.imap` would read the whole corpus ahead)."""
    if num_proc <= 1:
        tokenize = PieceTokenizer(*encoder)
        for split, task, chars in tasks:
            yield split, chars, tokenize(task)
        return
    # "spawn": a worker imports train.tokenizing alone, not the torch and transformers of this process. An executor
    # rather than a Pool: a worker that dies (killed, out of memory) fails the run instead of hanging it.
    context = multiprocessing.get_context("spawn")
    try:
        with ProcessPoolExecutor(num_proc, mp_context=context, initializer=start_worker, initargs=encoder) as pool:
            pending: deque = deque()
            for split, task, chars in tasks:
                pending.append((split, chars, pool.submit(tokenize_in_worker, task)))
                if len(pending) >= TASKS_IN_FLIGHT_PER_WORKER * num_proc:
                    split, chars, result = pending.popleft()
                    yield split, chars, result.result()
            while pending:
                split, chars, result = pending.popleft()
                yield split, chars, result.result()
    except BrokenProcessPool as error:
        raise DataError(
            f"a tokenising worker process stopped ({error}); if it ran out of memory, lower --num-proc; a script "
            'that calls prepare_data needs `if __name__ == "__main__":` around its work (workers re-import it)'
        ) from None


def write_token_files(
    corpus: Corpus,
    scan: CorpusScan,
    tokenizer: PreTrainedTokenizerBase,
    train_ratio: float,
    num_proc: int,
    builder: EntryBuilder,
    progress: bool = True,
) -> None:
    """The second pass: the corpus's pieces, split at the ratio, tokenised in order into the builder's files."""
    encoder = (tokenizer.backend_tokenizer.to_str(), tokenizer.eos_token_id, builder.dtype.name)
    split_stream = split_pieces(corpus.pieces(), int(train_ratio * scan.characters), scan.kept)
    with tqdm(
        total=scan.characters, desc="Tokenizing", unit="char", unit_scale=True, disable=None if progress else True
    ) as bar:
        for split, chars, tokens in tokenize_in_order(tokenize_tasks(split_stream), encoder, num_proc):
            builder.writers[split].append(tokens)
            bar.update(chars)


def default_cache_root() -> Path:
    """Hugging Face's datasets cache (`HF_DATASETS_CACHE`, by default ~/.cache/huggingface/datasets)."""
    import datasets

    return Path(datasets.config.HF_DATASETS_CACHE)


def prepare_token_files(
    corpus: Corpus,
    tokenizer: PreTrainedTokenizerBase,
    train_ratio: float,
    dedup: bool,
    cache_root: Path,
    scan: Callable[[], CorpusScan],
    num_proc: int | None = None,
    progress: bool = True,
) -> TokenFiles:
    """The corpus's training and validation tokens as a cache entry: found in `cache_root`, or made (`scan`, then
    `write_token_files`) and stored there. `num_proc` None tokenises in one process below 64 M characters, in every
    CPU above."""
    key = cache_key(
        {
            "corpus": corpus.key,
            "tokenizer": tokenizer_fingerprint(tokenizer),
            "train_ratio": train_ratio,
            "dedup": dedup,
        }
    )
    root = cache_root / "gptscratch-tokens"
    entry = open_entry(root / key)
    if entry is not None:
        return entry
    if (root / key).exists():  # damaged (by hand: a build never leaves a half entry under its name)
        shutil.rmtree(root / key)
    found = scan()
    if num_proc is None:
        num_proc = os.cpu_count() if found.characters >= PARALLEL_TOKENIZE_MIN_CHARS else 1
    meta = {
        "documents": found.documents,
        "duplicates_dropped": found.duplicates_dropped,
        "characters": found.characters,
        "corpus": corpus.description,
        "train_ratio": train_ratio,
        "dedup": dedup,
        "eos_token_id": tokenizer.eos_token_id,
    }
    with EntryBuilder(root, key, token_dtype(len(tokenizer))) as builder:
        write_token_files(corpus, found, tokenizer, train_ratio, num_proc, builder, progress)
        return builder.finish(meta)


# ---------------------------------------------------------------------------------------------------------------------
# Windows


class TokenWindows(Dataset):
    """The book's `GPTDatasetV1` over a token stream: item i is (inputs [context_length], targets [context_length]).

    Window i starts at token i * stride; targets are the inputs shifted by one token; both int64. `tokens` is a
    one-dimensional array, usually memory-mapped from a token file: each item reads its window alone. Pickled into a
    DataLoader worker, a memory-mapped stream travels as its file name and is mapped again there, never copied.
    """

    def __init__(self, tokens: np.ndarray, context_length: int, stride: int):
        if context_length < 1 or stride < 1:
            raise DataError(f"context length ({context_length}) and stride ({stride}) must be at least 1")
        self.tokens = tokens
        self.context_length = context_length
        self.stride = stride

    @property
    def num_tokens(self) -> int:
        return len(self.tokens)

    def __len__(self) -> int:
        # The book's range(0, len(tokens) - context_length, stride): every window with a full set of targets.
        return max(0, math.ceil((self.num_tokens - self.context_length) / self.stride))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"window {index} out of range for {len(self)} windows")
        start = index * self.stride
        window = torch.from_numpy(self.tokens[start : start + self.context_length + 1].astype(np.int64))
        return window[:-1], window[1:]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if isinstance(self.tokens, np.memmap):
            state["tokens"] = (self.tokens.filename, self.tokens.dtype.str, len(self.tokens))
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if isinstance(state["tokens"], tuple):
            filename, dtype, count = state["tokens"]
            state["tokens"] = np.memmap(filename, dtype=dtype, mode="r", shape=(count,))
        self.__dict__.update(state)


def document_position_ids(input_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """Positions that restart at each document of a window: input_ids [..., tokens] -> position_ids [..., tokens].

    A document starts at the `<|endoftext|>` that precedes it (the stream puts one before every document but the
    first), so that token is position 0 and predicts the document's first token. Given to the model, restarting
    positions mark packed sequences: attention stays inside each document (`--document-mask`), as TRL's
    padding-free packing does.
    """
    index = torch.arange(input_ids.shape[-1], device=input_ids.device).expand_as(input_ids)
    document_start = torch.where(input_ids == eos_token_id, index, 0).cummax(dim=-1).values
    return index - document_start


def tokenize_text(text: str, tokenizer: Any) -> np.ndarray:
    """A text held in memory, tokenised whole (the book's way): [tokens] int64. A transformers tokenizer or a
    tiktoken encoding; `<|endoftext|>` written in the text is that special token."""
    if isinstance(tokenizer, PreTrainedTokenizerBase):
        ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    else:  # tiktoken, as in the book
        ids = tokenizer.encode(text, allowed_special={EOS_TOKEN})
    return np.asarray(ids, dtype=np.int64)


def windows_from_text(
    text: str, tokenizer: Any, context_length: int, stride: int, name: str = "the text"
) -> TokenWindows:
    """Windows over one text held in memory (the book's way); raises DataError when it is too short for one."""
    windows = TokenWindows(tokenize_text(text, tokenizer), context_length, stride)
    check_enough_tokens(windows, name)
    return windows


def check_enough_tokens(windows: TokenWindows, name: str) -> None:
    """Raises DataError with the token counts when `windows` holds not even one window."""
    if len(windows) == 0:
        raise DataError(
            f"{name} has {windows.num_tokens} tokens, too few for one window of {windows.context_length} tokens "
            f"(which needs {windows.context_length + 1}); add text, lower --context-length or change --train-ratio"
        )


def create_dataloader(
    txt: str,
    tokenizer: Any,
    batch_size: int = 4,
    max_length: int = 256,
    stride: int = 128,
    shuffle: bool = True,
    drop_last: bool = True,
    num_workers: int = 0,
) -> DataLoader:
    """The book's `create_dataloader_v1`, with the tokenizer as an argument (transformers' or tiktoken's).

    Batches are (inputs, targets), each [batch_size, max_length] of token IDs. Shuffling draws from torch's global
    random generator, as the book's loader does, so `torch.manual_seed(123)` gives the book's batches.
    """
    windows = windows_from_text(txt, tokenizer, max_length, stride)
    return DataLoader(windows, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, num_workers=num_workers)


# ---------------------------------------------------------------------------------------------------------------------
# Everything a training run needs


@dataclass
class PreparedTokens:
    """A corpus prepared for training: its tokenizer, the token files of its two splits, and their descriptions."""

    tokenizer: PreTrainedTokenizerBase
    tokenizer_description: str
    source: str
    files: TokenFiles


def prepare_tokens(
    *,
    data: Sequence[str] | None = None,
    dataset: str | None = None,
    dataset_config: str | None = None,
    dataset_split: str = "train",
    text_column: str = "text",
    embedded: str = "pydoc",
    dedup: bool = False,
    tokenizer: str = "train",
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    min_frequency: int = DEFAULT_MIN_FREQUENCY,
    train_ratio: float = 0.9,
    num_proc: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    log: Any = print,
) -> PreparedTokens:
    """Corpus -> (dedup) -> train/val split -> tokenizer -> cached token files (what `gptscratch-prepare` does).

    A second call with the same corpus, tokenizer, ratio and dedup finds the token files in the cache (`cache_dir`,
    by default Hugging Face's datasets cache) and reads nothing else. `num_proc` None tokenises in one process
    below 64 M characters and in every CPU above.
    """
    check_train_ratio(train_ratio)
    corpus = load_corpus(data, dataset, dataset_config, dataset_split, text_column, embedded, cache_dir, log)
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_root()
    scanned: list[CorpusScan] = []

    def scan() -> CorpusScan:  # the first pass, made at most once, and only when a cache misses
        if not scanned:
            scanned.append(scan_corpus(corpus, dedup, progress))
        return scanned[0]

    def fit() -> PreTrainedTokenizerBase:
        key = {"corpus": corpus.key, "train_ratio": train_ratio, "dedup": dedup}
        return fit_tokenizer(
            lambda: training_sample(corpus, scan(), train_ratio), vocab_size, min_frequency, key, cache_root, progress
        )

    chosen, description = resolve_tokenizer(tokenizer, fit)
    files = prepare_token_files(corpus, chosen, train_ratio, dedup, cache_root, scan, num_proc, progress)
    if dedup:
        dropped = files.meta["duplicates_dropped"]
        log(f"dedup: dropped {dropped} exact duplicate document{'s' * (dropped != 1)} before tokenising")
    return PreparedTokens(chosen, description, corpus.description, files)


@dataclass
class PreparedData:
    """A run's data: the tokenizer, training and validation windows, and descriptions for the plan and summary.

    `token_files` is the cache entry the windows are read from; None when the training windows are streamed
    (`train.streaming`), and then `train` is a StreamedWindows and `train_head` the first of its windows.
    """

    tokenizer: PreTrainedTokenizerBase
    train: Any  # TokenWindows, or train.streaming.StreamedWindows
    val: TokenWindows
    source: str
    tokenizer_description: str
    documents: int | None
    duplicates_dropped: int
    token_files: TokenFiles | None = None
    train_head: TokenWindows | None = None

    @property
    def streamed(self) -> bool:
        return self.token_files is None


def prepare_data(*, context_length: int, stride: int | None = None, **corpus_and_tokenizer: Any) -> PreparedData:
    """`prepare_tokens(**corpus_and_tokenizer)`, then windows of `context_length` tokens every `stride` (default:
    context_length) over each split's token file, each split checked to hold at least one window."""
    prepared = prepare_tokens(**corpus_and_tokenizer)
    files = prepared.files
    stride = stride or context_length
    train = TokenWindows(files.tokens("train"), context_length, stride)
    val = TokenWindows(files.tokens("val"), context_length, stride)
    check_enough_tokens(train, "the training split")
    check_enough_tokens(val, "the validation split")
    return PreparedData(
        prepared.tokenizer,
        train,
        val,
        prepared.source,
        prepared.tokenizer_description,
        files.meta["documents"],
        files.meta["duplicates_dropped"],
        files,
    )


def _cache_str(cache_dir: str | os.PathLike | None) -> str | None:
    return str(cache_dir) if cache_dir is not None else None
