"""train.optimization: Muon with AdamW, the learning-rate schedules, their defaults, and their exact resume."""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.optim._muon as torch_muon
from train_helpers import EMB, LAYERS, LR, MIN_LR, VOCAB, WINDOW, common, read_metrics, train_cli, without_timing

from modeling_gptscratch import GPTScratchConfig, GPTScratchForCausalLM
from train.optimization import MuonWithAdamW, build_optimizer, build_scheduler, muon_parameters, newton_schulz_float32
from train.options import OptimisationOptions


def test_muon_updates_the_blocks_matrices_and_adamw_the_rest():
    torch.manual_seed(0)
    model = GPTScratchForCausalLM(
        GPTScratchConfig(
            vocab_size=VOCAB,
            context_length=WINDOW,
            emb_dim=EMB,
            n_heads=2,
            n_layers=LAYERS,
            drop_rate=0.0,
            qkv_bias=True,
        )
    )
    options = OptimisationOptions(optimizer="muon", lr=1e-2, weight_decay=0.1)
    optimizer = build_optimizer(model, options)
    assert isinstance(optimizer, MuonWithAdamW)
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    expected = {
        f"model.trf_blocks.{i}.{name}.weight"
        for i in range(LAYERS)
        for name in ("att.qkv", "att.out_proj", "ff.layers.0", "ff.layers.2")
    }
    assert {names[id(p)] for p in muon_parameters(model)} == expected
    assert {names[id(p)] for group in optimizer.muon.param_groups for p in group["params"]} == expected

    before = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
    for parameter in model.parameters():
        parameter.grad = torch.randn_like(parameter)
    gradients = {name: parameter.grad.clone() for name, parameter in model.named_parameters()}
    optimizer.step()
    assert torch_muon._zeropower_via_newtonschulz is not newton_schulz_float32  # swapped only inside the step
    for name, parameter in model.named_parameters():
        decay = 0.1 if parameter.dim() == 2 else 0.0
        shrunk = before[name] * (1 - 1e-2 * decay)  # decoupled weight decay, in both optimizers
        if name in expected:
            # Muon: an orthogonalised step, scaled to AdamW's RMS (0.2 sqrt(max(rows, cols)) x lr): Newton-Schulz
            # brings every singular value near 1 (roughly 0.5 to 1.2 with its quintic), in the direction U V^T of
            # the gradient's SVD.
            update = (shrunk - parameter.detach()) / (1e-2 * 0.2 * max(parameter.shape) ** 0.5)
            singular_values = torch.linalg.svdvals(update)
            assert 0.3 < singular_values.min() and singular_values.max() < 1.5, name
            u, _, vh = torch.linalg.svd(gradients[name], full_matrices=False)
            assert torch.nn.functional.cosine_similarity((u @ vh).flatten(), update.flatten(), dim=0) > 0.9, name
            # On a CPU the orthogonalisation is float32 (bf16 differs by about 1%): Muon's first step with
            # Nesterov momentum is a multiple of the gradient, which the normalised iteration does not see.
            defaults = optimizer.muon.defaults
            orthogonalised = newton_schulz_float32(
                gradients[name], defaults["ns_coefficients"], defaults["ns_steps"], defaults["eps"]
            )
            torch.testing.assert_close(update, orthogonalised, rtol=1e-4, atol=1e-5, msg=name)
        else:
            # AdamW's first step, by hand: m / (sqrt(v) + eps) = g / (|g| + eps).
            grad = gradients[name]
            torch.testing.assert_close(
                parameter.detach(), shrunk - 1e-2 * grad / (grad.abs() + 1e-8), rtol=1e-5, atol=1e-7, msg=name
            )


