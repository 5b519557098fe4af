"""train.loss: the training forward on SDPA's fused causal path, document masking, the kernels a run calls."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from train_helpers import VOCAB, common

from modeling_gptscratch import GPTScratchConfig, GPTScratchForCausalLM
from train import windows as W
from train.loss import window_logits
from train.model_config import build_config
from train.optimization import build_optimizer
from train.options import ModelOptions, OptimisationOptions


def test_training_attends_on_the_causal_path_without_mask_or_dropout_and_steps_fused_adamw(monkeypatch):
    """What gptscratch-train builds by default: no dropout, so each training forward hands SDPA no mask,
    is_causal=True and dropout_p=0, the call CUDA's flash kernel takes (and CPU's fused one); and AdamW is torch's
    fused kernel, for Muon's companion too. --dropout, or --config drop_rate, sets the book's dropout, still off the
    attention weights unless --attention-dropout asks."""
    options = ModelOptions(n_layers=2, emb_dim=32, n_heads=2, config={"context_length": 32})
    config = build_config(options, vocab_size=VOCAB, eos_token_id=0)
    assert (config.drop_rate, config.attention_dropout) == (0.0, 0.0)
    for asked in (ModelOptions(dropout=0.1), ModelOptions(config={"drop_rate": 0.1})):
        book = build_config(asked, vocab_size=VOCAB, eos_token_id=0)
        assert (book.drop_rate, book.attention_dropout) == (0.1, 0.0)
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append({name: kwargs[name] for name in ("attn_mask", "is_causal", "dropout_p")})
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    model = GPTScratchForCausalLM(config).train()
    window_logits(model, torch.randint(0, VOCAB, (2, 32)), None)
    assert calls == [{"attn_mask": None, "is_causal": True, "dropout_p": 0.0}] * 2

    assert build_optimizer(model, OptimisationOptions()).adamw.defaults["fused"] is True  # Muon's companion, by default
    adamw = build_optimizer(model, OptimisationOptions(optimizer="adamw"))
    assert adamw.defaults["fused"] is True

    asked = build_config(ModelOptions(attention_dropout=0.1), vocab_size=VOCAB, eos_token_id=0)
    assert asked.attention_dropout_rate == 0.1


@pytest.mark.slow
def test_a_runs_training_steps_call_the_fused_attention_and_adamw_kernels(corpus, cache, tmp_path):
    """benchmarks/bench_kernels.py's record of gptscratch-train's own steps (the Accelerate loop, autocast and all):
    per step one fused attention call per layer, forward and backward (CPU's flash kernel; a GPU's is in the README),
    and one fused AdamW call per parameter group (with and without weight decay)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_kernels.py"
    spec = importlib.util.spec_from_file_location("bench_kernels", path)
    bench_kernels = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_kernels)
    report = bench_kernels.kernel_report(bench_kernels.record_training_steps(common(corpus, cache), tmp_path / "run"))
    layers = 2  # TINY_MODEL's
    assert report["attention"] == {
        "_scaled_dot_product_flash_attention_for_cpu": layers,
        "_scaled_dot_product_flash_attention_for_cpu_backward": layers,
    }
    assert report["optimizer"]["_fused_adamw_"] == 2


def test_document_positions_restart_at_each_separator_and_keep_attention_inside_documents():
    from train.loss import window_logits

    eos = 7
    window = torch.tensor([[5, 6, eos, 8, 9, 3, eos, 4], [eos, 1, 2, 3, 4, 5, 6, 8]])
    assert W.document_position_ids(window, eos).tolist() == [[0, 1, 0, 1, 2, 3, 0, 1], [0, 1, 2, 3, 4, 5, 6, 7]]
    torch.manual_seed(0)
    model = GPTScratchForCausalLM(
        GPTScratchConfig(vocab_size=10, context_length=8, emb_dim=16, n_heads=2, n_layers=2, drop_rate=0.0)
    ).eval()
    with torch.no_grad():
        logits = window_logits(model, window, eos)
        for start, end in ((0, 2), (2, 6), (6, 8)):  # each document alone, its positions counted from 0
            torch.testing.assert_close(
                logits[0, start:end], model(window[:1, start:end]).logits[0], rtol=1e-5, atol=1e-6
            )
        torch.testing.assert_close(logits[1], model(window[1:]).logits[0], rtol=1e-5, atol=1e-6)  # one document
        assert not torch.allclose(window_logits(model, window, None)[0, 2:6], logits[0, 2:6], atol=1e-3)
