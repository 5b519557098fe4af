"""What an engine is handed and what it hands back: the run's context, the bookkeeping both engines share, the result.

`train.run` builds a `RunContext` and calls an engine's `fit(context)` (the Accelerate loop in `train.loop`, the
Trainer in `train.trainer`). Both record evaluations, guard against a diverged loss and build their result through
the context, so metrics.jsonl, early stopping, the NaN guard and `TrainResult` are the same code for both.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import broadcast_object_list
from torch.utils.data import Dataset

from common.errors import field
from modeling_gptscratch import GPTScratchConfig, GPTScratchForCausalLM
from train.checkpoints import RunDirectory, best_model_step, checkpoint_step, save_best_model
from train.clock import TrainingClock
from train.data import PreparedData
from train.distributed import any_process, full_model, max_over_processes
from train.metrics import MetricsLog, format_evaluation, metrics_record, throughput_postfix
from train.optimization import skip_next_step
from train.options import TrainOptions
from train.plan import EXPECTATION_STEPS, Plan
from train.stability import Rollback, StepGuard, TrainingDiverged
from train.stopping import EarlyStopping, StopReason, StopSignals, stop_reason
from train.task_scores import TaskScores


@dataclass
class TrainResult:
    """How a run ended: `reason` (with `signal_number` when interrupted); `already_finished`: a resume of a run that
    had ended and written its model directory, so nothing was done."""

    reason: StopReason
    steps: int
    epochs: float
    tokens_seen: int
    output_dir: Path
    metrics: list[dict[str, Any]]
    last_checkpoint: Path | None
    signal_number: int | None = None
    summary: dict[str, Any] | None = None
    start_context: str = ""
    already_finished: bool = False


@dataclass
class RunContext:
    """What an engine gets: the options, data, model and plan, and the bookkeeping both engines share.

    The engine trains `model` and replaces it, on the main process, by the trained model with all its weights.
    `train_eval` and `val_eval` are the fixed windows every evaluation measures; `clock` is told of every step,
    evaluation, sample and checkpoint (the time budget, throughput and MFU).
    """

    options: TrainOptions
    data: PreparedData
    config: GPTScratchConfig
    plan: Plan
    model: GPTScratchForCausalLM
    directory: RunDirectory
    resume_from: Path | None
    train_eval: Dataset
    val_eval: Dataset
    start_context: str
    metrics: MetricsLog
    early_stopping: EarlyStopping
    stop: StopSignals
    clock: TrainingClock
    guard: StepGuard
    log: Callable[[str], None]
    tasks: TaskScores | None = None  # the benchmark tasks scored at evaluations (`eval_tasks`)
    last_grad_norm: float | None = None  # of the last optimizer step, before clipping

    @property
    def document_eos_id(self) -> int | None:
        """The separator `document_mask` splits windows at, or None without it."""
        return self.data.tokenizer.eos_token_id if self.options.data.document_mask else None

    def last_checkpoint(self) -> Path | None:
        """The newest complete checkpoint of this run (the one it resumed from, before it saves its own)."""
        saved = self.directory.checkpoint_dirs()
        return saved[-1] if saved else self.resume_from

    def record_evaluation(
        self, step: int, train_loss: float, val_loss: float, accelerator: Any, model: torch.nn.Module
    ) -> dict[str, Any]:
        """Appends an evaluation to metrics.jsonl, prints the book's progress line, keeps a new best model under early
        stopping, and scores the benchmark tasks when they are due (`eval_tasks`). The clock counts the evaluation
        and the tasks apart. Every process must call it: gathering sharded weights takes all of them."""
        plan = self.plan
        previous_step = self.metrics.records[-1]["step"] if self.metrics.records else None
        record = metrics_record(
            step,
            step / plan.steps_per_epoch,
            step * plan.tokens_per_step,
            train_loss,
            val_loss,
            self.clock.used(),
            grad_norm=self.last_grad_norm if step else None,
            skipped_steps=self.guard.skipped,
            rollbacks=self.guard.rollbacks,
            **self.clock.take_throughput(),
        )
        if self.early_stopping.update(record) and self.early_stopping.keeps_best:
            best = full_model(accelerator, model, self.config)
            if best is not None:
                save_best_model(best, self.directory.best_model, step)
        self.clock.paused("evaluation")
        if self.tasks is not None and self.tasks.due(step, previous_step):
            record.update(self.score_tasks(accelerator, model))
            record["tasks_time_s"] = round(self.clock.paused("tasks"), 3)
        self.metrics.append(record)
        self.log(format_evaluation(record))
        return record

    def score_tasks(self, accelerator: Any, model: torch.nn.Module) -> dict[str, float | None]:
        """The benchmark tasks' scores of the model as it is now: computed on the main process (on the weights
        gathered there when they are sharded) and handed to every process, so every process keeps the same record."""
        whole = full_model(accelerator, model, self.config)
        scores = [None if whole is None else self.tasks.score(whole, self.data.tokenizer)]
        return broadcast_object_list(scores)[0]

    def progress_postfix(self) -> dict[str, str]:
        """What a progress bar shows after a step, in both engines: the gradient norm before clipping, and tokens/s
        and MFU since the last evaluation."""
        norm = {} if self.last_grad_norm is None else {"grad_norm": f"{self.last_grad_norm:.3g}"}
        return {**norm, **throughput_postfix(self.clock.throughput())}

    def step_ended(self, step: int) -> None:
        """Tells the clock an optimizer step ended (`step` steps done), before the schedule sets the next step's
        learning rate; with `max_time`, logs once how many steps the budget is expected to allow."""
        clock = self.clock
        clock.step_ended(step, agree=max_over_processes)
        if clock.budget is not None and step == clock.first_step[0] + EXPECTATION_STEPS:
            expected = self.expected_steps(step)
            self.log(
                f"time budget: {clock.used():.1f} s for {step} steps; {expected} steps expected in "
                f"{clock.budget:g} s (the pace of steps {clock.first_step[0] + 1}-{step}, evaluations and "
                "checkpoints included)"
            )

    def expected_steps(self, step: int) -> int | None:
        """The steps this run is expected to end at: its step limit, or sooner where the time budget ends it;
        None without a step limit until the clock knows the pace."""
        limits = [limit for limit in (self.clock.expected_steps(step), self.plan.total_steps) if limit is not None]
        return min(limits, default=None)

    def check_loss(self, loss: float, step: int) -> None:
        """A loss (the same on every process) that is NaN or infinite raises Rollback to the last good checkpoint,
        or TrainingDiverged once no rollback is left (`StepGuard.non_finite_loss`); called before the optimizer step,
        so such a loss never reaches the weights."""
        if not math.isfinite(loss):
            self.guard.non_finite_loss(step, loss, self.last_checkpoint())

    def guard_step(self, step: int, loss: float, grad_norm: float, optimizer: torch.optim.Optimizer) -> None:
        """Before the update of optimizer step `step`: its loss and gradient norm (before clipping, the same on every
        process) decide whether it is applied (`StepGuard.decide`); a skipped spike is logged."""
        self.last_grad_norm = grad_norm
        reason = self.guard.decide(step, loss, grad_norm)
        if reason is not None:
            skip_next_step(optimizer)
            if step > self.guard.skip_until:  # the steps a rollback skips are announced with it
                self.log(f"step {step} skipped: {reason}; the update is thrown away")

    def roll_back(self, rollback: Rollback, saved_guard: dict[str, Any]) -> int:
        """After an engine has reloaded `rollback.checkpoint`: the guard goes on from the checkpoint's state,
        skipping up to the step that was not finite; the evaluations past the checkpoint are forgotten, and a best
        model kept since is dropped (its evaluation is gone). Returns the checkpoint's step."""
        step = checkpoint_step(rollback.checkpoint)
        self.guard.rolled_back(rollback, saved_guard)
        self.log(
            f"{rollback}: rolled back to {rollback.checkpoint} (rollback {self.guard.rollbacks} of at most "
            f"{self.guard.max_rollbacks}); the steps up to {rollback.step} are skipped"
        )
        self.metrics.load(step)
        self.early_stopping = EarlyStopping(self.options.evaluation.early_stopping_patience, self.metrics.records)
        if self.metrics.write and (best_model_step(self.directory.best_model) or 0) > step:
            shutil.rmtree(self.directory.best_model)
        self.last_grad_norm = None
        return step

    def kept_step(self, steps: int) -> int:
        """The step whose weights the model directory holds after `steps` steps: the best model's under early
        stopping (the last step's when the best is the last, or its weights were dropped by a rollback)."""
        best = self.early_stopping.best_step
        if self.early_stopping.keeps_best and best is not None:
            if best == steps or best_model_step(self.directory.best_model) == best:
                return best
        return steps

    def check_weights(self, model: torch.nn.Module, step: int) -> None:
        """Raises TrainingDiverged, on every process, before a checkpoint would store weights that are NaN or
        infinite. Each process checks the weights it holds (a shard of them under FSDP or DeepSpeed ZeRO-3)."""
        finite = all(bool(torch.isfinite(parameter).all()) for parameter in model.parameters())
        if any_process(not finite):
            raise TrainingDiverged(
                f"the weights stopped being finite at step {step}; not saving them. The last good checkpoint is "
                f"{self.last_checkpoint() or 'none'}; resume from it with a lower {field('lr')} or more "
                f"{field('warmup_steps')}"
            )

    def stop_reason(self, step: int) -> StopReason | None:
        """Why the run stops after `step` optimizer steps, or None: what both engines ask after every step (and the
        Trainer after every evaluation). Every process must call it: a stop request reaching any process stops all,
        so all save together."""
        return stop_reason(
            interrupted=any_process(self.stop.requested),
            early_stopped=self.early_stopping.should_stop,
            out_of_time=self.clock.out_of_time,
            last_step=self.plan.is_last_step(step),
        )

    def result(self, reason: StopReason, step: int) -> TrainResult:
        """The engine's result after `step` optimizer steps; the clock stops."""
        self.clock.stop()
        return TrainResult(
            reason=reason,
            steps=step,
            epochs=step / self.plan.steps_per_epoch,
            tokens_seen=step * self.plan.tokens_per_step,
            output_dir=self.directory.root,
            metrics=self.metrics.records,
            last_checkpoint=self.last_checkpoint(),
            signal_number=self.stop.signal_number,
        )
