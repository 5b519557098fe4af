"""GPT-2's tokenizer: exact GPT-2 IDs from OpenAI's files, saved directories, the offline hub error, the book's
helpers."""

from __future__ import annotations

import pytest
import torch
from conftest import tiktoken_gpt2
from transformers import AutoTokenizer

from common.tokenizer import load_tokenizer
from modeling_gptscratch import GPT2_EOS_TOKEN_ID, text_to_token_ids, token_ids_to_text

EDGE_CASES = [
    "Hello, world!",
    "  leading spaces, trailing spaces   ",
    "tabs\tand\nnew\n\nlines\r\n",
    "unicode: naïve café, 東京, emoji 🤖🚀, ümlaut Ærø",
    "first document<|endoftext|>second document",
    "<|endoftext|>",
    "numbers 12345 and 3.14159, contractions it's we'll they've",
    "",
]


def test_ids_equal_gpt2s_from_openais_files(gpt2_bpe_dir, verdict_text):
    tokenizer = load_tokenizer(gpt2_bpe_dir)
    reference = tiktoken_gpt2(gpt2_bpe_dir)
    assert len(tokenizer) == 50257 and tokenizer.eos_token_id == GPT2_EOS_TOKEN_ID
    for text in [verdict_text, *EDGE_CASES]:
        ids = tokenizer.encode(text)
        assert ids == reference.encode(text, allowed_special="all"), text[:40]
        assert tokenizer.decode(ids) == text
    assert len(tokenizer.encode(verdict_text)) == 5145  # the book's count for "The Verdict"


def test_saved_tokenizer_directory_loads_with_the_same_ids(gpt2_bpe_dir, tmp_path):
    tokenizer = load_tokenizer(gpt2_bpe_dir)
    tokenizer.save_pretrained(tmp_path)
    for reloaded in (load_tokenizer(tmp_path), AutoTokenizer.from_pretrained(tmp_path)):
        for text in EDGE_CASES:
            assert reloaded.encode(text) == tokenizer.encode(text)


def test_hub_name_offline_says_to_pass_a_directory(monkeypatch):
    import common.tokenizer

    monkeypatch.setattr(common.tokenizer, "can_reach", lambda url, timeout=5.0: False)
    with pytest.raises(OSError, match="could not load tokenizer 'gpt2-not-cached-anywhere'.*Pass a local directory"):
        load_tokenizer("gpt2-not-cached-anywhere")


def test_can_reach_is_false_at_once_for_an_unresolvable_host():
    from common.tokenizer import can_reach

    assert can_reach("https://no-such-host.invalid", timeout=2.0) is False


@pytest.mark.parametrize("source", ["./missing-tokenizer", "/no/such/dir", "runs/x/tokenizer"])
def test_a_missing_local_path_is_not_sent_to_the_hub(source):
    with pytest.raises(FileNotFoundError, match="is not a directory holding encoder.json"):
        load_tokenizer(source)


def test_the_books_helpers_round_trip(gpt2_bpe_dir):
    tokenizer = load_tokenizer(gpt2_bpe_dir)
    ids = text_to_token_ids("Every effort moves you", tokenizer)
    assert ids.shape == (1, 4) and ids.dtype == torch.long
    assert ids.tolist() == [[6109, 3626, 6100, 345]]  # the book's IDs for its chapter 5 prompt
    assert token_ids_to_text(ids, tokenizer) == "Every effort moves you"
    reference = tiktoken_gpt2(gpt2_bpe_dir)
    assert torch.equal(text_to_token_ids("a<|endoftext|>b", reference), text_to_token_ids("a<|endoftext|>b", tokenizer))
