"""train.plan: the plan a dry run prints, the model FLOPs per token, and the measured matmul peak."""

from __future__ import annotations

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode
from train_helpers import BATCH, EMB, LAYERS, VOCAB, WINDOW, common, train_cli

from modeling_gptscratch import GPTScratchConfig, GPTScratchForCausalLM
from train.loss import lm_loss, window_logits
from train.plan import measure_matmul_flops, training_flops_per_token


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, corpus, cache, capsys):
    output = tmp_path / "run"
    assert train_cli([*common(corpus, cache), "--output-dir", str(output), "--dry-run", "--max-steps", "7"]) == 0
    printed = capsys.readouterr().out
    config = GPTScratchConfig.from_preset("tiny", n_layers=2, emb_dim=32, n_heads=2, context_length=32, vocab_size=300)
    total = sum(p.numel() for p in GPTScratchForCausalLM(config).parameters())
    without_embeddings = total - 300 * 32 - 32 * 32
    assert f"{total:,}" in printed and f"{without_embeddings:,} without embeddings" in printed
    assert f"Chinchilla-optimal for {total / 1e6:.2f} M parameters (20 tokens/parameter) is {20 * total:,}" in printed
    assert "this run sees 896;" in printed  # 7 steps x 4 windows x 32 tokens
    for expected in ("weights", "gradients", "activations", "steps/epoch", "7 steps (max steps)"):
        assert expected in printed
    # Muon's one fp32 momentum for the blocks' matrices (12 x 32^2 each), AdamW's two moments for the rest.
    matrices = 2 * 12 * 32 * 32
    assert f"optimizer states {(8 * (total - matrices) + 4 * matrices) / 2**20:.1f} MiB" in printed
    assert not output.exists()


def test_model_flops_per_token_are_what_torch_counts_in_a_training_step():
    """The MFU numerator against torch's FlopCounterMode over one forward and backward (SDPA's math kernel, whose
    matrix products the counter sees): the same count, so the formula leaves out no matrix product."""
    config = GPTScratchConfig(
        vocab_size=VOCAB, context_length=WINDOW, emb_dim=EMB, n_heads=2, n_layers=LAYERS, drop_rate=0.0, qkv_bias=True
    )
    model = GPTScratchForCausalLM(config)
    ids = torch.randint(0, VOCAB, (BATCH, WINDOW + 1), generator=torch.Generator().manual_seed(0))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        lm_loss(window_logits(model, ids[:, :-1], None), ids[:, 1:]).backward()
    assert counter.get_total_flops() == training_flops_per_token(config, WINDOW) * BATCH * WINDOW


def test_measuring_the_matmul_peak_leaves_the_random_state_of_the_run_alone():
    """The measurement runs after nothing and before the seed, yet how many matrices it draws depends on the
    machine's speed: drawn from the global generator, they would change a run's dropout masks from one run to the
    next."""
    state = torch.random.get_rng_state()
    assert measure_matmul_flops(torch.device("cpu"), torch.float32, seconds=0.01) > 0
    assert torch.equal(torch.random.get_rng_state(), state)
