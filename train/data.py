"""Text in, training windows out: corpus -> documents -> train/val split -> tokenizer -> token files -> windows.

The book's chapter 2 pipeline (`GPTDatasetV1`, `create_dataloader_v1`) with the same semantics, scaled to corpora far
larger than memory. The corpus is read and split by `train.corpus`, its tokenizer chosen or fitted by
`train.vocabulary`; here a second pass tokenises the pieces in order, in `num_proc` worker processes, into flat
token files (`train.token_files`), cached by corpus and tokenizer, so the next run on the same data maps them in a
second; and the windows are cut from them (`train.windows`). Documents are joined with `<|endoftext|>`.

Memory stays bounded whatever the corpus size: one piece being read and a few pieces in flight to the workers. Hub
datasets can also be streamed (`train.streaming`).
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from common.errors import field
from common.files import check_apart, check_writable
from train.corpus import Corpus, CorpusScan, DataError, data_roots, load_corpus, scan_corpus, split_pieces
from train.options import DEFAULT_MIN_FREQUENCY, DEFAULT_VOCAB_SIZE, check_fields
from train.token_files import EntryBuilder, TokenFiles, cache_key, open_entry
from train.tokenizing import (
    BytePairRanks,
    PieceTokenizer,
    encoder_source,
    safe_pieces,
    start_worker,
    token_dtype,
    tokenize_in_worker,
)
from train.vocabulary import fit_tokenizer, resolve_tokenizer, tokenizer_fingerprint, training_sample
from train.windows import TokenWindows, TrainingWindows, check_enough_tokens

# Text per task handed to a tokenising worker, and tasks in flight per worker: what bounds preparation's memory.
TASK_CHARS = 1 << 20
TASKS_IN_FLIGHT_PER_WORKER = 2
# Below this many characters a corpus is tokenised in one process: starting workers costs more than it saves.
PARALLEL_TOKENIZE_MIN_CHARS = 64 << 20


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
    tasks: Iterable[tuple[str, list[tuple[str, bool]], int]],
    encoder: tuple[str | BytePairRanks, int, str],
    num_proc: int,
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
            f"a tokenising worker process stopped ({error}); if it ran out of memory, lower {field('num_proc')}; a "
            "script "
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
) -> str:
    """The second pass: the corpus's pieces, split at the ratio, tokenised in order into the builder's files.
    Returns the library that encoded them, in words (`encoder_source`)."""
    source, library = encoder_source(tokenizer.backend_tokenizer.to_str())
    encoder = (source, tokenizer.eos_token_id, builder.dtype.name)
    split_stream = split_pieces(corpus.pieces(), int(train_ratio * scan.characters), scan.kept)
    with tqdm(
        total=scan.characters, desc="Tokenizing", unit="char", unit_scale=True, disable=None if progress else True
    ) as bar:
        for split, chars, tokens in tokenize_in_order(tokenize_tasks(split_stream), encoder, num_proc):
            builder.writers[split].append(tokens)
            bar.update(chars)
    return library


def corpus_inputs(data: Sequence[str] | None, tokenizer: str) -> dict[str, list[Path]]:
    """The paths a corpus and its tokenizer are read from, by field: what the places a run writes must stay out of."""
    return {"data": data_roots(data or []), "tokenizer": [Path(tokenizer)] if Path(tokenizer).exists() else []}


def cache_root(cache_dir: str | os.PathLike | None) -> Path:
    """Where token files and fitted tokenizers are kept: `cache_dir`, by default Hugging Face's datasets cache
    (`HF_DATASETS_CACHE`, ~/.cache/huggingface/datasets); an InputError when it cannot be a writable directory (a
    file, a read-only file system), before any work."""
    if cache_dir is None:
        import datasets

        root = Path(datasets.config.HF_DATASETS_CACHE)
    else:
        root = Path(cache_dir)
    check_writable(root, "cache directory", "cache_dir")
    return root


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
        meta["tokenised_by"] = write_token_files(corpus, found, tokenizer, train_ratio, num_proc, builder, progress)
        return builder.finish(meta)


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
    check_fields(
        {
            "data": data,
            "vocab_size": vocab_size,
            "min_frequency": min_frequency,
            "train_ratio": train_ratio,
            "num_proc": num_proc,
            "embedded": embedded,
        }
    )
    root = cache_root(cache_dir)
    check_apart(root, corpus_inputs(data, tokenizer), named=f"{field('cache_dir')} {root}")
    corpus = load_corpus(data, dataset, dataset_config, dataset_split, text_column, embedded, cache_dir, log)
    scanned: list[CorpusScan] = []

    def scan() -> CorpusScan:  # the first pass, made at most once, and only when a cache misses
        if not scanned:
            scanned.append(scan_corpus(corpus, dedup, progress))
        return scanned[0]

    def fit() -> PreTrainedTokenizerBase:
        key = {"corpus": corpus.key, "train_ratio": train_ratio, "dedup": dedup}
        return fit_tokenizer(
            lambda: training_sample(corpus, scan(), train_ratio), vocab_size, min_frequency, key, root, progress
        )

    chosen, description = resolve_tokenizer(tokenizer, fit)
    files = prepare_token_files(corpus, chosen, train_ratio, dedup, root, scan, num_proc, progress)
    if files.made:
        log(f"tokenised by {files.meta['tokenised_by']}")
    if dedup:
        dropped = files.meta["duplicates_dropped"]
        log(f"dedup: dropped {dropped} exact duplicate document{'s' * (dropped != 1)} before tokenising")
    return PreparedTokens(chosen, description, corpus.description, files)


@dataclass
class PreparedData:
    """A run's data: the tokenizer, training and validation windows, and descriptions for the plan and summary.

    `train` is token windows over a token file (`TokenWindows`), or a stream's windows (`train.streaming`);
    `token_files` is the cache entry the windows are read from, None for a stream (and `documents` unknown).
    """

    tokenizer: PreTrainedTokenizerBase
    train: TrainingWindows
    val: TokenWindows
    source: str
    tokenizer_description: str
    documents: int | None
    duplicates_dropped: int
    token_files: TokenFiles | None = None


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
