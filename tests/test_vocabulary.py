"""train.vocabulary: the byte-level BPE fitted on the training text, its sample, its minimum frequency, its saving."""

from __future__ import annotations

import re

from train_helpers import train_cli
from transformers import AutoTokenizer

from train import vocabulary as V


def test_trained_tokenizer_is_saved_for_autotokenizer(tmp_path, small_tokenizer):
    assert len(small_tokenizer) == 300
    assert small_tokenizer.eos_token == "<|endoftext|>"
    sample = "def f(x):\n    return x<|endoftext|>The for statement"
    ids = small_tokenizer.encode(sample, add_special_tokens=False)
    assert ids.count(small_tokenizer.eos_token_id) == 1  # the special token is one token, not its characters
    small_tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded.encode(sample, add_special_tokens=False) == ids
    assert reloaded.decode(ids) == sample


def test_the_fitted_tokenizer_merges_only_pairs_seen_min_frequency_times(tmp_path):
    """At --min-frequency 2 a pair the text holds once stays unmerged, so a small text gets fewer tokens than
    --vocab-size; at 1 every pair may merge. The cache keeps the two apart."""
    text = "the cat the cat the cat zq"  # " cat": each of its pairs 3 times; " zq": each of its pairs once
    fit = lambda min_frequency: V.fit_tokenizer(  # noqa: E731
        lambda: ([text], len(text)), 400, min_frequency, {"corpus": "test"}, tmp_path, progress=False
    )
    pairs_twice, every_pair = fit(2), fit(1)
    assert len(pairs_twice.encode(" cat")) == len(every_pair.encode(" cat")) == 1
    assert len(pairs_twice.encode(" zq")) == 3 and len(every_pair.encode(" zq")) == 1
    assert len(pairs_twice) < len(every_pair) < 400
    assert len(list((tmp_path / "gptscratch-tokenizers").iterdir())) == 2


def test_the_tokenizer_of_a_large_corpus_is_fitted_on_an_even_sample():
    """Past the cap, every text gives the same leading share, so the sample spans the corpus and holds about the
    cap; below it, the texts go in whole."""
    texts = ["a" * 1000, "b" * 10, "c" * 4000]
    assert list(V.tokenizer_sample(texts, 5010, limit=10_000)) == texts
    sample = list(V.tokenizer_sample(texts, 5010, limit=501))
    assert sample == ["a" * 100, "b", "c" * 400]
    assert 501 <= sum(map(len, sample)) <= 501 + len(texts)


def test_min_frequency_decides_how_many_tokens_a_small_corpus_gets(tmp_path, corpus, cache, capsys):
    """On 36 KB of text, merging every pair (--min-frequency 1) gives more tokens than the default, pairs seen
    twice; both stop short of --vocab-size."""
    sizes = []
    for flags in ([], ["--min-frequency", "1"]):
        assert (
            train_cli(
                [
                    "--data",
                    str(corpus),
                    "--cache-dir",
                    str(cache),
                    "--output-dir",
                    str(tmp_path / "run"),
                    "--vocab-size",
                    "8192",
                    "--dry-run",
                    *flags,
                ]
            )
            == 0
        )
        printed = capsys.readouterr().out
        sizes.append(int(re.search(r"BPE fitted on the training split \((\d+) tokens\)", printed).group(1)))
    assert sizes[0] < sizes[1] < 8192
