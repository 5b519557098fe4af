"""The Accelerate engine: the book's `train_model_simple` grown up, one flat `fit` over a manual loop.

What a real run adds to the book's loop: AdamW (or Muon) with weight decay on weight matrices only, warmup and
decay over the steps or a time budget, gradient clipping and accumulation, mixed precision, data parallelism across
processes and machines (Accelerate), checkpoints that resume exactly, Ctrl-C / SIGTERM handling and the NaN guard
(the last two through the run's context).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.optimizer import AcceleratedOptimizer
from accelerate.utils import DataLoaderConfiguration, DistributedType, ProjectConfiguration
from torch.distributed.fsdp import FSDPModule
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers.integrations import unset_hf_deepspeed_config

from common.compat import ACCELERATE_SHARED_TENSOR, drop_log_messages
from common.errors import InputError, field
from train.book import generate_sample
from train.checkpoints import LOOP_STATE_FILE
from train.context import RunContext, TrainResult
from train.distributed import (
    accelerate_cpu,
    as_float,
    full_model,
    load_sharded,
    save_sharded,
    shard_model,
    weights_are_sharded,
)
from train.loss import lm_loss, token_losses, window_logits
from train.optimization import build_optimizer, build_scheduler
from train.stability import Rollback
from train.stopping import StopReason
from train.trackers import EXPERIMENT
from train.windows import TrainingBatches

# Accelerate warns that checkpoints store the tied output head once; loading ties it again, so the warning is noise.
drop_log_messages(*ACCELERATE_SHARED_TENSOR)


def fit(context: RunContext) -> TrainResult:
    """Trains `context.model` with the options in `context` through a manual Accelerate loop.

    Per optimizer step: `grad_accum` micro-batches of `batch_size` windows per process, the book's loss,
    clipping, the optimizer, the scheduler. Evaluates at step 0, every `eval_freq` steps and at the end; prints a
    sample after each epoch; saves checkpoints every `save_steps` steps, at the end and when stopped by a signal.
    The end is the step limit or, with a time budget, the last step the budget has room for.
    """
    plan, clock = context.plan, context.clock
    evaluation, logging = context.options.evaluation, context.options.logging
    run = prepare(context)
    position = LoopPosition.resume(context, run)
    clock.start(position.time_used)
    progress = tqdm(
        total=plan.total_steps,
        initial=position.step,
        desc="training",
        unit="step",
        dynamic_ncols=True,
        disable=not run.accelerator.is_main_process,
    )
    if position.step == 0 and not context.metrics.records:
        evaluate(context, run, position.step)
    reason = None
    run.model.train()
    while reason is None:
        try:
            for inputs, targets in run.batches:
                step_loss = train_micro_batch(context, run, position, inputs, targets)
                if step_loss is None:  # the accumulation goes on
                    continue
                show_progress(progress, context, position.step, step_loss)
                if logging.report_to:
                    run.accelerator.log(step_logs(context, run, step_loss), step=position.step)
                if position.step % evaluation.eval_freq == 0 or plan.is_last_step(position.step) or clock.out_of_time:
                    evaluate(context, run, position.step)
                if run.batches.epoch_ended:
                    sample(context, run, position)
                reason = context.stop_reason(position.step)
                if (logging.save_steps and position.step % logging.save_steps == 0) or reason is not None:
                    save_checkpoint(context, run, position, reason)
                if reason is not None:
                    break
        except Rollback as rollback:  # a loss that was not finite: back to the last good checkpoint
            position = LoopPosition.load(context, run, rollback.checkpoint, rollback)
            progress.n = position.step
    progress.close()
    if position.sampled_at != position.step:
        sample(context, run, position)  # the run ended inside an epoch: show where it got to
    if logging.report_to:
        run.accelerator.end_training()
    run.accelerator.wait_for_everyone()
    context.model = full_model(run.accelerator, run.model, context.config)
    # Training is over: transformers would otherwise build every model loaded from now on (the main process's
    # check of the model directory) partitioned by ZeRO-3, a collective the other processes are not in.
    unset_hf_deepspeed_config()
    return context.result(reason, position.step)


# ---------------------------------------------------------------------------------------------------------------------
# What fit uses


@dataclass
class LoopObjects:
    """The run's objects after `accelerator.prepare`, and the loss of the optimizer step in progress."""

    accelerator: Accelerator
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    batches: TrainingBatches
    train_eval_loader: DataLoader
    val_loader: DataLoader
    accumulated_loss: torch.Tensor


