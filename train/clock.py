"""The training clock: the time a run's loop spends, its `max_time` budget, and its throughput (tokens/s, MFU).

Both engines report to it at the same moments: `step_ended` after each optimizer update (before the schedule sets
the next step's learning rate), `paused(kind)` after each evaluation, benchmark scoring, sample and checkpoint. The
time between two reports is charged to the later one, so every second of the loop counts in `used()` (summed over
resumes, since a checkpoint keeps it), while the throughput counts the steps' seconds alone.

With a budget, the run stops when the next step, then a final evaluation, sample and checkpoint as long as the last
ones, would not fit in it: `out_of_time`. `progress` (the share of the budget used, the decay of the learning-rate
schedule) and `out_of_time` are set at each step's end from figures all processes agree on, so every process sets
the same learning rate and stops at the same step.
"""

from __future__ import annotations

from collections.abc import Callable
from time import monotonic  # looked up at each call: tests replace it with a clock they drive


def _same_everywhere(values: list[float]) -> list[float]:
    return values


class TrainingClock:
    """Time used, the budget, and tokens/s and MFU since the last evaluation.

    tokens_per_step: tokens of one optimizer step over all processes; flops_per_token: the model FLOPs of a trained
    token; peak_flops: what all processes' devices can do per second (the denominator of MFU); budget: `max_time`
    in seconds, or None.
    """

    def __init__(self, tokens_per_step: int, flops_per_token: float, peak_flops: float, budget: float | None = None):
        self.tokens_per_step = tokens_per_step
        self.flops_per_token = flops_per_token
        self.peak_flops = peak_flops
        self.budget = budget
        self.progress = 0.0  # the share of the budget used at the last step's end (0 without a budget)
        self.out_of_time = False
        self.first_step: tuple[int, float] | None = None  # (step, seconds used) at this process's first step end
        self._used_before = 0.0
        self._started_at: float | None = None
        self._mark = 0.0
        self._last_step = 0.0
        self._pauses: dict[str, float] = {}  # the seconds of the last evaluation, tasks, sample and checkpoint
        self._window_steps, self._window_seconds = 0, 0.0

    def start(self, used: float = 0.0) -> None:
        """Starts counting, after `used` seconds of earlier processes (a resumed run's checkpoint has them)."""
        self._used_before = used
        self._started_at = self._mark = monotonic()

    @property
    def running(self) -> bool:
        return self._started_at is not None

    def stop(self) -> None:
        """Stops counting: the loop is over (what follows, the model directory and the reload check, is not
        training)."""
        self._used_before, self._started_at = self.used(), None

    def used(self) -> float:
        """Seconds of training so far, resumes included."""
        return self._used_before + (0.0 if self._started_at is None else monotonic() - self._started_at)

    def step_ended(self, step: int, agree: Callable[[list[float]], list[float]] = _same_everywhere) -> None:
        """An optimizer step ended (`step` steps done). `agree` maps this process's figures to the maximum over all
        processes, so that progress and out_of_time are the same everywhere."""
        now = monotonic()
        self._last_step = now - self._mark
        self._mark = now
        self._window_steps += 1
        self._window_seconds += self._last_step
        if self.first_step is None:
            self.first_step = (step, self.used())
        if self.budget is not None:
            used, last_step, reserve = agree([self.used(), self._last_step, self.reserve()])
            # Never backwards, so the learning rate only decays, when a shorter evaluation lowers the reserve.
            self.progress = max(self.progress, min(1.0, used / max(self.budget - reserve, 1e-9)))
            self.out_of_time = used + last_step + reserve > self.budget

    def spent_budget(self) -> float | None:
        """The budget, once it has run out (a checkpoint records it: resuming with no longer a budget has nothing to
        do); None before, and without one."""
        return self.budget if self.out_of_time else None

    def paused(self, kind: str) -> float:
        """An evaluation, benchmark scoring ("tasks"), sample or checkpoint (`kind`) ended: its time counts as used,
        not as training. Returns its seconds."""
        now = monotonic()
        self._pauses[kind] = now - self._mark
        self._mark = now
        return self._pauses[kind]

    def reserve(self) -> float:
        """Seconds the final evaluation (its benchmark tasks too, where they run), sample and checkpoint are expected
        to take: as long as the last ones. A sample not timed yet (before the first epoch ends) counts as long as an
        evaluation, which runs about as many forward passes; a checkpoint not timed yet (before the first
        `save_steps`) as nothing."""
        evaluation = self._pauses.get("evaluation", 0.0)
        reserve = evaluation + self._pauses.get("sample", evaluation) + self._pauses.get("checkpoint", 0.0)
        return reserve + self._pauses.get("tasks", 0.0)

    def expected_steps(self, step: int) -> int | None:
        """How many steps the budget allows at the pace since this process's first step, evaluations and
        checkpoints included (the first step, which may compile, is left out); None before a pace is known."""
        if self.budget is None or self.first_step is None or step <= self.first_step[0]:
            return None
        first_step, first_used = self.first_step
        used = self.used()
        pace = (used - first_used) / (step - first_step)
        return step + int(max(0.0, self.budget - self.reserve() - used) / max(pace, 1e-9))

    def throughput(self) -> dict[str, float | None]:
        """tokens_per_second and mfu (a fraction of peak_flops) over the steps since the last `take_throughput`."""
        if not self._window_steps:
            return {"tokens_per_second": None, "mfu": None}
        tokens_per_second = self._window_steps * self.tokens_per_step / max(self._window_seconds, 1e-9)
        return {
            "tokens_per_second": tokens_per_second,
            "mfu": tokens_per_second * self.flops_per_token / self.peak_flops,
        }

    def take_throughput(self) -> dict[str, float | None]:
        """`throughput()`, then a new window begins (each evaluation takes the throughput since the one before)."""
        figures = self.throughput()
        self._window_steps, self._window_seconds = 0, 0.0
        return figures
