"""lm-eval on the model: HFLM's loglikelihood and generate_until against the model's own logits and greedy decoding,
and `gptscratch-eval --tasks` on small local tasks (offline), with its one-line refusals. Tiny models and an offline
byte-level tokenizer; skipped where lm-eval is not installed."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from cli_helpers import assert_one_line_error, run_main
from conftest import tiny_config
from test_model import byte_level_tokenizer

import train.evaluate
from convert.model_dir import save_model_directory
from modeling_gptscratch import GPTScratchForCausalLM

pytest.importorskip("lm_eval")
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402

CONTEXT = 64  # lm-eval reads the model's context (max_position_embeddings) as its max_length

LONG_CONTEXT = " ".join(["the cat sat on the mat"] * 14)  # more tokens than the model's context: lm-eval truncates


@pytest.fixture(scope="module")
def tokenizer():
    return byte_level_tokenizer(vocab_size=300)


@pytest.fixture(scope="module")
def model(tokenizer) -> GPTScratchForCausalLM:
    torch.manual_seed(0)
    config = tiny_config(vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, context_length=CONTEXT)
    return GPTScratchForCausalLM(config).eval()


# --- HFLM on the model object ---------------------------------------------------------------------------------------


def lm_for(model, tokenizer, batch_size: int) -> HFLM:
    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)


@torch.no_grad()
def manual_loglikelihood(model, tokenizer, context: str, continuation: str) -> tuple[float, bool]:
    """Sum of log-softmax of the continuation's tokens given the context, and whether each is the argmax: from the
    model's logits on the unpadded sequence. An empty context is the end-of-text token (lm-eval's prefix token when the
    tokenizer has no BOS); a sequence past the context keeps its last CONTEXT + 1 tokens, as lm-eval cuts it."""
    context_ids = tokenizer.encode(context) if context else [tokenizer.eos_token_id]
    continuation_ids = tokenizer.encode(continuation)
    ids = (context_ids + continuation_ids)[-(CONTEXT + 1) :]
    log_probs = model(torch.tensor([ids[:-1]])).logits[0].log_softmax(-1)[-len(continuation_ids) :]
    targets = torch.tensor(continuation_ids)
    return log_probs.gather(1, targets[:, None]).sum().item(), bool((log_probs.argmax(-1) == targets).all())


def greedy_tokens(model, ids: list[int], new_tokens: int) -> list[int]:
    return model.generate(torch.tensor([ids]), max_new_tokens=new_tokens, temperature=0)[0, len(ids) :].tolist()


@pytest.mark.parametrize("batch_size", [1, 3])
def test_loglikelihood_is_the_models_log_probability_of_the_continuation(model, tokenizer, batch_size):
    # A greedy continuation (is_greedy must come out True for it): the model's own next tokens after "the cat".
    context = "the cat"
    greedy_text = tokenizer.decode(greedy_tokens(model, tokenizer.encode(context), 3))
    pairs = [
        (context, greedy_text),
        ("the cat", " sat on the mat"),
        ("on", " the"),
        ("the mat the cat sat on the mat and the", " cat"),
        ("the cat sat", " on"),  # one-token continuations of one context: lm-eval scores them in one forward pass
        ("the cat sat", " the"),
        ("the cat sat", " mat"),
        ("", "the mat"),  # empty context: the end-of-text token stands in
        (LONG_CONTEXT, " the cat"),  # truncated on the left to the model's 64 positions
    ]
    for context, continuation in pairs:
        if context:  # lm-eval splits the joint encoding at the context's length; ours encodes each part
            assert tokenizer.encode(context + continuation) == tokenizer.encode(context) + tokenizer.encode(continuation)
    requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
    results = lm_for(model, tokenizer, batch_size).loglikelihood(requests, disable_tqdm=True)
    expected = [manual_loglikelihood(model, tokenizer, *pair) for pair in pairs]
    assert len(tokenizer.encode(LONG_CONTEXT)) > CONTEXT
    assert expected[0][1] and not all(greedy for _, greedy in expected)  # both flags occur
    for pair, (log_likelihood, is_greedy), (want_log_likelihood, want_greedy) in zip(pairs, results, expected):
        assert log_likelihood == pytest.approx(want_log_likelihood, rel=1e-5, abs=1e-5), pair
        assert is_greedy == want_greedy, pair


def cut_at(text: str, until: list[str]) -> str:
    """lm-eval's post-processing: the text before the first occurrence of each stop string in turn."""
    for stop in until:
        text = text.split(stop)[0]
    return text


@pytest.mark.parametrize("batch_size", [1, 3])
def test_generate_until_is_the_models_greedy_decoding(model, tokenizer, batch_size):
    new_tokens = 12
    max_context = CONTEXT - new_tokens  # lm-eval keeps room for the new tokens and cuts the prompt on the left
    contexts = ["the cat", "on the mat the cat sat", "the", "the mat sat on", LONG_CONTEXT]
    greedy = {
        context: tokenizer.decode(greedy_tokens(model, tokenizer.encode(context)[-max_context:], new_tokens))
        for context in contexts
    }
    # A stop string that occurs in the first generation, so that cutting (and stopping early) is exercised.
    stop = greedy[contexts[0]][len(greedy[contexts[0]]) // 2 :][:2]
    assert stop.strip()
    plain = {"until": ["\n\n"], "max_gen_toks": new_tokens, "do_sample": False}
    stopping = {"until": [stop, "\n\n"], "max_gen_toks": new_tokens, "do_sample": False}
    # Requests with equal generation arguments share batches (padded on the left); the two kinds never mix.
    arguments = [(context, plain) for context in contexts] + [(context, stopping) for context in contexts[:3]]
    requests = [Instance("generate_until", {}, args, i) for i, args in enumerate(arguments)]
    results = lm_for(model, tokenizer, batch_size).generate_until(requests, disable_tqdm=True)
    eos = tokenizer.eos_token
    expected = [cut_at(greedy[context], kwargs["until"] + [eos]) for context, kwargs in arguments]
    assert results == expected
    assert len(results[len(contexts)]) < len(greedy[contexts[0]])  # the stop string cut it