@dataclass
class LoopPosition:
    """Where the loop is: optimizer steps done and the seconds of training used when it was last saved or resumed
    (saved in every checkpoint as loop_state.json, with the position of the training batches); also the step of
    the last sample printed (not saved)."""

    step: int = 0
    time_used: float = 0.0
    sampled_at: int = -1

    @classmethod
    def resume(cls, context: RunContext, run: LoopObjects) -> LoopPosition:
        """The start: step 0, or the state of the checkpoint the run resumes from (loaded into every object)."""
        if context.resume_from is None:
            return cls()
        position = cls.load(context, run, context.resume_from)
        context.log(f"resumed from {context.resume_from} at step {position.step} (epoch {run.batches.epoch + 1})")
        return position

    @classmethod
    def load(
        cls, context: RunContext, run: LoopObjects, checkpoint: Path, rollback: Rollback | None = None
    ) -> LoopPosition:
        """The state of `checkpoint`, loaded into every object: weights, optimizer, schedule, random generators, the
        batches' position and the step guard's (which, after a `rollback`, goes on to skip the steps since)."""
        run.accelerator.load_state(str(checkpoint))
        if isinstance(run.model, FSDPModule):  # sharded by `shard_model`: not Accelerate's to load
            load_sharded(run.model, run.optimizer, checkpoint)
        saved = json.loads((checkpoint / LOOP_STATE_FILE).read_text(encoding="utf-8"))
        run.batches.load(checkpoint, saved)
        run.optimizer.zero_grad()  # a rollback leaves the step it broke off half accumulated
        run.accumulated_loss.zero_()
        if rollback is None:
            context.guard.load_state_dict(saved["guard"])
        else:
            context.roll_back(rollback, saved["guard"])
        return cls(saved["step"], saved.get("time_used", 0.0))


def step_logs(context: RunContext, run: LoopObjects, step_loss: float) -> dict[str, float]:
    """What the trackers hear after each step: its loss, learning rate and gradient norm (before clipping)."""
    return {
        "train/step_loss": step_loss,
        "train/lr": run.scheduler.get_last_lr()[0],
        "train/grad_norm": context.last_grad_norm,
    }


def show_progress(progress: tqdm, context: RunContext, step: int, step_loss: float) -> None:
    """The bar after a step: its loss, tokens/s and MFU since the last evaluation, the steps expected in all."""
    expected = context.expected_steps(step)
    if expected is not None and progress.total != expected:
        progress.total = expected
    progress.set_postfix(loss=f"{step_loss:.3f}", **context.progress_postfix(), refresh=False)
    progress.update(1)


