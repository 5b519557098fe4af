"""Text in, training windows out: corpus -> documents -> train/val split -> tokenizer -> tokens -> windows -> loaders.

The book's chapter 2 pipeline (`GPTDatasetV1`, `create_dataloader_v1`) with the same semantics, scaled up:

- Documents come from the embedded corpus (text that ships with Python), local UTF-8 files, or a Hugging Face
  dataset. They live in an Arrow table (`datasets.Dataset`, columns `text` and `doc_start`): a large file is
  stored as several rows, `doc_start` is True on the first row of each document.
- The split into training and validation text is made on characters, before tokenising, as the book does
  (`text[:int(0.9 * len(text))]`); documents are joined with `<|endoftext|>`.
- Tokenising runs through `datasets.map(batched=True, num_proc=...)` into Arrow cache files; the token stream is
  read from those memory-mapped files one window at a time, so a corpus larger than memory never sits in Python
  lists.
- Window i holds tokens [i * stride, i * stride + context_length + 1): the inputs are its first context_length
  tokens, the targets its last context_length (the inputs shifted by one).
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from datasets.fingerprint import Hasher
from torch.utils.data import DataLoader, Dataset
from transformers import PreTrainedTokenizerBase

from common.commands import UsageError, first_line
from common.files import format_size
from common.model_dir import load_tokenizer_or_refuse
from common.tokenizer import load_tokenizer
from modeling_gptscratch import GPT2Tokenizer

EOS_TOKEN = "<|endoftext|>"
DOCUMENT_FEATURES = datasets.Features({"text": datasets.Value("string"), "doc_start": datasets.Value("bool")})
TOKEN_FEATURES = datasets.Features({"input_ids": datasets.List(datasets.Value("int32"))})
# Files are read, checked and stored in pieces of about this many bytes, so one huge file never sits in memory whole.
READ_BLOCK_BYTES = 8 << 20
# Below this many characters a corpus is tokenised in one process: starting workers costs more than it saves.
PARALLEL_TOKENIZE_MIN_CHARS = 64 << 20
STDLIB_SKIP_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"})


class DataError(UsageError, ValueError):
    """Unusable data or data settings; the message names the input and the fix.

    A UsageError, so the command line reports it in one line with exit status 2, and a ValueError for Python callers.
    """


@dataclass
class Corpus:
    """Documents in an Arrow table (columns `text`, `doc_start`) and a one-line description of where they came from."""

    documents: datasets.Dataset
    description: str


# ---------------------------------------------------------------------------------------------------------------------
# Corpus sources


def embedded_corpus(name: str = "pydoc", cache_dir: str | os.PathLike | None = None) -> Corpus:
    """Text that ships with every Python installation, so training needs no download.

    `pydoc`: the language and library reference topics that `help()` shows (module `pydoc_data.topics`, about
    465 KB of English). `stdlib`: the standard library's own Python sources (tests left out; about 12 MB of code).
    A Python built without `pydoc_data` falls back to `stdlib`.
    """
    if name == "pydoc":
        try:
            from pydoc_data.topics import topics
        except ImportError:
            print("gptscratch: this Python has no pydoc_data; using the standard library's sources", file=sys.stderr)
            return embedded_corpus("stdlib", cache_dir)
        size = sum(len(text.encode("utf-8")) for text in topics.values())
        documents = datasets.Dataset.from_generator(
            _pydoc_rows,
            features=DOCUMENT_FEATURES,
            cache_dir=_cache_str(cache_dir),
            # The fingerprint of the cached Arrow file follows these values: another Python makes another cache.
            gen_kwargs={"python": sys.version, "size": size},
        )
        return Corpus(documents, f"embedded corpus: Python's pydoc_data topics ({size / 1000:.0f} KB)")
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
        corpus = local_corpus([str(path) for path in files], cache_dir=cache_dir)
        size = sum(path.stat().st_size for path in files)
        return Corpus(
            corpus.documents,
            f"embedded corpus: the Python {sys.version_info.major}.{sys.version_info.minor} standard library's "
            f"sources ({len(files)} files, {size / 1e6:.1f} MB)",
        )
    raise DataError(f"unknown embedded corpus {name!r}; choose pydoc or stdlib")


def _pydoc_rows(python: str, size: int) -> Iterator[dict[str, Any]]:
    """One row per pydoc topic; the arguments only key the cache."""
    from pydoc_data.topics import topics

    for key in sorted(topics):
        yield {"text": topics[key], "doc_start": True}


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
                log(f"--data {spec}: left out {', '.join(map(str, skipped[:3]))}"
                    + (f" and {len(skipped) - 3} more" if len(skipped) > 3 else "")
                    + " (model files and run or model directories are not text)")
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
MODEL_FILE_SUFFIXES = frozenset({
    ".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".npy", ".npz", ".h5", ".msgpack", ".onnx",
    ".gguf", ".arrow", ".png", ".pdf",
})


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


def local_corpus(
    paths: Sequence[str], cache_dir: str | os.PathLike | None = None, log: Callable[[str], None] | None = None
) -> Corpus:
    """UTF-8 text files, directories and globs: each file is a document (`log` hears what a walk left out).

    A file that is not UTF-8 text (or holds a NUL byte) raises DataError naming the file and the byte offset.
    """
    files = expand_data_paths(paths, log)
    if sum(path.stat().st_size for path in files) == 0:
        raise DataError(f"--data {' '.join(paths)}: every file is empty; give files with text in them")
    # Size and modification time make an edited file a new cache entry.
    stamps = [(str(path.absolute()), path.stat().st_size, path.stat().st_mtime_ns) for path in files]
    try:
        documents = datasets.Dataset.from_generator(
            _file_rows,
            features=DOCUMENT_FEATURES,
            cache_dir=_cache_str(cache_dir),
            gen_kwargs={"stamps": stamps, "block_bytes": READ_BLOCK_BYTES},
        )
    except datasets.exceptions.DatasetGenerationError as error:
        if isinstance(error.__cause__, DataError):
            raise error.__cause__ from None
        raise
    size = sum(stamp[1] for stamp in stamps)
    names = ", ".join(path.name for path in files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
    return Corpus(documents, f"{names} ({format_size(size)})")


def _file_rows(stamps: list[tuple[str, int, int]], block_bytes: int) -> Iterator[dict[str, Any]]:
    """Rows of the files named in `stamps` (path, size, mtime: the sizes and times only key the cache)."""
    for path, _, _ in stamps:
        for index, piece in enumerate(read_text_pieces(Path(path), block_bytes)):
            yield {"text": piece, "doc_start": index == 0}


def read_text_pieces(path: Path, block_bytes: int = READ_BLOCK_BYTES) -> Iterator[str]:
    """A UTF-8 file's text in pieces of about `block_bytes`, each cut after a newline between two non-space characters.

    Cutting there leaves GPT-2's pre-tokenisation unchanged (a lone "\\n" between words is a token of its own), so
    tokenising the pieces one by one gives the tokens of the whole file. Raises DataError with the byte offset of the
    first byte that is not UTF-8, or of a NUL byte.
    """
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
                    raise DataError(
                        f"{path} is not UTF-8 text: byte 0x{data[error.start]:02x} at byte offset "
                        f"{consumed + error.start}; convert it to UTF-8 or leave it out of --data"
                    ) from None
                text, pending = data[: error.start].decode("utf-8"), data[error.start :]
            nul = text.find("\x00")
            if nul >= 0:
                offset = consumed + len(text[:nul].encode("utf-8"))
                raise DataError(
                    f"{path} is not text: a NUL byte at byte offset {offset} (a binary file?); leave it out of --data"
                )
            consumed += len(data) - len(pending)
            carry += text
            while len(carry) > block_bytes:
                cut = _safe_cut(carry, block_bytes)
                if cut is None:
                    break
                yield carry[:cut]
                carry = carry[cut:]
            if not block:
                break
    if carry:
        yield carry


def _safe_cut(text: str, target: int) -> int | None:
    """The position just after the last "\\n" at or before `target` whose neighbours are both non-space characters.

    None when there is none (one enormous line): the caller keeps reading until a cut appears; past four blocks
    of text it cuts at `target` anyway, which can change the tokens at that one point.
    """
    position = text.rfind("\n", 0, target + 1)
    while position > 0:
        if position + 1 < len(text) and not text[position - 1].isspace() and not text[position + 1].isspace():
            return position + 1
        position = text.rfind("\n", 0, position)
    return target if len(text) > 4 * target else None


def hub_corpus(
    name: str,
    config: str | None = None,
    split: str = "train",
    text_column: str = "text",
    cache_dir: str | os.PathLike | None = None,
) -> Corpus:
    """A Hugging Face dataset by name, config, split and text column; each row is a document.

    Downloads through `datasets.load_dataset` (Arrow files on disk, memory-mapped). Offline, or for a name that is
    not there, raises DataError that names the local-file alternative.
    """
    try:
        table = datasets.load_dataset(name, config, split=split, cache_dir=_cache_str(cache_dir))
    except (ConnectionError, OSError, ValueError, datasets.exceptions.DatasetNotFoundError) as error:
        raise DataError(
            f"--dataset {name}: could not load it from the Hugging Face Hub ({first_line(error)}); when offline, "
            "pass local text files instead with --data PATH"
        ) from error
    if isinstance(table, datasets.DatasetDict):
        raise DataError(f"--dataset {name}: choose a split with --dataset-split (one of: {', '.join(table)})")
    if text_column not in table.column_names:
        raise DataError(
            f"--dataset {name} has no column {text_column!r}; choose one with --text-column "
            f"(columns: {', '.join(table.column_names)})"
        )
    if getattr(table.features[text_column], "dtype", None) not in ("string", "large_string"):
        raise DataError(f"--text-column {text_column}: the column holds {table.features[text_column]}, not text")
    documents = table.select_columns([text_column])
    if text_column != "text":
        documents = documents.rename_column(text_column, "text")
    label = name + (f" ({config})" if config else "") + f", split {split}, column {text_column}"
    return Corpus(documents, f"Hugging Face dataset {label}")


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
        return local_corpus(data, cache_dir=cache_dir, log=log)
    if dataset:
        return hub_corpus(dataset, dataset_config, dataset_split, text_column, cache_dir=cache_dir)
    return embedded_corpus(embedded, cache_dir=cache_dir)


# ---------------------------------------------------------------------------------------------------------------------
# Documents: duplicates and the train/validation split


def deduplicate(documents: datasets.Dataset) -> tuple[datasets.Dataset, int]:
    """Drops exact duplicate documents (the first copy stays); returns the documents and how many were dropped.

    A document spanning several rows is compared whole. Memory: a 16-byte digest per distinct document and the
    numbers of the rows kept.
    """
    seen: set[bytes] = set()
    keep: list[int] = []
    dropped = 0
    current_rows: list[int] = []
    current_hash = hashlib.blake2b(digest_size=16)

    def finish() -> None:
        nonlocal dropped
        if not current_rows:
            return
        digest = current_hash.digest()
        if digest in seen:
            dropped += 1
        else:
            seen.add(digest)
            keep.extend(current_rows)

    row = 0
    for batch in documents.with_format("arrow").iter(batch_size=1000):
        texts = batch.column("text").to_pylist()
        starts = batch.column("doc_start").to_pylist() if "doc_start" in batch.column_names else [True] * len(texts)
        for text, start in zip(texts, starts):
            if start:
                finish()
                current_rows, current_hash = [], hashlib.blake2b(digest_size=16)
            current_rows.append(row)
            current_hash.update(text.encode("utf-8"))
            row += 1
    finish()
    if not dropped:
        return documents, 0
    return documents.select(keep), dropped


def document_lengths(documents: datasets.Dataset) -> np.ndarray:
    """Characters per row, [rows] int64, computed by Arrow without building Python strings."""
    lengths = [
        pc.utf8_length(batch.column("text")).to_numpy(zero_copy_only=False)
        for batch in documents.with_format("arrow").iter(batch_size=10_000)
    ]
    return np.concatenate(lengths).astype(np.int64) if lengths else np.zeros(0, dtype=np.int64)


def split_documents(
    documents: datasets.Dataset, train_ratio: float = 0.9
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Training and validation text, cut at character int(train_ratio * total characters), as the book does.

    With one document this is exactly the book's `text[:split_idx]`, `text[split_idx:]`. With several, the
    documents before the cut train, those after validate, and the one the cut falls in is shared.
    """
    if not 0 < train_ratio < 1:
        raise DataError(f"--train-ratio {train_ratio}: must be between 0 and 1 (0.9 keeps 10% for validation)")
    lengths = document_lengths(documents)
    total = int(lengths.sum())
    if total == 0:
        raise DataError("the corpus holds no text; give files or a dataset with text in them")
    cut = int(train_ratio * total)
    ends = np.cumsum(lengths)
    row = int(np.searchsorted(ends, cut, side="right"))  # the row holding the first validation character
    offset = cut - (int(ends[row - 1]) if row else 0)
    if offset == 0:
        return _rows(documents, 0, row), _rows(documents, row, len(documents))
    shared = documents[row]
    doc_start = shared.get("doc_start", True)
    # The cut document's head ends the training text; its tail, continuing the same document, starts validation.
    head = datasets.Dataset.from_dict({"text": [shared["text"][:offset]], "doc_start": [doc_start]}, DOCUMENT_FEATURES)
    tail = datasets.Dataset.from_dict({"text": [shared["text"][offset:]], "doc_start": [False]}, DOCUMENT_FEATURES)
    before = _with_doc_start(_rows(documents, 0, row))
    after = _with_doc_start(_rows(documents, row + 1, len(documents)))
    return datasets.concatenate_datasets([before, head]), datasets.concatenate_datasets([tail, after])


