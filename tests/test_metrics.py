"""train.metrics: MFU shown as a percentage, the progress bars' figures, the progress line's benchmark scores, and
when early stopping stops."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from train.clock import TrainingClock
from train.context import RunContext
from train.metrics import format_evaluation, format_mfu, metrics_record, throughput_postfix
from train.options import EvaluationOptions
from train.stopping import EarlyStopping


@pytest.mark.parametrize("mfu, shown", [(0.423, "42.3%"), (0.001, "0.1%"), (0.00075, "0.075%"), (4.6e-5, "0.0046%")])
def test_mfu_is_shown_as_a_percentage_however_small(mfu, shown):
    # A tiny model on a GPU runs far below 0.1% of its peak (measured on an H200: 0.075%): still a percentage.
    assert format_mfu(mfu) == shown
    assert throughput_postfix({"tokens_per_second": 1234.5, "mfu": mfu}) == {"tok_s": "1,234", "mfu": shown}


def test_both_engines_bars_show_the_gradient_norm_once_a_step_has_one():
    clock = TrainingClock(tokens_per_step=128, flops_per_token=1e6, peak_flops=1e12)
    before = SimpleNamespace(last_grad_norm=None, clock=clock)
    assert RunContext.progress_postfix(before) == {}  # nothing before the first step
    after = SimpleNamespace(last_grad_norm=0.123456, clock=clock)
    assert RunContext.progress_postfix(after) == {"grad_norm": "0.123"}


def test_the_progress_line_ends_with_the_benchmark_scores_and_their_time():
    record = metrics_record(4, 0.5, 512, 5.0, 5.1, 2.0, 1000.0, 0.01, grad_norm=1.5)
    assert "|" not in format_evaluation(record).split("grad norm")[1]
    record |= {"hellaswag/acc_norm": 0.25125, "lambada_openai/perplexity": None, "tasks_time_s": 3.25}
    assert format_evaluation(record).endswith("| hellaswag/acc_norm 0.2512, lambada_openai/perplexity N/A (3.2 s)")


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
