"""train.stability: a spike's step is skipped, a loss that is not finite rolls the run back, in both engines, and a
resumed run skips what the uninterrupted one skipped."""

from __future__ import annotations

import statistics
from collections import deque

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import common, read_metrics, train_cli, without_timing

import train.loop
import train.trainer
from train.optimization import AdamW, skip_next_step
from train.stability import Rollback, StepGuard, TrainingDiverged, zscore


def test_the_zscore_is_the_distance_above_the_mean_in_standard_deviations():
    history = deque([1.0, 2.0, 3.0, 4.0])
    expected = (10.0 - 2.5) / statistics.pstdev([1.0, 2.0, 3.0, 4.0])
    assert zscore(history, 10.0) == pytest.approx(expected)
    assert zscore(deque([2.0, 2.0]), 5.0) == 0.0  # no spread: no outlier


def test_a_spike_is_skipped_once_half_a_window_is_known_and_stays_out_of_the_window():
    guard = StepGuard(loss_zscore=4.0, grad_zscore=4.0, window=8, max_rollbacks=3)
    for step, loss in enumerate([5.0, 5.1, 4.9], start=1):
        assert guard.decide(step, loss, 1.0 + step / 100) is None
    assert guard.decide(4, 50.0, 1.0) is None  # three steps of eight: too few to call anything an outlier
    guard = StepGuard(loss_zscore=4.0, grad_zscore=4.0, window=8, max_rollbacks=3)
    for step, loss in enumerate([5.0, 5.1, 4.9, 5.0], start=1):
        assert guard.decide(step, loss, 1.0 + step / 100) is None
    reason = guard.decide(5, 50.0, 1.0)
    assert reason is not None and "loss 50 is" in reason and guard.skipped == 1
    assert list(guard.losses) == [5.0, 5.1, 4.9, 5.0]  # the skipped loss joined nothing
    assert "gradient norm 40" in guard.decide(6, 5.0, 40.0)
    assert guard.decide(7, 5.05, 1.02) is None and guard.skipped == 2


def test_a_zscore_of_0_never_skips():
    guard = StepGuard(loss_zscore=0.0, grad_zscore=0.0, window=4, max_rollbacks=0)
    for step in range(1, 10):
        assert guard.decide(step, 5.0 + step % 2, 1.0) is None
    assert guard.decide(10, 1e9, 1e9) is None


def test_a_non_finite_loss_rolls_back_while_rollbacks_are_left_then_stops(tmp_path):
    guard = StepGuard(loss_zscore=6.0, grad_zscore=6.0, window=10, max_rollbacks=1)
    with pytest.raises(TrainingDiverged, match=r"none \(no save yet\); resume from it with a lower lr"):
        guard.non_finite_loss(3, float("nan"), checkpoint=None)  # nothing to roll back to
    with pytest.raises(Rollback) as rollback:
        guard.non_finite_loss(8, float("inf"), checkpoint=tmp_path)
    assert (rollback.value.step, rollback.value.checkpoint) == (8, tmp_path)
    saved = StepGuard(6.0, 6.0, 10, 1).state_dict()
    guard.rolled_back(rollback.value, saved)
    assert (guard.rollbacks, guard.skip_until) == (1, 8)
    assert "rolled back past it" in guard.decide(7, 5.0, 1.0) and guard.decide(9, 5.0, 1.0) is None
    with pytest.raises(TrainingDiverged, match=r"\(1 rollbacks did not get past it\)"):
        guard.non_finite_loss(12, float("nan"), checkpoint=tmp_path)


def test_the_guards_state_comes_back_whole():
    guard = StepGuard(loss_zscore=3.0, grad_zscore=3.0, window=4, max_rollbacks=2)
    for step, loss in enumerate([5.0, 4.0, 4.5, 4.2, 4.1, 99.0], start=1):
        guard.decide(step, loss, 1.0)
    copy = StepGuard(loss_zscore=3.0, grad_zscore=3.0, window=4, max_rollbacks=2)
    copy.load_state_dict(guard.state_dict())
    assert copy.state_dict() == guard.state_dict() and copy.skipped == 1
    assert copy.decide(7, 60.0, 1.0) == guard.decide(7, 60.0, 1.0)


def test_a_skipped_step_leaves_the_weights_and_the_optimizers_state_as_they_were():
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(4, 3))
    optimizer = AdamW([weight], lr=0.1, weight_decay=0.1)
    weight.grad = torch.randn(4, 3)
    optimizer.step()
    before, state = weight.detach().clone(), {k: v.clone() for k, v in optimizer.state[weight].items()}
    weight.grad = torch.randn(4, 3)
    skip_next_step(optimizer)
    optimizer.step()
    assert torch.equal(weight.detach(), before)
    assert all(torch.equal(optimizer.state[weight][key], value) for key, value in state.items())
    optimizer.step()  # the next step is applied again
    assert not torch.equal(weight.detach(), before)


