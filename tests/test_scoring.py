"""use.scoring and gptscratch-eval on text: sliding-window loss, perplexity and bits per byte, by brute force."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from cli_helpers import run_cli
from conftest import PARAGRAPH, TEXT, byte_level_bpe, tiny_model_for

import use.scoring
from common.errors import InputError
from common.model_dir import load_model_directory
from use.scoring import check_text_file, evaluate_text, score_token_ids, sliding_windows, text_token_ids


@pytest.mark.parametrize("tokens, context, stride", [(2, 4, 4), (10, 4, 4), (11, 4, 4), (50, 8, 3), (37, 16, 1)])
def test_sliding_windows_score_each_token_once_with_enough_history(tokens, context, stride):
    scored = []
    for start, end, count in sliding_windows(tokens, context, stride):
        assert end - start <= context and start % stride == 0
        positions = range(end + 1 - count, end + 1)  # target positions (the input at position p - 1 predicts p)
        for position in positions:
            assert position - start >= min(position, context - stride + 1)  # history kept
        scored += positions
    assert scored == list(range(1, tokens))


def brute_force_nats(model, ids: list[int], context: int, stride: int) -> float:
    """Scores each token alone: one forward pass over exactly its history, which starts at the window that the
    closed form below assigns (window k starts at k * stride and scores targets up to k * stride + context)."""
    total = 0.0
    for position in range(1, len(ids)):
        start = 0 if position <= context else math.ceil((position - context) / stride) * stride
        logits = model(torch.tensor([ids[start:position]])).logits[0, -1]
        total -= torch.log_softmax(logits.double(), dim=-1)[ids[position]].item()
    return total


@pytest.mark.parametrize("stride", [16, 7, 1])
def test_sliding_window_loss_equals_brute_force(tiny_model, stride):
    ids = torch.randint(0, 97, (75,), generator=torch.Generator().manual_seed(3)).tolist()
    nats, tokens = score_token_ids(tiny_model, ids, context_length=16, stride=stride, batch_size=3)
    assert tokens == 74
    assert nats == pytest.approx(brute_force_nats(tiny_model, ids, 16, stride), rel=1e-5)


def test_stride_equal_to_context_equals_the_books_calc_loss_loader(tiny_model):
    """The training loop's validation loss is the book's calc_loss_loader over GPTDatasetV1's windows."""
    from llms_from_scratch.ch02 import GPTDatasetV1
    from llms_from_scratch.ch05 import calc_loss_loader

    class FixedIds:  # GPTDatasetV1 tokenizes text itself; hand it our stream
        def encode(self, text, allowed_special=None):
            return ids

    context = 16
    ids = torch.randint(0, 97, (6 * context + 1,), generator=torch.Generator().manual_seed(4)).tolist()
    dataset = GPTDatasetV1("", FixedIds(), max_length=context, stride=context)
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, shuffle=False, drop_last=False)
    with torch.no_grad():
        book_loss = calc_loss_loader(loader, lambda inputs: tiny_model(inputs).logits, "cpu")
    nats, tokens = score_token_ids(tiny_model, ids, context_length=context, stride=context)
    assert tokens == len(dataset) * context
    assert nats / tokens == pytest.approx(book_loss, rel=1e-6)


def test_evaluate_text_reports_loss_perplexity_and_bits_per_byte():
    tokenizer = byte_level_bpe(TEXT, vocab_size=300)
    tiny_model = tiny_model_for(tokenizer)
    texts = [PARAGRAPH, "A second, shorter text."]
    result = evaluate_text(tiny_model, tokenizer, texts, context_length=16, stride=8)
    assert set(result) == {"loss", "perplexity", "bits_per_byte", "tokens", "bytes"}
    # every token of every text is scored: the leading <|endoftext|> predicts the first one
    assert result["tokens"] == sum(len(tokenizer.encode(text)) for text in texts)
    assert result["bytes"] == sum(len(text.encode("utf-8")) for text in texts) > len("".join(texts))
    nats = sum(brute_force_nats(tiny_model, text_token_ids(tokenizer, text), 16, 8) for text in texts)
    assert result["loss"] == pytest.approx(nats / result["tokens"], rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]))
    assert result["bits_per_byte"] == pytest.approx(nats / math.log(2) / result["bytes"], rel=1e-5)