def prepare(context: RunContext) -> LoopObjects:
    """The accelerator, the training batches, the optimizer and the scheduler, and the evaluation loaders, all
    through `accelerator.prepare`; on CPU processes under FSDP2 the model is sharded here (`shard_model`) and
    Accelerate, which would wrap it in DDP, takes the rest."""
    optimisation, parallelism = context.options.optimisation, context.plan.parallelism
    accelerator = make_accelerator(context)
    if parallelism.shards_itself:  # before the optimizer, which then holds the shards
        shard_model(context.model, parallelism.reshard_after_forward)
        context.model.forward = accelerator.autocast()(context.model.forward)  # what `prepare` adds to a model
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        # DeepSpeed counts the batch and clips inside its step: it takes the run's batch (Accelerate would read it
        # from a training DataLoader, which this loop does not hand it) and clipping (Accelerate's default is 1).
        config = accelerator.state.deepspeed_plugin.deepspeed_config
        config.update(
            train_micro_batch_size_per_gpu=optimisation.batch_size, gradient_clipping=optimisation.max_grad_norm
        )
    # Each process draws its own share of the windows (a stream keeps its position in its checkpoints).
    batches = context.data.train.training_batches(
        accelerator, optimisation.batch_size, context.plan.steps_per_epoch * optimisation.grad_accum
    )
    optimizer = build_optimizer(context.model, optimisation)
    scheduler = build_scheduler(optimizer, optimisation, context.plan.total_steps, context.clock)
    # Each loader has its own generator: creating an iterator then draws nothing from the global one, which the
    # dropout masks use, so a resumed run sees the masks the uninterrupted run saw.
    loaders = [
        DataLoader(windows, batch_size=optimisation.batch_size, generator=torch.Generator())
        for windows in (context.train_eval, context.val_eval)
    ]
    if parallelism.shards_itself:  # the optimizer wrapped as `prepare` would (it steps once per accumulation)
        model, optimizer = context.model, AcceleratedOptimizer(optimizer, device_placement=False)
        train_eval_loader, val_loader, scheduler = accelerator.prepare(*loaders, scheduler)
    else:
        model, optimizer, train_eval_loader, val_loader, scheduler = accelerator.prepare(
            context.model, optimizer, *loaders, scheduler
        )
    if context.options.logging.report_to:
        accelerator.init_trackers(EXPERIMENT, config=_tracker_config(context.options.fields()))
    return LoopObjects(
        accelerator,
        model,
        optimizer,
        scheduler,
        batches,
        train_eval_loader,
        val_loader,
        accumulated_loss=torch.zeros((), device=accelerator.device),
    )


def make_accelerator(context: RunContext) -> Accelerator:
    """Accelerator for the run: mixed precision, accumulation, seedable shuffling, trackers, torch.compile."""
    optimisation, report_to = context.options.optimisation, context.options.logging.report_to
    try:
        return Accelerator(
            cpu=accelerate_cpu(),
            mixed_precision=optimisation.mixed_precision,
            gradient_accumulation_steps=optimisation.grad_accum,
            # The shuffle order of epoch e comes from seed + e, the same on every process and after a resume.
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=optimisation.seed),
            # The scheduler steps once per optimizer step; Accelerate would otherwise step it once per process.
            step_scheduler_with_optimizer=False,
            log_with=report_to or None,
            project_config=ProjectConfiguration(
                project_dir=str(context.directory.root), logging_dir=str(context.directory.root / "tensorboard")
            ),
            dynamo_backend="inductor" if optimisation.compile else None,
        )
    except (ValueError, ImportError, RuntimeError) as error:
        raise InputError(
            f"{field('mixed_precision')} {optimisation.mixed_precision} / {field('report_to')} {report_to}: {error}"
        ) from error


def train_micro_batch(
    context: RunContext, run: LoopObjects, position: LoopPosition, inputs: torch.Tensor, targets: torch.Tensor
) -> float | None:
    """Forward and backward for one micro-batch; on the last of an accumulation also clipping, AdamW and the
    scheduler. Returns that optimizer step's mean loss over processes and micro-batches, else None."""
    accelerator = run.accelerator
    with accelerator.accumulate(run.model):
        loss = lm_loss(window_logits(run.model, inputs, context.document_eos_id), targets)
        run.accumulated_loss += loss.detach()
        if accelerator.sync_gradients:
            grad_accum = context.options.optimisation.grad_accum
            step_loss = accelerator.reduce(run.accumulated_loss, reduction="mean").item() / grad_accum
            context.check_loss(step_loss, position.step + 1)
        accelerator.backward(loss)
        if accelerator.sync_gradients:
            max_grad_norm = context.options.optimisation.max_grad_norm
            grad_norm = as_float(accelerator.clip_grad_norm_(run.model.parameters(), max_grad_norm))
            context.guard_step(position.step + 1, step_loss, grad_norm, run.optimizer)
        run.optimizer.step()
        run.optimizer.zero_grad()
    if not accelerator.sync_gradients:
        return None
    position.step += 1
    context.step_ended(position.step)
    run.scheduler.step()
    run.accumulated_loss.zero_()
    return step_loss


