"""Text pieces -> token arrays, in this process or in workers: the step of data preparation that costs the CPU.

GPT-2's pre-tokenisation never joins the characters on the two sides of a newline that sits between two non-space
characters (the newline is a token of its own), so text cut just after such a newline tokenises, piece by piece,
into exactly the tokens of the whole (`safe_cut`, `safe_pieces`). That is what lets a corpus of any size be read,
split and tokenised in bounded pieces, in parallel, with the token IDs of the whole text.

Two libraries encode, with the same IDs: tiktoken, made for exactly this and about five times faster, wherever the
tokenizer is a byte-level BPE with GPT-2's pre-tokenisation (GPT-2's own and every fitted one), its merges and bytes
mapped onto tiktoken's ranks (`byte_pair_ranks`); HF tokenizers for any other (`encoder_source` picks).

Standard library, numpy, tokenizers and tiktoken only: a worker started with multiprocessing's "spawn" imports this
module alone, so it starts in a fraction of a second and holds tens of megabytes, not the hundreds that torch,
transformers and datasets would cost each one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import tiktoken
from tiktoken_ext.openai_public import r50k_pat_str
from tokenizers import Tokenizer, models

EOS_TOKEN = "<|endoftext|>"  # the document separator of every tokenizer a run uses
# Text per call to HF tokenizers: small enough that its working memory stays in the tens of megabytes (one call on
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


# Byte-level BPE writes byte b as chr(b) where that is printable and not a space, the others as chr(256), chr(257), ...
# in byte order (GPT-2's `bytes_to_unicode`, as tiktoken reads GPT-2's own files).
_BYTE_OF_CHAR = {chr(b): b for b in range(256) if chr(b).isprintable() and b != ord(" ")}
_BYTE_OF_CHAR |= {chr(256 + n): b for n, b in enumerate(b for b in range(256) if b not in _BYTE_OF_CHAR.values())}


class NotByteLevelBPE(ValueError):
    """A tokenizer tiktoken cannot encode with its IDs; the message says why."""


@dataclass(frozen=True)
class BytePairRanks:
    """A byte-level BPE as tiktoken encodes it: its tokens' bytes and ranks (the 256 bytes by value, then each merge's
    result in merge order, so a rank is the merge's priority), its added tokens' ranks (after those), and the
    tokenizer's ID of each rank, `ids` [ranks]."""

    mergeable_ranks: dict[bytes, int]
    special_tokens: dict[str, int]
    ids: np.ndarray

    def encoding(self) -> tiktoken.Encoding:
        # GPT-2's pre-tokenisation as tiktoken writes it for its own GPT-2 encodings (the same splits, faster).
        return tiktoken.Encoding(
            "gptscratch", pat_str=r50k_pat_str, mergeable_ranks=self.mergeable_ranks, special_tokens=self.special_tokens
        )


def byte_pair_ranks(tokenizer_json: str) -> BytePairRanks:
    """The BytePairRanks of a serialised fast tokenizer (`backend_tokenizer.to_str()`) with which tiktoken gives
    exactly its IDs, or NotByteLevelBPE saying why there are none.

    tiktoken merges the adjacent pair whose joined bytes have the lowest rank, HF's BPE the pair listed first among
    its merges: the two agree while each merge makes a token of its own and every merged token, BPE-encoded alone,
    comes out whole. (Were tiktoken ever to join a pair that HF's merges do not list, HF alone on those bytes would
    stop at that pair too, and the token they make would not come out whole.) Those conditions are checked here, on
    the whole vocabulary; the pre-tokenisation is the same regular expression in both.
    """
    serialised = json.loads(tokenizer_json)
    model = serialised["model"]
    pre_tokenizer = serialised.get("pre_tokenizer") or {}
    if model["type"] != "BPE":
        raise NotByteLevelBPE(f"its model is {model['type']}, not a BPE")
    if model.get("dropout") or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise NotByteLevelBPE("its BPE has dropout or word-part affixes")
    if model.get("byte_fallback") or model.get("ignore_merges"):
        raise NotByteLevelBPE("its BPE falls back to bytes or takes whole words from the vocabulary")
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
    if serialised.get("normalizer") or any(pre_tokenizer.get(key) != value for key, value in byte_level.items()):
        raise NotByteLevelBPE("its normaliser or pre-tokeniser is not GPT-2's byte-level one")
    vocab, merges = model["vocab"], [tuple(merge) for merge in model["merges"]]
    if not set(_BYTE_OF_CHAR) <= vocab.keys():
        raise NotByteLevelBPE("its vocabulary lacks some of the 256 bytes")
    merged = [left + right for left, right in merges]
    if len(set(merged)) != len(merged):
        raise NotByteLevelBPE("two of its merges make the same token")
    alone = Tokenizer(models.BPE(vocab=vocab, merges=merges)).encode_batch_fast(merged, add_special_tokens=False)
    if any(len(encoding.ids) != 1 for encoding in alone):
        raise NotByteLevelBPE("a merged token does not come out whole when BPE encodes it alone")
    added = serialised["added_tokens"]
    if any(token["lstrip"] or token["rstrip"] or token["single_word"] for token in added):
        raise NotByteLevelBPE("an added token strips spaces or matches single words only")
    contents = [token["content"] for token in added]
    if any(one != other and one in other for one in contents for other in contents):
        raise NotByteLevelBPE("an added token holds another")

    def as_bytes(token: str) -> bytes:
        return bytes(_BYTE_OF_CHAR[char] for char in token)

    byte_tokens = sorted(_BYTE_OF_CHAR, key=_BYTE_OF_CHAR.get)
    mergeable = {as_bytes(token): rank for rank, token in enumerate(byte_tokens + merged)}
    special = {content: len(mergeable) + index for index, content in enumerate(contents)}
    ids = [vocab[token] for token in byte_tokens + merged] + [token["id"] for token in added]
    return BytePairRanks(mergeable, special, np.array(ids, dtype=np.int64))