def _rows(documents: datasets.Dataset, start: int, stop: int) -> datasets.Dataset:
    """Rows [start, stop); datasets refuses an empty range at the end of a table, an empty index list works."""
    return documents.select(range(start, stop) if start < stop else [])


def _with_doc_start(documents: datasets.Dataset) -> datasets.Dataset:
    """Rows of a source where every row is a document (hub datasets) get the `doc_start` column for concatenation."""
    if "doc_start" in documents.column_names:
        return documents
    return documents.add_column("doc_start", [True] * len(documents), feature=datasets.Value("bool"))


# ---------------------------------------------------------------------------------------------------------------------
# Tokenizer


def train_bpe_tokenizer(
    documents: datasets.Dataset, vocab_size: int, cache_dir: str | os.PathLike | None = None
) -> PreTrainedTokenizerBase:
    """A byte-level BPE of `vocab_size` tokens fitted on `documents` (GPT-2's pre-tokenisation, `<|endoftext|>`).

    Returned as transformers' GPT-2 tokenizer class, so `save_pretrained` writes files that `AutoTokenizer` loads.
    The result is cached by the documents' fingerprint and the vocabulary size: reruns and the other processes of
    a multi-process run load the same tokenizer instead of fitting it again.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 257:
        raise DataError(f"--vocab-size {vocab_size}: a byte-level BPE needs at least 257 (256 bytes + <|endoftext|>)")
    cache_root = Path(cache_dir or datasets.config.HF_DATASETS_CACHE)
    cached = cache_root / "gptscratch-tokenizers" / f"bpe-{vocab_size}-{documents._fingerprint}"
    if (cached / "tokenizer.json").is_file():
        return load_tokenizer(cached)
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_texts(documents), trainer=trainer, length=len(documents))
    model = json.loads(backend.to_str())["model"]
    tokenizer = GPT2Tokenizer(vocab=model["vocab"], merges=[tuple(merge) for merge in model["merges"]])
    cached.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{cached.name}.tmp-", dir=cached.parent))
    tokenizer.save_pretrained(staging)
    try:
        os.replace(staging, cached)
    except OSError:  # another process finished the same tokenizer first; theirs is identical
        shutil.rmtree(staging, ignore_errors=True)
    # Loaded back, so a first and a cached call return the same object state (and the same cache fingerprints).
    return load_tokenizer(cached)


def _texts(documents: datasets.Dataset) -> Iterator[list[str]]:
    for batch in documents.with_format("arrow").iter(batch_size=1000):
        yield batch.column("text").to_pylist()


def resolve_tokenizer(
    spec: str, train_documents: datasets.Dataset, vocab_size: int, cache_dir: str | os.PathLike | None = None
) -> tuple[PreTrainedTokenizerBase, str]:
    """The tokenizer `--tokenizer` names and a one-line description of it.

    `train`: a byte-level BPE fitted on the training split; `gpt2`: GPT-2's from the Hugging Face Hub (or its
    cache); a path: a directory with OpenAI's encoder.json + vocab.bpe or a saved transformers tokenizer.
    """
    if spec == "train":
        tokenizer = train_bpe_tokenizer(train_documents, vocab_size, cache_dir)
        return tokenizer, f"byte-level BPE fitted on the training split ({len(tokenizer)} tokens)"
    tokenizer = load_tokenizer_or_refuse(
        spec, f"--tokenizer {spec} could not be loaded",
        "pass a directory with encoder.json + vocab.bpe or a saved tokenizer, or --tokenizer train",
        error_class=DataError,
    )
    if tokenizer.eos_token_id is None:
        raise DataError(f"--tokenizer {spec} has no end-of-text token; documents are joined with one, choose another")
    if spec == "gpt2":
        return tokenizer, f"GPT-2 BPE ({len(tokenizer)} tokens)"
    return tokenizer, f"tokenizer from {spec} ({len(tokenizer)} tokens)"


# ---------------------------------------------------------------------------------------------------------------------
# Tokens and windows


class _TokenizeBatch:
    """`datasets.map` function: a batch of rows -> token IDs, with `<|endoftext|>` before each new document.

    A class rather than a closure so it pickles into `num_proc` workers and hashes into a stable cache fingerprint.
    """

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.eos_id = tokenizer.eos_token_id if isinstance(tokenizer, PreTrainedTokenizerBase) else tokenizer.eot_token

    def __call__(self, batch: dict[str, list], indices: list[int]) -> dict[str, list[list[int]]]:
        texts = batch["text"]
        if isinstance(self.tokenizer, PreTrainedTokenizerBase):
            encoded = self.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
        else:  # tiktoken, as in the book
            encoded = self.tokenizer.encode_batch(texts, allowed_special={EOS_TOKEN})
        starts = batch.get("doc_start") or [True] * len(texts)
        # The first row of a split opens its token stream: no separator before it.
        return {
            "input_ids": [
                [self.eos_id, *ids] if start and index > 0 else ids
                for ids, start, index in zip(encoded, starts, indices)
            ]
        }


def tokenize_documents(
    documents: datasets.Dataset,
    tokenizer: Any,
    num_proc: int | None = None,
    desc: str = "Tokenizing",
    cache_dir: str | os.PathLike | None = None,
) -> datasets.Dataset:
    """Rows of text -> rows of token IDs (column `input_ids`, int32), documents separated by `<|endoftext|>`.

    `tokenizer`: a transformers tokenizer or a tiktoken encoding. Runs `datasets.map(batched=True)` in `num_proc`
    processes. With `cache_dir` the result is an Arrow file there, named by the documents' and the tokenizer's
    fingerprints: memory-mapped, and reused by the next run. Without it, datasets' default: cached beside
    file-backed documents, kept in memory for in-memory ones.
    """
    tokenize = _TokenizeBatch(tokenizer)
    cache_file_name = None
    if cache_dir is not None:
        folder = Path(cache_dir) / "gptscratch-tokens"
        folder.mkdir(parents=True, exist_ok=True)
        fingerprint = Hasher.hash((documents._fingerprint, tokenize))
        cache_file_name = str(folder / f"tokens-{fingerprint}.arrow")
    return documents.map(
        tokenize,
        batched=True,
        with_indices=True,
        remove_columns=documents.column_names,
        features=TOKEN_FEATURES,
        num_proc=num_proc if num_proc and num_proc > 1 else None,
        cache_file_name=cache_file_name,
        desc=desc,
    )


class TokenWindows(Dataset):
    """The book's `GPTDatasetV1` over a token stream: item i is (inputs [context_length], targets [context_length]).

    Window i starts at token i * stride; targets are the inputs shifted by one token. The stream is read from the
    tokenized dataset's Arrow buffers (memory-mapped when cached on disk), one window per item.
    """

    def __init__(self, tokens: datasets.Dataset, context_length: int, stride: int):
        if context_length < 1 or stride < 1:
            raise DataError(f"context length ({context_length}) and stride ({stride}) must be at least 1")
        self.tokens_dataset = tokens  # keeps the memory map alive
        column = tokens.data.table.column("input_ids")
        self.stream = pa.chunked_array([chunk.flatten() for chunk in column.chunks], type=pa.int32())
        self.context_length = context_length
        self.stride = stride

    @property
    def num_tokens(self) -> int:
        return len(self.stream)

    def __len__(self) -> int:
        # The book's range(0, len(tokens) - context_length, stride): every window with a full set of targets.
        return max(0, math.ceil((self.num_tokens - self.context_length) / self.stride))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"window {index} out of range for {len(self)} windows")
        window = self.stream.slice(index * self.stride, self.context_length + 1).to_numpy()
        window = torch.from_numpy(window.astype(np.int64))
        return window[:-1], window[1:]


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


def windows_from_text(
    text: str, tokenizer: Any, context_length: int, stride: int, name: str = "the text"
) -> TokenWindows:
    """Windows over one text held in memory (the book's way); raises DataError when it is too short for one."""
    documents = datasets.Dataset.from_dict({"text": [text], "doc_start": [True]}, DOCUMENT_FEATURES)
    windows = TokenWindows(tokenize_documents(documents, tokenizer), context_length, stride)
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
class PreparedData:
    """A run's data: the tokenizer, training and validation windows, and descriptions for the plan and summary."""

    tokenizer: PreTrainedTokenizerBase
    train: TokenWindows
    val: TokenWindows
    source: str
    tokenizer_description: str
    documents: int
    duplicates_dropped: int


def prepare_data(
    *,
    context_length: int,
    stride: int | None = None,
    data: Sequence[str] | None = None,
    dataset: str | None = None,
    dataset_config: str | None = None,
    dataset_split: str = "train",
    text_column: str = "text",
    embedded: str = "pydoc",
    dedup: bool = False,
    tokenizer: str = "train",
    vocab_size: int = 4096,
    train_ratio: float = 0.9,
    num_proc: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    log: Any = print,
) -> PreparedData:
    """Corpus -> (dedup) -> train/val text split -> tokenizer -> Arrow-cached tokens -> windows, checked for size.

    `num_proc` None tokenises in one process below 64 M characters and in every CPU above.
    """
    corpus = load_corpus(data, dataset, dataset_config, dataset_split, text_column, embedded, cache_dir, log)
    documents, dropped = corpus.documents, 0
    if dedup:
        documents, dropped = deduplicate(documents)
        log(f"dedup: dropped {dropped} exact duplicate document{'s' * (dropped != 1)} before tokenising")
    train_docs, val_docs = split_documents(documents, train_ratio)
    chosen, description = resolve_tokenizer(tokenizer, train_docs, vocab_size, cache_dir)
    if num_proc is None:
        total_chars = int(document_lengths(documents).sum())
        num_proc = os.cpu_count() if total_chars >= PARALLEL_TOKENIZE_MIN_CHARS else 1
    stride = stride or context_length
    token_cache = cache_dir or datasets.config.HF_DATASETS_CACHE
    train_tokens = tokenize_documents(train_docs, chosen, num_proc, "Tokenizing training text", token_cache)
    val_tokens = tokenize_documents(val_docs, chosen, num_proc, "Tokenizing validation text", token_cache)
    train, val = TokenWindows(train_tokens, context_length, stride), TokenWindows(val_tokens, context_length, stride)
    check_enough_tokens(train, "the training split")
    check_enough_tokens(val, "the validation split")
    return PreparedData(chosen, train, val, corpus.description, description, count_documents(documents), dropped)


def count_documents(documents: datasets.Dataset) -> int:
    """Documents (not rows: a large file spans several rows)."""
    if "doc_start" not in documents.column_names:
        return len(documents)
    return sum(
        pc.sum(batch.column("doc_start").cast(pa.int64())).as_py() or 0
        for batch in documents.with_format("arrow").iter(batch_size=10_000)
    )


def _cache_str(cache_dir: str | os.PathLike | None) -> str | None:
    return str(cache_dir) if cache_dir is not None else None
