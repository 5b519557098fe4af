"""Training that learns the most per second: the time budget, the schedules, Muon, throughput and MFU, and the
attention path that keeps SDPA's fused kernels.

Runs that depend on time use a clock the test drives (every optimizer step takes exactly one second, nothing else
takes any), so they are exact and wait for nothing.
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import torch.optim._muon as torch_muon
from cli_helpers import file_listing
from test_train import common, read_metrics, train_cli, without_timing
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from modeling_gptscratch import GPTScratchConfig, GPTScratchForCausalLM
from train import clock as clock_module
from train.checkpoints import RunDirectory
from train.loss import lm_loss, window_logits
from train.metrics import format_mfu, throughput_postfix
from train.model_config import build_config
from train.optimization import MuonWithAdamW, build_optimizer, build_scheduler, muon_parameters, newton_schulz_float32
from train.options import EvaluationOptions, ModelOptions, OptimisationOptions, parse_duration
from train.plan import measure_matmul_flops, training_flops_per_token
from train.stopping import EarlyStopping, StopSignals

# The shape of test_train's TINY_MODEL, which its model FLOPs are counted from by hand below.
VOCAB, EMB, LAYERS, WINDOW, BATCH = 300, 32, 2, 32, 4
LR, MIN_LR = 3e-3, 3e-4


@pytest.fixture
def steps_of_one_second(monkeypatch) -> dict:
    """The training clock reads a time that advances by one second per optimizer step and never otherwise.

    `stop_at`: a time at which a stop is requested, as Ctrl-C would (None: never). Returns the test's handle on both.
    """
    handle = {"now": 0.0, "stop_at": None}
    monkeypatch.setattr(clock_module, "monotonic", lambda: handle["now"])
    step_ended = clock_module.TrainingClock.step_ended

    def one_second(self, step, **kwargs):
        handle["now"] += 1.0
        return step_ended(self, step, **kwargs)

    monkeypatch.setattr(clock_module.TrainingClock, "step_ended", one_second)
    monkeypatch.setattr(
        StopSignals,
        "requested",
        property(lambda self: handle["stop_at"] is not None and handle["now"] >= handle["stop_at"]),
    )
    return handle


def last_learning_rates(checkpoint) -> list[float]:
    """The learning rates the checkpoint's schedule had set for the next step (Accelerate: scheduler.bin, the
    Trainer: scheduler.pt)."""
    return torch.load(next(checkpoint.glob("scheduler.*")), weights_only=True)["_last_lr"]


def cosine_lr(progress: float) -> float:
    """A cosine decay from LR to MIN_LR, by hand."""
    return MIN_LR + (LR - MIN_LR) * 0.5 * (1 + math.cos(math.pi * progress))


# ---------------------------------------------------------------------------------------------------------------------
# --max-time


@pytest.mark.parametrize(
    "text, seconds",
    [("90", 90.0), ("90s", 90.0), ("1.5m", 90.0), ("10m", 600.0), ("2h", 7200.0), ("2H", 7200.0), (45, 45.0)],
)
def test_durations_are_seconds_or_have_a_unit(text, seconds):
    assert parse_duration(text) == seconds


def test_the_clock_reserves_the_final_work_and_its_progress_never_goes_back(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(clock_module, "monotonic", lambda: now[0])
    clock = clock_module.TrainingClock(tokens_per_step=10, flops_per_token=1.0, peak_flops=100.0, budget=10.0)
    clock.start()

    def after(seconds: float, event: str, step: int = 0) -> tuple[float, bool]:
        now[0] += seconds
        if event == "step":
            clock.step_ended(step)
        else:
            clock.paused(event)
        return clock.progress, clock.out_of_time

    after(1.0, "evaluation")  # 1 s; the sample, not timed yet, is expected to take as long, the checkpoint nothing
    assert clock.reserve() == 2.0
    assert after(1.0, "step", 1) == (pytest.approx(2 / 8), False)  # 2 s used of the 8 left for steps
    after(2.0, "checkpoint")
    assert clock.reserve() == 4.0
    assert after(1.0, "step", 2) == (pytest.approx(5 / 6), False)  # 5 + a step (1) + the reserve (4) = 10: fits
    after(0.1, "evaluation")  # a faster evaluation: the reserve falls to 2.2
    assert after(0.1, "step", 3) == (pytest.approx(5 / 6), False)  # 5.2 / 7.8 would take the schedule back
    assert after(1.0, "step", 4) == (pytest.approx(5 / 6), False)  # 6.2 / 7.8 too; 6.2 + 1 + 2.2 fits
    assert after(1.0, "step", 5) == (pytest.approx(7.2 / 7.8), True)  # 7.2 + 1 + 2.2 > 10
    # 5 steps of 10 tokens in 1 + 1 + 0.1 + 1 + 1 s; 1 FLOP per token against 100 FLOP/s.
    assert clock.take_throughput() == pytest.approx({"tokens_per_second": 50 / 4.1, "mfu": 50 / 4.1 / 100})
    assert clock.throughput() == {"tokens_per_second": None, "mfu": None}


@pytest.mark.parametrize("mfu, shown", [(0.423, "42.3%"), (0.001, "0.1%"), (0.00075, "0.075%"), (4.6e-5, "0.0046%")])
def test_mfu_is_shown_as_a_percentage_however_small(mfu, shown):
    # A tiny model on a GPU runs far below 0.1% of its peak (measured on an H200: 0.075%): still a percentage.
    assert format_mfu(mfu) == shown
    assert throughput_postfix({"tokens_per_second": 1234.5, "mfu": mfu}) == {"tok_s": "1,234", "mfu": shown}


@pytest.mark.parametrize("engine", ["accelerate", "trainer"])
def test_the_time_budget_ends_the_run_with_the_schedule_at_its_floor_and_mfu_from_the_plans_flops(
    tmp_path, corpus, cache, steps_of_one_second, engine
):
    output = tmp_path / "run"
    status = train_cli(
        [
            *common(corpus, cache),
            "--output-dir",
            str(output),
            "--engine",
            engine,
            "--max-time",
            "10s",
            "--eval-freq",
            "5",
            "--save-steps",
            "5",
            "--lr",
            str(LR),
            "--warmup-steps",
            "0",
            "--lr-scheduler",
            "cosine",
            "--min-lr",
            str(MIN_LR),
            "--peak-flops",
            "1e9",
        ]
    )
    assert status == 0
    records = read_metrics(output)
    # 10 one-second steps fit in 10 s; evaluations and checkpoints take no time on this clock.
    assert [record["step"] for record in records] == [0, 5, 10]
    assert [record["time_s"] for record in records] == [0.0, 5.0, 10.0]
    summary = json.loads((output / "training_summary.json").read_text())
    assert (summary["steps"], summary["stopped"], summary["time_s"]) == (10, "time-limit", 10.0)
    assert (output / "config.json").is_file()

    # The decay follows the time used: half of it at 5 s, the floor when the budget is spent, in every group
    # (AdamW's with and without weight decay, Muon's).
    checkpoints = {path.name: path for path in RunDirectory(output).checkpoint_dirs()}
    assert last_learning_rates(checkpoints["checkpoint-5"]) == pytest.approx([cosine_lr(0.5)] * 3)
    assert last_learning_rates(checkpoints["checkpoint-10"]) == pytest.approx([MIN_LR] * 3)

    # Throughput: 4 windows x 32 tokens per one-second step; MFU against the plan's model FLOPs per token, counted
    # here by hand: 6 per weight that multiplies (the tied head, and 12 emb^2 per block) plus the attention term.
    flops_per_token = 6 * (VOCAB * EMB + LAYERS * 12 * EMB**2) + 12 * LAYERS * EMB * WINDOW
    assert records[0]["tokens_per_second"] is None and records[0]["mfu"] is None
    for record in records[1:]:
        assert record["tokens_per_second"] == pytest.approx(BATCH * WINDOW)
        assert record["mfu"] == pytest.approx(BATCH * WINDOW * flops_per_token / 1e9)


def test_the_first_limit_reached_ends_the_run_and_the_expected_steps_are_logged(
    tmp_path, corpus, cache, steps_of_one_second, capsys
):
    args = [
        *common(corpus, cache),
        "--max-time",
        "12",
        "--eval-freq",
        "100",
        "--lr-scheduler",
        "linear",
        "--warmup-steps",
        "0",
    ]
    assert train_cli([*args, "--output-dir", str(tmp_path / "steps"), "--max-steps", "4"]) == 0
    assert read_metrics(tmp_path / "steps")[-1]["step"] == 4
    capsys.readouterr()
    assert train_cli([*args, "--output-dir", str(tmp_path / "time"), "--max-steps", "50"]) == 0
    assert read_metrics(tmp_path / "time")[-1]["step"] == 12
    printed = capsys.readouterr().out
    assert "4 steps (max steps) or 12 s (--max-time), whichever ends first" not in printed
    assert "50 steps (max steps) or 12 s (--max-time), whichever ends first" in printed
    # After 10 timed steps (2 to 11, one second each), 1 s is left: 12 steps in all.
    assert "time budget: 11.0 s for 11 steps; 12 steps expected in 12 s" in printed
    # With --max-steps 50 the schedule also spans the 12 s, which end first: the linear decay reaches 0.
    final = RunDirectory(tmp_path / "time").checkpoint_dirs()[-1]
    assert last_learning_rates(final) == pytest.approx([0.0] * 3)  # AdamW's two groups and Muon's


@pytest.mark.parametrize("engine", ["accelerate", "trainer"])
def test_a_resumed_run_continues_the_same_budget(tmp_path, corpus, cache, steps_of_one_second, engine):
    args = [
        *common(corpus, cache),
        "--engine",
        engine,
        "--max-time",
        "10",
        "--eval-freq",
        "3",
        "--save-steps",
        "100",
        "--lr",
        str(LR),
        "--lr-scheduler",
        "wsd",
        "--decay-ratio",
        "0.5",
        "--warmup-steps",
        "2",
        "--min-lr",
        str(MIN_LR),
        "--peak-flops",
        "1e9",
    ]
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    assert train_cli([*args, "--output-dir", str(full)]) == 0

    steps_of_one_second.update(now=0.0, stop_at=4.0)  # a stop request after 4 s: the checkpoint holds 4 s used
    assert train_cli([*args, "--output-dir", str(resumed)]) == 128
    assert [path.name for path in RunDirectory(resumed).checkpoint_dirs()] == ["checkpoint-4"]
    steps_of_one_second.update(now=1000.0, stop_at=None)  # a later process: its clock starts at another time
    assert train_cli([*args, "--output-dir", str(resumed), "--resume"]) == 0

    assert read_metrics(resumed) == read_metrics(full)  # the same 10 steps, times included: [.., 9 s, 10 s]
    assert read_metrics(full)[-1]["step"] == 10
    assert (resumed / "model.safetensors").read_bytes() == (full / "model.safetensors").read_bytes()

    # The budget is spent: resuming with the same --max-time changes nothing; a longer one trains on.
    before = file_listing(resumed)
    assert train_cli([*args, "--output-dir", str(resumed), "--resume"]) == 0
    assert file_listing(resumed) == before
    longer = [*args[: args.index("--max-time")], "--max-time", "13", *args[args.index("--max-time") + 2 :]]
    assert train_cli([*longer, "--output-dir", str(resumed), "--resume"]) == 0
    assert read_metrics(resumed)[-1]["step"] > 10


# ---------------------------------------------------------------------------------------------------------------------
# Muon and the schedules


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
    in each engine; and the engines agree, as the AdamW engine-agreement test in test_train.py checks."""
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


def test_early_stopping_by_default_and_patience_0_never_stops():
    """The default stops after 5 evaluations without a better validation loss (the model directory then holds the
    best model); --early-stopping-patience 0 trains on and keeps the last."""
    losses = [5.0, 4.0, 3.0, 3.5, 3.6, 3.7, 3.8]
    records = [{"step": 10 * index, "val_loss": loss} for index, loss in enumerate(losses)]
    default = EvaluationOptions().early_stopping_patience
    assert not EarlyStopping(default, records[:-1]).should_stop  # 4 evaluations since the best
    stopping = EarlyStopping(default, records + [{"step": 70, "val_loss": 3.9}])
    assert stopping.should_stop and stopping.best_step == 20
    assert not EarlyStopping(0, records * 3).should_stop


# ---------------------------------------------------------------------------------------------------------------------
# Model FLOPs


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


# ---------------------------------------------------------------------------------------------------------------------
# The fast path: fused attention and fused AdamW


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
