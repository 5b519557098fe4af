"""Training windows: the book's `GPTDatasetV1` over a token stream, and the batches a run draws from them.

Window i holds tokens [i * stride, i * stride + context_length + 1), read from a memory-mapped token file: the inputs
are its first context_length tokens, the targets its last context_length (the inputs shifted by one). A run's
training windows (`TrainingWindows`: `TokenWindows` here, or `train.streaming.StreamedWindows`) hand the Accelerate
loop its micro-batches as `TrainingBatches`, which also save and restore their position in a checkpoint, so the
loop reads files and streams alike.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from transformers import PreTrainedTokenizerBase

from common.errors import field
from train.corpus import DataError
from train.tokenizing import EOS_TOKEN


class TrainingBatches(Protocol):
    """The Accelerate loop's training micro-batches: an endless iterator of (inputs, targets), each
    [batch_size, context_length], from the position the run is at; `epoch_ended` after the last micro-batch of an
    epoch. `save` writes what this process needs to resume into a checkpoint directory and returns what the loop's
    state file records of the position; `load` restores both."""

    epoch: int

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    @property
    def epoch_ended(self) -> bool: ...

    def save(self, directory: Path) -> dict[str, Any]: ...

    def load(self, directory: Path, recorded: dict[str, Any]) -> None: ...


class TrainingWindows(Protocol):
    """A run's training windows, from token files or a stream: their shape, a description for the plan, the fixed
    windows that measure the training loss, and the micro-batches the Accelerate loop trains on.
    `windows_per_epoch` is None for a stream, which has no length (its epoch is the run)."""

    context_length: int
    stride: int

    @property
    def windows_per_epoch(self) -> int | None: ...

    def describe(self) -> str: ...

    def evaluation_windows(self, count: int) -> Dataset: ...

    def training_batches(self, accelerator: Any, batch_size: int, micro_batches_per_epoch: int) -> TrainingBatches: ...


class EpochBatches:
    """Micro-batches of token windows, epoch after epoch, each epoch shuffled by seed + epoch (Accelerate's seedable
    sampler): the same order on every process and after a resume, each process drawing its share. An epoch ends
    after `micro_batches_per_epoch` (the micro-batches of an incomplete accumulation are left out)."""

    def __init__(self, windows: Dataset, accelerator: Any, batch_size: int, micro_batches_per_epoch: int):
        # Its own generator: creating an iterator then draws nothing from the global one, which the dropout masks
        # use, so a resumed run sees the masks the uninterrupted run saw.
        loader = DataLoader(windows, batch_size=batch_size, shuffle=True, drop_last=True, generator=torch.Generator())
        self.loader = accelerator.prepare(loader)
        self.accelerator = accelerator
        self.per_epoch = micro_batches_per_epoch
        self.epoch, self.drawn = 0, 0

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            self.loader.set_epoch(self.epoch)
            # A resumed epoch skips the micro-batches it had drawn.
            batches = self.accelerator.skip_first_batches(self.loader, self.drawn) if self.drawn else self.loader
            for batch in batches:
                self.drawn += 1
                yield batch
                if self.epoch_ended:
                    break
            self.epoch, self.drawn = self.epoch + 1, 0

    @property
    def epoch_ended(self) -> bool:
        return self.drawn >= self.per_epoch

    def save(self, directory: Path) -> dict[str, Any]:
        """The position is all the state (the shuffle follows from the seed): nothing to write. A finished epoch
        resumes at the start of the next."""
        if self.epoch_ended:
            return {"epoch": self.epoch + 1, "micro_batches_in_epoch": 0}
        return {"epoch": self.epoch, "micro_batches_in_epoch": self.drawn}

    def load(self, directory: Path, recorded: dict[str, Any]) -> None:
        self.epoch, self.drawn = recorded["epoch"], recorded["micro_batches_in_epoch"]


def evenly_spaced(length: int, count: int) -> list[int]:
    """`count` indices spread over range(length) (all of them when count >= length)."""
    if count >= length:
        return list(range(length))
    return [int(i * length / count) for i in range(count)]


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

    @property
    def windows_per_epoch(self) -> int:
        return len(self)

    def describe(self) -> str:
        return f"{self.num_tokens:,} tokens -> {len(self):,} windows"

    def evaluation_windows(self, count: int) -> Dataset:
        """A fixed spread of `count` windows, the training loss's every evaluation."""
        return Subset(self, evenly_spaced(len(self), count))

    def training_batches(self, accelerator: Any, batch_size: int, micro_batches_per_epoch: int) -> EpochBatches:
        return EpochBatches(self, accelerator, batch_size, micro_batches_per_epoch)

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
    positions mark packed sequences: attention stays inside each document (`document_mask`), as TRL's
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
            f"(which needs {windows.context_length + 1}); add text, lower {field('context_length')} or change "
            f"{field('train_ratio')}"
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
