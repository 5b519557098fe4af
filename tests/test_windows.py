"""train.windows: the book's windows and loaders over a token stream, and windows that reach loader workers uncopied."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from conftest import tiktoken_gpt2

from train import corpus as C
from train import windows as W


@pytest.mark.parametrize("tokenizer_kind", ["transformers", "tiktoken"])
def test_create_dataloader_builds_the_books_loaders(verdict_text, gpt2_bpe_dir, monkeypatch, tokenizer_kind):
    """The book's settings (the-verdict.txt, GPT-2, ratio 0.9, context 256, stride 256, batch 2) give its batches."""
    from llms_from_scratch import ch02

    from common.tokenizer import load_tokenizer

    encoding = tiktoken_gpt2(gpt2_bpe_dir)
    monkeypatch.setattr(ch02.tiktoken, "get_encoding", lambda name: encoding)
    tokenizer = load_tokenizer(gpt2_bpe_dir) if tokenizer_kind == "transformers" else encoding
    split_idx = int(0.90 * len(verdict_text))
    train_text, val_text = verdict_text[:split_idx], verdict_text[split_idx:]

    def batches(create, **extra):
        torch.manual_seed(123)  # as the book does before building its loaders
        train = create(train_text, batch_size=2, max_length=256, stride=256, drop_last=True, shuffle=True, **extra)
        val = create(val_text, batch_size=2, max_length=256, stride=256, drop_last=False, shuffle=False, **extra)
        return list(train), list(val)

    book_train, book_val = batches(ch02.create_dataloader_v1)
    our_train, our_val = batches(W.create_dataloader, tokenizer=tokenizer)
    assert (len(our_train), len(our_val)) == (len(book_train), len(book_val)) == (9, 1)
    for ours, theirs in zip(our_train + our_val, book_train + book_val):
        assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])
        assert ours[0].dtype == torch.long


def test_windows_follow_the_books_range_and_shift():
    """Window i = tokens [i*stride, i*stride + L + 1); count = len(range(0, N - L, stride))."""
    windows = W.TokenWindows(np.arange(25, dtype=np.uint16), context_length=4, stride=3)
    starts = list(range(0, 25 - 4, 3))
    assert windows.num_tokens == 25 and len(windows) == len(starts)
    for index, start in enumerate(starts):
        inputs, targets = windows[index]
        assert inputs.dtype == targets.dtype == torch.int64
        assert inputs.tolist() == list(range(start, start + 4))
        assert targets.tolist() == list(range(start + 1, start + 5))
    with pytest.raises(IndexError):
        windows[len(windows)]


def test_too_little_text_for_one_window_gives_the_token_counts(small_tokenizer):
    with pytest.raises(C.DataError, match=r"has \d+ tokens, too few for one window of 256 tokens \(which needs 257\)"):
        W.windows_from_text("A short text.", small_tokenizer, context_length=256, stride=256)


def test_windows_travel_to_dataloader_workers_without_a_copy_of_the_stream(tmp_path):
    tokens = np.arange(5000, dtype=np.uint16)
    tokens.tofile(tmp_path / "train.bin")
    windows = W.TokenWindows(np.memmap(tmp_path / "train.bin", dtype=np.uint16, mode="r"), 16, 16)
    pickled = pickle.dumps(windows)
    assert len(pickled) < 1000  # the file name, not the 10 KB stream
    again = pickle.loads(pickled)
    assert isinstance(again.tokens, np.memmap) and len(again) == len(windows)
    assert torch.equal(again[7][1], windows[7][1])
    loader = torch.utils.data.DataLoader(windows, batch_size=8, num_workers=2)
    assert torch.equal(torch.cat([inputs for inputs, _ in loader]), torch.stack([windows[i][0] for i in range(312)]))
