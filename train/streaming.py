"""Hub datasets streamed (`dataset NAME `streaming``): documents tokenised as training reads them, into shuffled
windows whose position every checkpoint keeps.

Nothing is prepared ahead: `datasets.load_dataset(..., streaming=True)` reads the split as training goes (a local
dataset directory streams too). The token stream is the one token files hold: documents in the dataset's order,
joined with `<|endoftext|>`, cut into windows of context_length + 1 tokens every stride tokens.

- Validation: the split's first documents, as many as the windows every evaluation measures need; training never
  sees them. The training loss is measured on the first windows after them.
- Training: the documents after those, process r of N taking documents r, r + N, ...; each process's windows pass
  through a shuffle buffer of `shuffle_buffer` windows, from which a seeded generator draws. Past the split's end the
  stream starts again (the next epoch).
- Exact resume: `state_dict()` holds the dataset's own position (`IterableDataset.state_dict`), the tokens not yet
  in a window, the shuffle buffer and its generator's state; the Accelerate loop saves it in every checkpoint, one
  file per process, and a resumed run draws the windows the uninterrupted run drew. (datasets' own shuffle buffer
  is not used: its contents are lost on resume.)
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from common.errors import field
from common.files import write_atomic
from train.corpus import DataError, load_hub_split
from train.data import PreparedData, cache_root
from train.options import DEFAULT_MIN_FREQUENCY, DEFAULT_VOCAB_SIZE
from train.tokenizing import PieceTokenizer, encoder_source, token_dtype
from train.vocabulary import TOKENIZER_SAMPLE_CHARS, fit_tokenizer, resolve_tokenizer
from train.windows import TokenWindows


class DocumentTokens:
    """One process's share of a document stream as token arrays: document i goes to process i % processes, each
    tokenised whole with `<|endoftext|>` before every document but the first; past the end the stream starts again.

    `state_dict` / `load_state_dict`: the dataset's position, the epoch and the count of documents read.
    """

    def __init__(
        self, documents: Any, text_column: str, tokenizer: PreTrainedTokenizerBase, rank: int = 0, processes: int = 1
    ):
        self.documents = documents
        self.text_column = text_column
        source, _ = encoder_source(tokenizer.backend_tokenizer.to_str())
        self.encode = PieceTokenizer(source, tokenizer.eos_token_id, token_dtype(len(tokenizer)).name)
        self.rank, self.processes = rank, processes
        self.epoch = 0
        self.read = 0  # documents of the stream read in this epoch, all processes' counted
        self.opened = False  # whether this process's token stream has begun
        self._iterator: Iterator[dict[str, Any]] | None = None
        self._tokens_this_epoch = 0
        self._loaded_position: dict[str, Any] | None = None

    def __iter__(self) -> Iterator[np.ndarray]:
        return self

    def __next__(self) -> np.ndarray:
        """The next document of this process, tokenised: [tokens] of the tokenizer's dtype."""
        while True:
            if self._iterator is None:
                self.documents.set_epoch(self.epoch)
                self._iterator = iter(self.documents)
            try:
                example = next(self._iterator)
            except StopIteration:
                if self._tokens_this_epoch == 0:
                    raise DataError(
                        f"the stream holds no text for process {self.rank}: every document it reached "
                        f"is empty; check {field('dataset_split')} and {field('text_column')}"
                    ) from None
                self.epoch, self.read, self._iterator, self._tokens_this_epoch = self.epoch + 1, 0, None, 0
                self._loaded_position = None  # the next epoch starts at its beginning
                continue
            index, self.read = self.read, self.read + 1
            if index % self.processes != self.rank:
                continue
            tokens = self.encode([(example[self.text_column] or "", self.opened)])
            self.opened = True
            self._tokens_this_epoch += len(tokens)
            return tokens

    def state_dict(self) -> dict[str, Any]:
        # Until this object iterates again after a load, the dataset still reports its state from before it.
        position = self._loaded_position if self._iterator is None else self.documents.state_dict()
        return {
            "position": position,
            "epoch": self.epoch,
            "read": self.read,
            "opened": self.opened,
            "tokens_this_epoch": self._tokens_this_epoch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.read, self.opened = state["epoch"], state["read"], state["opened"]
        self._tokens_this_epoch = state["tokens_this_epoch"]
        self._loaded_position = state["position"]
        self._iterator = None
        self.documents.set_epoch(self.epoch)
        if state["position"] is not None:
            self.documents.load_state_dict(state["position"])


def stream_head(source: DocumentTokens, count: int, context_length: int, stride: int) -> TokenWindows:
    """The first `count` windows of `source` (read from it), as TokenWindows over just the tokens they need."""
    needed = (count - 1) * stride + context_length + 1
    arrays, have = [], 0
    while have < needed:
        arrays.append(next(source))
        have += len(arrays[-1])
    return TokenWindows(np.concatenate(arrays)[:needed], context_length, stride)


class StreamedWindows:
    """Training windows drawn from a document stream through a seeded shuffle buffer; `batches` yields them.

    Each window is tokens [i * stride, i * stride + context_length + 1) of this process's token stream, as
    TokenWindows cuts them. `state_dict()` (JSON-able values and two arrays) is everything that decides the windows
    to come; `save` and `load` keep it in a checkpoint directory, one file per process.
    """

    def __init__(
        self,
        source: DocumentTokens,
        context_length: int,
        stride: int,
        shuffle_buffer: int,
        seed: int,
        head: TokenWindows | None = None,
    ):
        self.source = source
        self.head = head  # the stream's first windows, read ahead: what the training loss of each evaluation measures
        self.context_length, self.stride = context_length, stride
        self.shuffle_buffer = shuffle_buffer
        self.random = np.random.default_rng(seed + source.rank)
        self.dtype = source.encode.dtype
        self.carry = np.zeros(0, dtype=self.dtype)  # tokens read from the source and not yet past a window start
        self.skip = 0  # tokens still to drop before the next window starts (a stride longer than the carry)
        self.buffer: list[np.ndarray] = []

    def _next_in_order(self) -> np.ndarray:
        """The next window of the unshuffled stream, [context_length + 1]."""
        while len(self.carry) < self.context_length + 1 + self.skip:
            self.carry = np.concatenate([self.carry, next(self.source)])
        start = self.skip
        window = self.carry[start : start + self.context_length + 1].copy()
        self.carry = self.carry[start:]
        self.skip = max(0, self.stride - len(self.carry))
        self.carry = self.carry[self.stride :]
        return window

    def next_window(self) -> np.ndarray:
        """The next training window, [context_length + 1]: a uniform draw from the buffer, refilled from the stream."""
        while len(self.buffer) < self.shuffle_buffer:
            self.buffer.append(self._next_in_order())
        index = int(self.random.integers(len(self.buffer)))
        window = self.buffer[index]
        self.buffer[index] = self.buffer[-1]
        self.buffer.pop()
        return window

    windows_per_epoch = None  # a stream has no length: its epoch is the run

    def describe(self) -> str:
        return f"windows tokenised as the stream is read, drawn through a shuffle buffer of {self.shuffle_buffer:,}"

    def evaluation_windows(self, count: int) -> TokenWindows:
        """The stream's first windows (`count` of them were read ahead), the training loss's every evaluation."""
        return self.head

    def training_batches(self, accelerator: Any, batch_size: int, micro_batches_per_epoch: int) -> StreamBatches:
        return StreamBatches(self, batch_size, accelerator.device)

    def batches(
        self, batch_size: int, device: torch.device | str = "cpu"
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Endless (inputs, targets) batches, each [batch_size, context_length] int64 on `device`."""
        while True:
            windows = torch.from_numpy(np.stack([self.next_window() for _ in range(batch_size)]).astype(np.int64))
            windows = windows.to(device)
            yield windows[:, :-1], windows[:, 1:]

    def state_dict(self) -> dict[str, Any]:
        width = self.context_length + 1
        return {
            "source": self.source.state_dict(),
            "random": self.random.bit_generator.state,
            "skip": self.skip,
            "carry": self.carry.copy(),
            "buffer": np.stack(self.buffer) if self.buffer else np.zeros((0, width), dtype=self.dtype),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.source.load_state_dict(state["source"])
        self.random.bit_generator.state = state["random"]
        self.skip = state["skip"]
        self.carry = np.asarray(state["carry"], dtype=self.dtype)
        self.buffer = list(np.asarray(state["buffer"], dtype=self.dtype))

    @staticmethod
    def state_file(directory: Path, rank: int) -> Path:
        return Path(directory) / f"stream_state_{rank}.npz"

    def save(self, directory: Path) -> None:
        """Writes this process's state into checkpoint `directory` (atomically)."""
        state = self.state_dict()
        arrays = {"carry": state.pop("carry"), "buffer": state.pop("buffer")}

        def write(path: str) -> None:
            with open(path, "wb") as stream:
                np.savez(stream, **arrays, state=np.array(json.dumps(state)))

        write_atomic(self.state_file(directory, self.source.rank), write)

    def load(self, directory: Path) -> None:
        """Restores this process's state from checkpoint `directory`."""
        path = self.state_file(directory, self.source.rank)
        if not path.is_file():
            raise DataError(
                f"{field('resume')}: {directory} has no stream position for process {self.source.rank} "
                f"({path.name}); it was not written by a {field('streaming')} run"
            )
        with np.load(path, allow_pickle=False) as saved:
            state = json.loads(str(saved["state"]))
            state.update(carry=saved["carry"], buffer=saved["buffer"])
        self.load_state_dict(state)


def prepare_streamed_data(
    *,
    dataset: str,
    context_length: int,
    stride: int | None,
    evaluation_windows: int,
    dataset_config: str | None = None,
    dataset_split: str = "train",
    text_column: str = "text",
    tokenizer: str = "train",
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    min_frequency: int = DEFAULT_MIN_FREQUENCY,
    shuffle_buffer: int = 1000,
    seed: int = 123,
    rank: int = 0,
    processes: int = 1,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> PreparedData:
    """A run's data from a streamed dataset: validation windows (the split's first documents), the training
    loss's windows (the first windows after them) and the StreamedWindows of this process.

    `evaluation_windows`: windows each evaluation measures (in all processes). `tokenizer train` fits the BPE on
    the training documents the stream yields first, `TOKENIZER_SAMPLE_CHARS` characters of them at most.
    """
    stride = stride or context_length
    root = cache_root(cache_dir)
    stream = load_hub_split(dataset, dataset_config, dataset_split, text_column, cache_dir, streaming=True)
    label = dataset + (f" ({dataset_config})" if dataset_config else "") + f", split {dataset_split}"

    def sample() -> tuple[Iterator[str], None]:  # for tokenizer train: the first documents, up to the cap
        def texts() -> Iterator[str]:
            seen = 0
            for example in stream:
                text = example[text_column] or ""
                yield text
                seen += len(text)
                if seen >= TOKENIZER_SAMPLE_CHARS:
                    return

        return texts(), None

    def fit() -> PreTrainedTokenizerBase:
        key = {"stream": dataset, "config": dataset_config, "split": dataset_split, "column": text_column}
        return fit_tokenizer(sample, vocab_size, min_frequency, key, root, progress)

    chosen, tokenizer_description = resolve_tokenizer(tokenizer, fit, "the stream's first documents")
    validation_source = DocumentTokens(stream, text_column, chosen)
    val = stream_head(validation_source, evaluation_windows, context_length, stride)
    if validation_source.epoch > 0:
        raise DataError(
            f"{field('dataset')} {dataset} {field('streaming')}: the whole split holds fewer than the "
            f"{evaluation_windows} validation "
            f"windows an evaluation measures; lower {field('eval_iter')} or {field('batch_size')}, or prepare it "
            f"with {field('data')} instead"
        )
    # Each reader gets its own copy of the stream: a datasets stream tracks the position of its latest iterator.
    train_head = stream_head(
        DocumentTokens(stream.skip(validation_source.read), text_column, chosen),
        evaluation_windows,
        context_length,
        stride,
    )
    source = DocumentTokens(stream.skip(validation_source.read), text_column, chosen, rank, processes)
    train = StreamedWindows(source, context_length, stride, shuffle_buffer, seed, head=train_head)
    description = f"Hugging Face dataset {label}, column {text_column} (streamed)"
    return PreparedData(chosen, train, val, description, tokenizer_description, None, 0)


class StreamBatches:
    """A stream's windows as the Accelerate loop's `TrainingBatches`: batches of this process's windows on its
    device; the position is kept in a file of each process's own (`StreamedWindows.save`)."""

    epoch = 0
    epoch_ended = False  # the run is the stream's one epoch

    def __init__(self, windows: StreamedWindows, batch_size: int, device: torch.device):
        self.windows, self.batch_size, self.device = windows, batch_size, device

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.windows.batches(self.batch_size, self.device)

    def save(self, directory: Path) -> dict[str, Any]:
        self.windows.save(directory)
        return {}

    def load(self, directory: Path, recorded: dict[str, Any]) -> None:
        self.windows.load(directory)