def evaluate_loss(
    model: torch.nn.Module, loader: DataLoader, accelerator: Accelerator, document_eos_id: int | None = None
) -> float:
    """Mean cross-entropy per token over every window of `loader`, gathered from all processes.

    Computed without a batch's [batch, tokens, vocab] logits (`token_losses`), except under FSDP or DeepSpeed,
    whose sharded weights are whole only inside the wrapped model's forward.
    """
    model.eval()
    unwrapped = None if weights_are_sharded(accelerator, model) else accelerator.unwrap_model(model)
    losses = []
    with torch.no_grad(), accelerator.autocast():
        for inputs, targets in loader:
            if unwrapped is None:
                logits = window_logits(model, inputs, document_eos_id)  # [batch, tokens, vocab]
                per_token = F.cross_entropy(logits.transpose(1, 2).float(), targets, reduction="none")
            else:
                per_token = token_losses(unwrapped, inputs, targets, document_eos_id)  # [batch, tokens]
            losses.append(accelerator.gather_for_metrics(per_token.mean(dim=1)))
    model.train()
    return torch.cat(losses).mean().item()


def evaluate(context: RunContext, run: LoopObjects, step: int) -> None:
    """Measures the fixed training and validation windows and records the evaluation (metrics, trackers)."""
    record = context.record_evaluation(
        step,
        evaluate_loss(run.model, run.train_eval_loader, run.accelerator, context.document_eos_id),
        evaluate_loss(run.model, run.val_loader, run.accelerator, context.document_eos_id),
        run.accelerator,
        run.model,
    )
    if context.options.logging.report_to:  # trackers take numbers: the first evaluation has no throughput yet
        run.accelerator.log(
            {key: value for key, value in record.items() if key != "step" and value is not None}, step=step
        )


def sample(context: RunContext, run: LoopObjects, position: LoopPosition) -> None:
    """Prints a continuation of the run's start context. Every process generates: under FSDP or DeepSpeed ZeRO-3
    each forward pass gathers the weights from all."""
    evaluation = context.options.evaluation
    text = generate_sample(
        run.accelerator.unwrap_model(run.model),
        context.data.tokenizer,
        context.start_context,
        evaluation.max_new_tokens,
        evaluation.temperature,
        evaluation.sampling_top_k(),
        context.options.optimisation.seed,
    )
    position.sampled_at = position.step
    context.log(f"Sample: {text!r}")
    context.clock.paused("sample")


def save_checkpoint(context: RunContext, run: LoopObjects, position: LoopPosition, reason: StopReason | None) -> Path:
    """`accelerator.save_state` (model, optimizer, scheduler, RNG of every process) into checkpoint-<step>, with the
    training batches' position.

    Written through `RunDirectory.writing_checkpoint`, completed by the loop state file, then renamed: an
    interrupted write leaves the previous checkpoints as they were. The tokenizer and config go along, so a
    checkpoint is a self-contained description of the run at that step. Weights that are no longer finite are
    never saved.
    """
    accelerator, directory = run.accelerator, context.directory
    context.check_weights(run.model, position.step)
    with directory.writing_checkpoint(position.step, run.model, context.options.logging.save_total_limit) as staging:
        accelerator.save_state(str(staging))
        if isinstance(run.model, FSDPModule):  # sharded by `shard_model`: not Accelerate's to save
            save_sharded(run.model, run.optimizer, staging)
        batches_position = run.batches.save(staging)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            context.data.tokenizer.save_pretrained(staging)
            context.config.save_pretrained(staging)
            with open(staging / LOOP_STATE_FILE, "w", encoding="utf-8") as stream:
                position.time_used = context.clock.used()
                state = {
                    "step": position.step,
                    **batches_position,
                    "time_used": position.time_used,
                    "reason": reason,  # why the run stopped here; null for a checkpoint on the way
                    "budget_spent": context.clock.spent_budget(),
                    "guard": context.guard.state_dict(),
                }
                json.dump(state, stream, indent=2)
    context.clock.paused("checkpoint")
    return directory.checkpoints / f"checkpoint-{position.step}"


def _tracker_config(fields: dict[str, Any]) -> dict[str, Any]:
    """Hyperparameters for TensorBoard's hparams view: scalars only."""
    return {key: value for key, value in fields.items() if isinstance(value, (int, float, str, bool))}