def test_bits_per_byte_do_not_depend_on_the_tokenizer():
    """A model that predicts uniformly spends log2(vocab) bits per token, so its bits per byte follow from how many
    tokens each tokenizer needs; with a bytes-only tokenizer (one token per byte) bits per token are bits per byte."""
    merged = byte_level_bpe(TEXT, vocab_size=400)
    bytes_only = byte_level_bpe(TEXT, vocab_size=257)
    results = {}
    for name, tokenizer in (("merged", merged), ("bytes", bytes_only)):
        model = tiny_model_for(tokenizer, context_length=64)
        torch.nn.init.zeros_(model.out_head.weight)  # uniform next-token distribution
        results[name] = evaluate_text(model, tokenizer, [TEXT], stride=32)
        vocab, tokens, size = len(tokenizer), results[name]["tokens"], len(TEXT.encode("utf-8"))
        assert results[name]["bytes"] == size
        assert results[name]["loss"] == pytest.approx(math.log(vocab))
        assert results[name]["bits_per_byte"] == pytest.approx(tokens * math.log2(vocab) / size)
    assert results["bytes"]["tokens"] == len(TEXT.encode("utf-8"))
    assert results["bytes"]["bits_per_byte"] == pytest.approx(results["bytes"]["loss"] / math.log(2))
    assert results["merged"]["tokens"] < results["bytes"]["tokens"]


@pytest.mark.slow
def test_eval_cli_prints_one_json_object(model_dir, tmp_path):
    data = tmp_path / "text.txt"
    data.write_text(TEXT, encoding="utf-8")
    result = run_cli(
        "-m",
        "use.evaluate",
        "--model",
        str(model_dir),
        "--data",
        str(data),
        "--stride",
        "8",
        "--batch-size",
        "2",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    model, tokenizer = load_model_directory(model_dir)
    expected = evaluate_text(model, tokenizer, [TEXT], stride=8)
    assert printed.keys() == expected.keys()
    assert printed == pytest.approx(expected, rel=1e-5)


def test_eval_scores_files_read_in_pieces_as_the_whole_texts(tmp_path, monkeypatch):
    """gptscratch-eval reads each file in pieces and scores windows as their tokens arrive (memory holds a piece and
    a batch): the figures of each whole text tokenised at once and scored in one stream, here with pieces
    (paragraphs) shorter than a window."""
    import train.corpus

    tokenizer = byte_level_bpe(TEXT, vocab_size=300)
    model = tiny_model_for(tokenizer, context_length=128)
    texts = [PARAGRAPH * 12, "A second, shorter text."]
    paths = []
    for index, text in enumerate(texts):
        paths.append(tmp_path / f"{index}.txt")
        paths[-1].write_text(text, encoding="utf-8")
    monkeypatch.setattr(train.corpus, "READ_BLOCK_BYTES", 700)
    streamed = use.scoring.evaluate_files(model, tokenizer, paths, context_length=128, stride=48, batch_size=3)
    nats = tokens = 0
    for text in texts:
        ids = [tokenizer.eos_token_id] + tokenizer.encode(text, add_special_tokens=False)
        text_nats, text_tokens = score_token_ids(model, ids, context_length=128, stride=48, batch_size=3)
        nats, tokens = nats + text_nats, tokens + text_tokens
    assert streamed["tokens"] == tokens == sum(len(tokenizer.encode(text)) for text in texts)
    assert streamed["bytes"] == sum(len(text.encode("utf-8")) for text in texts)
    assert streamed["loss"] == pytest.approx(nats / tokens, rel=1e-6)


def test_a_text_with_no_token_to_score_is_a_usage_error(tokenizer):
    model = tiny_model_for(tokenizer)
    with pytest.raises(InputError, match="the texts hold no token to score"):
        evaluate_text(model, tokenizer, [""])


def test_data_files_that_are_not_text_are_refused(tmp_path):
    (tmp_path / "binary.bin").write_bytes(b"ok\xff\xfe")
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(InputError, match=r"binary.bin is not UTF-8 text \(byte offset 2\)"):
        check_text_file(tmp_path / "binary.bin")
    with pytest.raises(InputError, match="empty.txt is empty"):
        check_text_file(tmp_path / "empty.txt")
    with pytest.raises(InputError, match="does not exist"):
        check_text_file(tmp_path / "absent.txt")


def test_eval_on_the_training_windows_equals_the_training_loops_validation_loss(tiny_model):
    """Issue 5's contract: on the same windows, gptscratch-eval's scoring is the loop's validation loss."""
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    from train.loop import evaluate_loss
    from train.windows import TokenWindows

    context, windows = 16, 7
    ids = torch.randint(0, 97, (windows * context + 1,), generator=torch.Generator().manual_seed(9)).tolist()
    dataset = TokenWindows(np.array(ids, dtype=np.uint16), context, context)
    assert len(dataset) == windows
    loader = DataLoader(dataset, batch_size=3, shuffle=False, drop_last=False)  # an uneven last batch
    loop_loss = evaluate_loss(tiny_model, loader, Accelerator(cpu=True))
    nats, tokens = score_token_ids(tiny_model, ids, context_length=context, stride=context, batch_size=2)
    assert tokens == windows * context
    assert nats / tokens == pytest.approx(loop_loss, rel=1e-5)
