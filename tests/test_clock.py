"""train.clock: the time budget (--max-time), the clock that keeps it, and runs that end, decay and resume by it.

Runs that depend on time use a clock the test drives (every optimizer step takes exactly one second, nothing else
takes any), so they are exact and wait for nothing.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from cli_helpers import file_listing
from train_helpers import BATCH, EMB, LAYERS, LR, MIN_LR, VOCAB, WINDOW, common, read_metrics, train_cli

from train import clock as clock_module
from train.checkpoints import RunDirectory
from train.options import parse_duration
from train.stopping import StopSignals


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
