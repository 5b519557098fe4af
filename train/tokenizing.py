"""Text pieces -> token arrays, in this process or in workers: the step of data preparation that costs the CPU.

GPT-2's pre-tokenisation never joins the characters on the two sides of a newline that sits between two non-space
characters (the newline is a token of its own), so text cut just after such a newline tokenises, piece by piece,
into exactly the tokens of the whole (`safe_cut`, `safe_pieces`). That is what lets a corpus of any size be read,
split and tokenised in bounded pieces, in parallel, with the token IDs of the whole text.

Standard library, numpy and tokenizers only: a worker started with multiprocessing's "spawn" imports this module
alone, so it starts in a fraction of a second and holds tens of megabytes, not the hundreds that torch, transformers
and datasets would cost each one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import numpy as np
from tokenizers import Tokenizer

EOS_TOKEN = "<|endoftext|>"  # the document separator of every tokenizer a run uses
# Text per call to the tokenizer: small enough that its working memory stays in the tens of megabytes (one call on
# 9 MB of text takes over 1 GB), large enough that the per-call overhead vanishes.
SUB_PIECE_CHARS = 64 << 10


def safe_cut(text: str, target: int) -> int | None:
    """The position just after the last "\\n" at or before `target` whose neighbours are both non-space characters,
    or None when there is none."""
    position = text.rfind("\n", 0, target + 1)
    while position > 0:
        if position + 1 < len(text) and not text[position - 1].isspace() and not text[position + 1].isspace():
            return position + 1
        position = text.rfind("\n", 0, position)
    return None


def _next_safe_cut(text: str, start: int) -> int | None:
    """The first safe cut after `start` (for a stretch with none before the target: one very long line)."""
    position = text.find("\n", start)
    while 0 < position < len(text) - 1:
        if not text[position - 1].isspace() and not text[position + 1].isspace():
            return position + 1
        position = text.find("\n", position + 1)
    return None


def safe_pieces(text: str, size: int = SUB_PIECE_CHARS) -> Iterator[str]:
    """`text` cut at safe places into pieces of about `size` characters; their tokens, concatenated, are the tokens
    of `text`. A stretch with no safe place stays whole."""
    while len(text) > size:
        cut = safe_cut(text, size) or _next_safe_cut(text, size)
        if cut is None:
            break
        yield text[:cut]
        text = text[cut:]
    if text:
        yield text


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 while every ID fits (a vocabulary of up to 65,536 tokens, GPT-2's included), else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


class PieceTokenizer:
    """Tokenises tasks of text pieces into one token array each, with `<|endoftext|>` where a piece asks for it.

    Built from the tokenizer's serialised form (`backend_tokenizer.to_str()`), so it travels to worker processes as
    a string. Encodes as transformers' fast tokenizers do with `add_special_tokens=False`, without their Python
    layer; truncation and padding are off whatever the serialised tokenizer says.
    """

    def __init__(self, tokenizer_json: str, eos_id: int, dtype: str):
        self.tokenizer = Tokenizer.from_str(tokenizer_json)
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.eos_id = eos_id
        self.dtype = np.dtype(dtype)

    def __call__(self, task: Sequence[tuple[str, bool]]) -> np.ndarray:
        """task: (text, whether `<|endoftext|>` comes before it) pairs -> their tokens, in order, [tokens]."""
        texts: list[str] = []
        eos_before: list[bool] = []
        for text, eos in task:
            for index, piece in enumerate(safe_pieces(text)):
                texts.append(piece)
                eos_before.append(eos and index == 0)
            if not text and eos:  # an empty document still gets its separator
                texts.append("")
                eos_before.append(True)
        arrays = []
        for encoding, eos in zip(self.tokenizer.encode_batch_fast(texts, add_special_tokens=False), eos_before):
            if eos:
                arrays.append(np.array([self.eos_id], dtype=np.int64))
            arrays.append(np.array(encoding.ids, dtype=np.int64))
        tokens = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)
        if tokens.size and tokens.max() > np.iinfo(self.dtype).max:
            raise ValueError(f"token ID {tokens.max()} does not fit {self.dtype}")
        return tokens.astype(self.dtype)


_worker: PieceTokenizer | None = None


def start_worker(tokenizer_json: str, eos_id: int, dtype: str) -> None:
    """A worker process's initializer: builds its PieceTokenizer. The workers already run in parallel, so the
    tokenizer's own threads would only compete with them."""
    global _worker
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _worker = PieceTokenizer(tokenizer_json, eos_id, dtype)


def tokenize_in_worker(task: Sequence[tuple[str, bool]]) -> np.ndarray:
    """What a worker runs for each task (see `start_worker`)."""
    return _worker(task)