@pytest.mark.parametrize("momentum", [0.8, 0.95])
def test_muon_steps_with_the_momentum_of_muon_momentum(momentum):
    """The second step orthogonalises the Nesterov momentum of both gradients, computed here by hand."""
    torch.manual_seed(0)
    model = GPTScratchForCausalLM(
        GPTScratchConfig(vocab_size=VOCAB, context_length=WINDOW, emb_dim=EMB, n_heads=2, n_layers=1, drop_rate=0.0)
    )
    optimizer = build_optimizer(
        model, OptimisationOptions(optimizer="muon", lr=1e-2, weight_decay=0.0, muon_momentum=momentum)
    )
    weight = model.model.trf_blocks[0].ff.layers[0].weight
    gradients = [torch.randn_like(weight) for _ in range(2)]
    for gradient in gradients:
        before = weight.detach().clone()
        for parameter in model.parameters():
            parameter.grad = torch.zeros_like(parameter)
        weight.grad = gradient.clone()
        optimizer.step()
    buffer = (1 - momentum) * gradients[0]  # the buffer starts at 0 and moves 1 - momentum of the way each step
    buffer = momentum * buffer + (1 - momentum) * gradients[1]
    nesterov = (1 - momentum) * gradients[1] + momentum * buffer
    defaults = optimizer.muon.defaults
    expected = newton_schulz_float32(nesterov, defaults["ns_coefficients"], defaults["ns_steps"], defaults["eps"])
    step = 1e-2 * 0.2 * max(weight.shape) ** 0.5  # match_rms_adamw
    torch.testing.assert_close(before - weight.detach(), step * expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "flags, printed",
    [
        (
            [],
            "Muon for the blocks' weight matrices (lr 0.004, momentum 0.8), AdamW for the embeddings, norms and "
            "biases; lr 0.004 cosine to 0.0004",
        ),
        (["--optimizer", "adamw"], "optimizer   AdamW; lr 0.0015 cosine to 0.00015"),
        (["--optimizer", "adamw", "--lr", "0.01"], "optimizer   AdamW; lr 0.01 cosine to 0.001"),
    ],
)
def test_the_default_learning_rate_is_the_one_tuned_for_the_optimizer(tmp_path, corpus, cache, capsys, flags, printed):
    """Muon by default, at 4e-3 for both optimizers; AdamW alone at 1.5e-3 (README, Defaults that learn)."""
    assert train_cli([*common(corpus, cache), "--output-dir", str(tmp_path / "run"), "--dry-run", *flags]) == 0
    assert printed in capsys.readouterr().out


@pytest.mark.parametrize("shape", [(24, 80), (80, 24), (40, 40)])
def test_newton_schulz_in_float32_is_torchs_iteration(shape):
    """The float32 orthogonalisation Muon uses on CPUs is torch's own (bf16) iteration up to bf16's rounding."""
    gradient = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    coefficients = torch.optim.Muon([torch.nn.Parameter(torch.zeros(2, 2))]).defaults["ns_coefficients"]
    torchs = torch_muon._zeropower_via_newtonschulz(gradient, coefficients, 5, 1e-7)
    ours = newton_schulz_float32(gradient, coefficients, 5, 1e-7)
    assert torchs.dtype == torch.bfloat16 and ours.dtype == torch.float32 and ours.shape == shape
    assert (ours - torchs.float()).norm() / ours.norm() < 0.03


@pytest.mark.slow
def test_muon_and_wsd_resume_exactly_and_both_engines_agree(tmp_path, corpus, cache):
    """A run resumed from its step-6 checkpoint reproduces the uninterrupted one, with Muon and warmup-stable-decay,
    in each engine; and the engines agree, as the AdamW engine-agreement test in test_run.py checks."""
    args = [
        *common(corpus, cache),
        "--max-steps",
        "12",
        "--eval-freq",
        "3",
        "--save-steps",
        "6",
        "--lr",
        str(LR),
        "--optimizer",
        "muon",
        "--lr-scheduler",
        "wsd",
        "--warmup-steps",
        "2",
        "--min-lr",
        str(MIN_LR),
    ]
    runs = {}
    for engine in ("accelerate", "trainer"):
        output = tmp_path / engine
        assert train_cli([*args, "--engine", engine, "--output-dir", str(output)]) == 0
        uninterrupted = read_metrics(output)
        weights = (output / "model.safetensors").read_bytes()
        shutil.rmtree(output / "checkpoints" / "checkpoint-12")
        assert train_cli([*args, "--engine", engine, "--output-dir", str(output), "--resume"]) == 0
        assert without_timing(read_metrics(output)) == without_timing(uninterrupted), engine
        assert (output / "model.safetensors").read_bytes() == weights, engine
        runs[engine] = uninterrupted
    assert [record["step"] for record in runs["trainer"]] == [0, 3, 6, 9, 12]
    for ours, theirs in zip(runs["accelerate"], runs["trainer"]):
        assert ours["val_loss"] == pytest.approx(theirs["val_loss"], abs=1e-4)
    assert runs["accelerate"][-1]["val_loss"] < runs["accelerate"][0]["val_loss"] - 0.5


def test_the_default_floor_is_a_tenth_of_the_peak_for_the_schedules_that_have_one():
    assert OptimisationOptions(lr=2e-3).floor_lr() == pytest.approx(2e-4)  # cosine, the default
    assert OptimisationOptions(lr=2e-3, lr_scheduler="wsd", min_lr=1e-5).floor_lr() == 1e-5
    assert OptimisationOptions(lr_scheduler="linear").floor_lr() == 0.0
    model = GPTScratchForCausalLM(
        GPTScratchConfig(vocab_size=VOCAB, context_length=WINDOW, emb_dim=EMB, n_heads=2, n_layers=LAYERS)
    )
    options = OptimisationOptions(lr=2e-3, warmup_steps=0)
    optimizer = build_optimizer(model, options)
    scheduler = build_scheduler(optimizer, options, 10, clock=None)
    for _ in range(10):
        optimizer.step()
        scheduler.step()
    assert scheduler.get_last_lr() == pytest.approx([2e-4] * len(optimizer.param_groups))