def poison(monkeypatch: pytest.MonkeyPatch, step: int, factor: float) -> None:
    """The training loss of optimizer step `step` (one micro-batch a step) multiplied by `factor`, in both engines:
    NaN for a loss that is not finite, a large number for a spike."""
    calls = {"count": 0}
    for engine in (train.loop, train.trainer):
        original = engine.lm_loss

        def poisoned(logits, targets, original=original):
            loss = original(logits, targets)
            if torch.is_grad_enabled():  # a training step, not an evaluation
                calls["count"] += 1
                if calls["count"] == step:
                    return loss * factor
            return loss

        monkeypatch.setattr(engine, "lm_loss", poisoned)


RUN = ["--eval-freq", "2", "--save-steps", "5", "--early-stopping-patience", "0"]


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["accelerate", "trainer"])
def test_a_nan_loss_rolls_back_and_the_run_ends_close_to_the_clean_one(tmp_path, corpus, cache, monkeypatch, engine):
    """The loss of step 8 is NaN: the run goes back to checkpoint 5, skips steps 6-8, and ends with a finite loss
    near the clean run's; the output directory holds one record per evaluation, in order, and loads."""
    args = [*common(corpus, cache), "--engine", engine, "--max-steps", "16", *RUN]
    assert train_cli([*args, "--output-dir", str(tmp_path / "clean")]) == 0
    poison(monkeypatch, step=8, factor=float("nan"))
    assert train_cli([*args, "--output-dir", str(tmp_path / "poisoned")]) == 0
    clean, poisoned = read_metrics(tmp_path / "clean"), read_metrics(tmp_path / "poisoned")
    assert [record["step"] for record in poisoned] == [record["step"] for record in clean]  # none twice
    assert poisoned[-1]["rollbacks"] == 1 and poisoned[-1]["skipped_steps"] == 3
    assert poisoned[3]["val_loss"] == poisoned[4]["val_loss"]  # steps 6-8 applied nothing: step 8 is step 5's model
    # 13 updates applied: as far as a clean run gets in 12 or 13 steps (evaluated every 2), to rounding.
    clean_at_12 = next(record["val_loss"] for record in clean if record["step"] == 12)
    assert clean[-1]["val_loss"] < poisoned[-1]["val_loss"] <= clean_at_12 + 0.01
    summary = (tmp_path / "poisoned" / "training_summary.json").read_text()
    assert '"steps": 16' in summary and '"stopped": "completed"' in summary


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["accelerate", "trainer"])
def test_a_spike_is_skipped_so_the_step_leaves_the_weights_as_they_were(tmp_path, corpus, cache, monkeypatch, engine):
    """Step 10's loss is 50 times the rest: its update is thrown away, so the model after step 10 is the model
    after step 9, bit for bit."""
    args = [*common(corpus, cache), "--engine", engine, *RUN, "--spike-window", "6"]
    assert train_cli([*args, "--max-steps", "9", "--output-dir", str(tmp_path / "nine")]) == 0
    poison(monkeypatch, step=10, factor=50.0)
    assert train_cli([*args, "--max-steps", "10", "--output-dir", str(tmp_path / "ten")]) == 0
    assert read_metrics(tmp_path / "ten")[-1]["skipped_steps"] == 1
    nine, ten = load_file(tmp_path / "nine" / "model.safetensors"), load_file(tmp_path / "ten" / "model.safetensors")
    assert all(torch.equal(nine[name], ten[name]) for name in nine)


@pytest.mark.slow
def test_a_resumed_run_skips_what_the_uninterrupted_run_skipped(tmp_path, corpus, cache, monkeypatch):
    """A rollback at step 8, then checkpoint 10: resuming from it gives the metrics and weights of the run that
    went on (the guard's state, and the data past the skipped steps, are in the checkpoint)."""
    args = [*common(corpus, cache), *RUN]
    poison(monkeypatch, step=8, factor=float("nan"))
    assert train_cli([*args, "--max-steps", "14", "--output-dir", str(tmp_path / "whole")]) == 0
    poison(monkeypatch, step=8, factor=float("nan"))
    assert train_cli([*args, "--max-steps", "10", "--output-dir", str(tmp_path / "split")]) == 0
    monkeypatch.undo()  # the resumed process meets no poison: step 8 is behind it
    assert train_cli([*args, "--max-steps", "14", "--output-dir", str(tmp_path / "split"), "--resume"]) == 0
    whole, split = read_metrics(tmp_path / "whole"), read_metrics(tmp_path / "split")
    assert without_timing(split) == without_timing(whole)
    first, second = (
        load_file(tmp_path / "whole" / "model.safetensors"),
        load_file(tmp_path / "split" / "model.safetensors"),
    )
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_the_plan_says_what_the_guard_does(tmp_path, corpus, cache, capsys):
    argv = [*common(corpus, cache), "--output-dir", str(tmp_path / "out"), "--dry-run", "--max-rollbacks", "0"]
    assert train_cli([*argv, "--skip-grad-zscore", "8"]) == 0
    assert (
        "stability   a step whose loss lies over 6, or whose gradient norm lies over 8, standard deviations above the "
        "last 50 steps' is skipped; a NaN or infinite loss stops the run" in capsys.readouterr().out
    )