def encoder_source(tokenizer_json: str) -> tuple[str | BytePairRanks, str]:
    """What a PieceTokenizer encodes a serialised fast tokenizer from: its BytePairRanks (tiktoken) where there are
    some, else the serialised form itself (HF tokenizers); and that library, in words."""
    try:
        return byte_pair_ranks(tokenizer_json), "tiktoken"
    except NotByteLevelBPE as reason:
        return tokenizer_json, f"HF tokenizers (tiktoken cannot take this tokenizer: {reason})"


class PieceTokenizer:
    """Tokenises tasks of text pieces into one token array each, with `<|endoftext|>` where a piece asks for it.

    Built from a tokenizer's BytePairRanks, encoded by tiktoken, or its serialised form
    (`backend_tokenizer.to_str()`), encoded by HF tokenizers (`encoder_source` says which); both travel to worker
    processes. Encodes as transformers' fast tokenizers do with `add_special_tokens=False` (`<|endoftext|>` written in
    the text is the end-of-text token), without their Python layer; truncation and padding are off whatever the
    serialised tokenizer says.
    """

    def __init__(self, tokenizer: str | BytePairRanks, eos_id: int, dtype: str):
        if isinstance(tokenizer, BytePairRanks):
            self.encoding, self.ids = tokenizer.encoding(), tokenizer.ids
        else:
            self.tokenizer = Tokenizer.from_str(tokenizer)
            self.tokenizer.no_truncation()
            self.tokenizer.no_padding()
            self.encoding = None
        self.eos = np.array([eos_id], dtype=np.int64)
        self.dtype = np.dtype(dtype)

    def __call__(self, task: Sequence[tuple[str, bool]]) -> np.ndarray:
        """task: (text, whether `<|endoftext|>` comes before it) pairs -> their tokens, in order, [tokens]."""
        arrays = self._by_tiktoken(task) if self.encoding is not None else self._by_tokenizers(task)
        tokens = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)
        if tokens.size and tokens.max() > np.iinfo(self.dtype).max:
            raise ValueError(f"token ID {tokens.max()} does not fit {self.dtype}")
        return tokens.astype(self.dtype)

    def _by_tiktoken(self, task: Sequence[tuple[str, bool]]) -> list[np.ndarray]:
        arrays = []
        for text, eos in task:
            if eos:
                arrays.append(self.eos)
            arrays.append(self.ids[self.encoding.encode_to_numpy(text, allowed_special="all")])
        return arrays

    def _by_tokenizers(self, task: Sequence[tuple[str, bool]]) -> list[np.ndarray]:
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
                arrays.append(self.eos)
            arrays.append(np.array(encoding.ids, dtype=np.int64))
        return arrays


_worker: PieceTokenizer | None = None


def start_worker(tokenizer: str | BytePairRanks, eos_id: int, dtype: str) -> None:
    """A worker process's initializer: builds its PieceTokenizer. The workers already run in parallel, so HF
    tokenizers' own threads would only compete with them."""
    global _worker
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _worker = PieceTokenizer(tokenizer, eos_id, dtype)


def tokenize_in_worker(task: Sequence[tuple[str, bool]]) -> np.ndarray:
    """What a worker runs for each task (see `start_worker`)."""
    return _worker(task)
