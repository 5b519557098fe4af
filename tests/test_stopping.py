"""train.stopping: why a run ends, decided by one rule both engines and a resumed run apply."""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import signal

import pytest

from train.stopping import StopReason, StopSignals, stop_reason


def test_a_run_goes_on_while_nothing_stops_it():
    assert stop_reason(interrupted=False, early_stopped=False, out_of_time=False, last_step=False) is None


@pytest.mark.parametrize("flags", list(itertools.product([False, True], repeat=4)))
def test_a_stop_request_wins_then_early_stopping_then_the_time_budget_then_the_step_limit(flags):
    """The order a run reports: a stop request first (it saves and can resume), the step limit last, so a run
    out of time at its last step says time-limit, as the time budget ended it."""
    interrupted, early_stopped, out_of_time, last_step = flags
    reason = stop_reason(
        interrupted=interrupted, early_stopped=early_stopped, out_of_time=out_of_time, last_step=last_step
    )
    expected = next(
        (
            name
            for name, applies in zip(
                [StopReason.INTERRUPTED, StopReason.EARLY_STOPPED, StopReason.TIME_LIMIT, StopReason.COMPLETED], flags
            )
            if applies
        ),
        None,
    )
    assert reason is expected


def test_a_reason_is_written_as_its_name():
    """Summaries, checkpoints and the command's lines keep the words users read: completed, time-limit, ..."""
    assert json.dumps({"stopped": StopReason.TIME_LIMIT}) == '{"stopped": "time-limit"}'
    assert [reason.value for reason in StopReason] == ["completed", "time-limit", "early-stopped", "interrupted"]


def _terminate_self() -> None:
    os.kill(os.getpid(), signal.SIGTERM)


def test_a_process_forked_during_the_run_dies_of_sigterm_while_the_run_only_takes_note():
    """A worker pool forked during the run (lm-eval bootstraps in one) inherits the handler; its terminate must
    still end the workers."""
    with StopSignals() as stop:
        worker = multiprocessing.get_context("fork").Process(target=_terminate_self)
        worker.start()
        worker.join(timeout=30)
        assert worker.exitcode == -signal.SIGTERM
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.signal_number == signal.SIGTERM
