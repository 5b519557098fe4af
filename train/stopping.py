"""How a run ends: why (`StopReason`), and the one decision both engines make after every step (`stop_reason`),
from the stop signals (Ctrl-C, SIGTERM), early stopping, the time budget and the step limit."""

from __future__ import annotations

import enum
import math
import os
import signal
import threading
from collections.abc import Iterable
from typing import Any


class StopReason(str, enum.Enum):
    """Why a run ended (a str, so metrics, summaries and checkpoints keep its value)."""

    COMPLETED = "completed"  # the step limit
    TIME_LIMIT = "time-limit"  # the max_time budget
    EARLY_STOPPED = "early-stopped"  # no better validation loss for early_stopping_patience evaluations
    INTERRUPTED = "interrupted"  # Ctrl-C or SIGTERM


def stop_reason(*, interrupted: bool, early_stopped: bool, out_of_time: bool, last_step: bool) -> StopReason | None:
    """Why a run stops after the step just ended, or None to go on. A stop request wins (the run saves and can
    resume), then early stopping, the time budget and the step limit, in that order."""
    for reason, applies in (
        (StopReason.INTERRUPTED, interrupted),
        (StopReason.EARLY_STOPPED, early_stopped),
        (StopReason.TIME_LIMIT, out_of_time),
        (StopReason.COMPLETED, last_step),
    ):
        if applies:
            return reason
    return None


class EarlyStopping:
    """Stops when the validation loss has not improved for `patience` evaluations (0 or None: never); tracks the
    best one.

    Its state is a function of the metrics so far, so a resumed run picks it up from metrics.jsonl.
    """

    def __init__(self, patience: int | None, records: Iterable[dict[str, Any]] = ()):
        self.patience = patience
        self.best_loss = math.inf
        self.best_step: int | None = None
        self.since_best = 0
        for record in records:
            self.update(record)

    def update(self, record: dict[str, Any]) -> bool:
        """Takes an evaluation; True when it is a new best."""
        if record["val_loss"] < self.best_loss:
            self.best_loss, self.best_step, self.since_best = record["val_loss"], record["step"], 0
            return True
        self.since_best += 1
        return False

    @property
    def keeps_best(self) -> bool:
        """Whether the run keeps its best model (any patience but 0 or None)."""
        return bool(self.patience)

    @property
    def should_stop(self) -> bool:
        return self.keeps_best and self.since_best >= self.patience


class StopSignals:
    """While active, SIGINT and SIGTERM ask the run to stop at the end of the current step (a second one aborts).

    The engines check `requested` after each optimizer step, save a checkpoint and return.
    """

    def __init__(self) -> None:
        self.signal_number: int | None = None
        self._previous: dict[int, Any] = {}
        self._pid = os.getpid()

    def __enter__(self) -> StopSignals:
        self._pid = os.getpid()
        if threading.current_thread() is threading.main_thread():
            for number in (signal.SIGINT, signal.SIGTERM):
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    def _handle(self, number: int, frame: Any) -> None:
        if os.getpid() != self._pid:
            # A process forked from the run (a worker pool, such as lm-eval's) inherits the handler: there the signal
            # does what it does by default, or the pool's terminate would wait for a worker that never stops.
            signal.signal(number, signal.SIG_DFL)
            os.kill(os.getpid(), number)
            return
        if self.signal_number is not None:
            raise KeyboardInterrupt  # a second signal: stop now; checkpoints are written atomically
        self.signal_number = number
        print(f"\n{signal.Signals(number).name} received: stopping after this step and saving a checkpoint", flush=True)

    @property
    def requested(self) -> bool:
        return self.signal_number is not None
