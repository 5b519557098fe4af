"""Training that survives a loss spike: an outlier step is skipped, and a loss that stops being finite rolls the run
back to its last good checkpoint.

`StepGuard` decides, at each optimizer step, once its loss and its gradient norm before clipping are known and before
the update is applied, whether to apply it:

- after a rollback, the steps up to the one whose loss was not finite are skipped: their batches are read again but
  their updates are thrown away, so the run leaves behind the batches that led it astray;
- a step whose loss, or gradient norm, lies more than `loss_zscore` (`grad_zscore`) standard deviations above the
  mean of the last `window` applied steps is skipped, as llm.c's `-sl` and `-sg` do, once half a window of steps
  has been seen (a z-score of 0 turns the check off).

A skipped step still counts as a step (the schedule and the data move on); the weights and the optimizer's state stay
as they were (`train.optimization.SkippableStep`). A non-finite loss raises `Rollback` while `max_rollbacks` allows
and a checkpoint exists; the engine reloads that checkpoint and goes on. The guard's state (its windows, its counts
and the step its skipping runs to) goes into every checkpoint, so a resumed run skips what the uninterrupted one
skipped.
"""

from __future__ import annotations

import statistics
from collections import deque
from pathlib import Path
from typing import Any

from common.errors import field


class TrainingDiverged(RuntimeError):
    """The loss or the weights became NaN or infinite; the message names the step and the last good checkpoint."""


class Rollback(Exception):
    """The loss of optimizer step `step` was not finite: the run goes back to `checkpoint` and skips up to `step`."""

    def __init__(self, step: int, checkpoint: Path, loss: float):
        super().__init__(f"the training loss became {loss} at step {step}")
        self.step, self.checkpoint, self.loss = step, checkpoint, loss


def zscore(history: deque[float], value: float) -> float:
    """How many standard deviations `value` lies above the mean of `history` (0 for a history without spread)."""
    spread = statistics.pstdev(history)
    return 0.0 if spread == 0 else (value - statistics.fmean(history)) / spread


class StepGuard:
    """Decides whether each optimizer step is applied (see the module's docstring); counts what it skipped."""

    def __init__(self, loss_zscore: float, grad_zscore: float, window: int, max_rollbacks: int):
        self.loss_zscore, self.grad_zscore, self.max_rollbacks = loss_zscore, grad_zscore, max_rollbacks
        self.losses: deque[float] = deque(maxlen=window)
        self.grad_norms: deque[float] = deque(maxlen=window)
        self.skipped = 0  # steps whose update was thrown away
        self.rollbacks = 0
        self.skip_until = 0  # after a rollback: the step whose loss was not finite

    def decide(self, step: int, loss: float, grad_norm: float) -> str | None:
        """Why optimizer step `step` (its loss, its gradient norm before clipping) is skipped, or None to apply it;
        an applied step joins the windows the next steps are measured against."""
        reason = None
        if step <= self.skip_until:
            reason = f"the run rolled back past it (to skip the steps up to {self.skip_until})"
        elif self.outlier(self.losses, loss, self.loss_zscore):
            reason = f"its loss {loss:.4g} is {zscore(self.losses, loss):.1f} standard deviations above the last steps'"
        elif self.outlier(self.grad_norms, grad_norm, self.grad_zscore):
            reason = (
                f"its gradient norm {grad_norm:.4g} is {zscore(self.grad_norms, grad_norm):.1f} standard deviations "
                "above the last steps'"
            )
        if reason is not None:
            self.skipped += 1
            return reason
        self.losses.append(loss)
        self.grad_norms.append(grad_norm)
        return None

    def outlier(self, history: deque[float], value: float, limit: float) -> bool:
        """Whether `value` is an outlier against `history`: the check is on (`limit` > 0), half a window has been
        seen, and the value lies more than `limit` standard deviations above the mean."""
        known = len(history) >= max(2, (history.maxlen or 0) // 2)
        return limit > 0 and known and zscore(history, value) > limit

    def non_finite_loss(self, step: int, loss: float, checkpoint: Path | None) -> None:
        """Raises Rollback to `checkpoint` while rollbacks are left, else TrainingDiverged with the fix."""
        if checkpoint is not None and self.rollbacks < self.max_rollbacks:
            raise Rollback(step, checkpoint, loss)
        tried = f" ({self.rollbacks} rollbacks did not get past it)" if self.rollbacks else ""
        raise TrainingDiverged(
            f"the training loss became {loss} at step {step}{tried}; stopped without updating the weights. The last "
            f"good checkpoint is {checkpoint or 'none (no save yet)'}; resume from it with a lower {field('lr')}, "
            f"more {field('warmup_steps')} or {field('max_grad_norm')}"
        )

    def rolled_back(self, rollback: Rollback, saved: dict[str, Any]) -> None:
        """Takes the state the checkpoint saved, and goes on skipping up to the step that was not finite."""
        rollbacks = self.rollbacks + 1
        self.load_state_dict(saved)
        self.rollbacks, self.skip_until = rollbacks, rollback.step

    def state_dict(self) -> dict[str, Any]:
        return {
            "losses": list(self.losses),
            "grad_norms": list(self.grad_norms),
            "skipped": self.skipped,
            "rollbacks": self.rollbacks,
            "skip_until": self.skip_until,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.losses.clear()
        self.losses.extend(state["losses"])
        self.grad_norms.clear()
        self.grad_norms.extend(state["grad_norms"])
        self.skipped, self.rollbacks, self.skip_until = state["skipped"], state["rollbacks"], state["skip_until"]
