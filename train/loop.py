"""Training loops: the book's chapter 5 functions for GPTScratchForCausalLM, and the same loop grown up on Accelerate.

The book's functions keep their names, arguments and printed lines (`calc_loss_batch`, `calc_loss_loader`,
`evaluate_model`, `generate_and_print_sample`, `train_model_simple`), so chapter 5's code runs with this package's
model and loaders. `fit` is `train_model_simple` with what a real run needs: AdamW with weight decay on weight
matrices only, warmup and cosine decay, gradient clipping and accumulation, mixed precision, data parallelism
across processes and machines, checkpoints that resume exactly, Ctrl-C / SIGTERM handling, and NaN detection.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_scheduler

from convert.commands import UsageError
from modeling_gptscratch import GPTScratchForCausalLM, causal_lm_loss, text_to_token_ids, token_ids_to_text
from train.data import document_position_ids
from train.run import (
    LOOP_STATE_FILE,
    RunContext,
    TrainingDiverged,
    TrainResult,
    any_process,
    check_finite_weights,
    format_evaluation,
    fused_adamw,
    full_model,
    metrics_record,
    save_best_model,
    scheduler_name,
    use_cpu,
)

# Accelerate warns that checkpoints store the tied output head once; loading ties it again, so the warning is noise.
logging.getLogger("accelerate.utils.other").addFilter(lambda record: "Removed shared tensor" not in record.getMessage())

# ---------------------------------------------------------------------------------------------------------------------
# The book's functions


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits [batch, tokens, vocab] against targets [batch, tokens] (already shifted)."""
    return causal_lm_loss(logits, labels=None, shift_labels=targets)


def calc_loss_batch(
    input_batch: torch.Tensor, target_batch: torch.Tensor, model: torch.nn.Module, device: torch.device | str
) -> torch.Tensor:
    """The book's `calc_loss_batch`: the mean next-token cross-entropy of one batch, a scalar tensor.

    input_batch, target_batch: [batch, tokens] token IDs, the targets being the inputs shifted by one.
    """
    input_batch, target_batch = input_batch.to(device), target_batch.to(device)
    logits = model(input_batch, use_cache=False).logits  # [batch, tokens, vocab]
    return lm_loss(logits, target_batch)


def calc_loss_loader(
    data_loader: DataLoader, model: torch.nn.Module, device: torch.device | str, num_batches: int | None = None
) -> float:
    """The book's `calc_loss_loader`: the mean of the first `num_batches` batch losses (all by default).

    NaN for an empty loader, as in the book.
    """
    if len(data_loader) == 0:
        return float("nan")
    num_batches = len(data_loader) if num_batches is None else min(num_batches, len(data_loader))
    total_loss = 0.0
    for i, (input_batch, target_batch) in enumerate(data_loader):
        if i >= num_batches:
            break
        total_loss += calc_loss_batch(input_batch, target_batch, model, device).item()
    return total_loss / num_batches


def evaluate_model(
    model: torch.nn.Module, train_loader: DataLoader, val_loader: DataLoader, device: torch.device | str, eval_iter: int
) -> tuple[float, float]:
    """The book's `evaluate_model`: (train loss, validation loss) over `eval_iter` batches each, in eval mode."""
    model.eval()
    with torch.no_grad():
        train_loss = calc_loss_loader(train_loader, model, device, num_batches=eval_iter)
        val_loss = calc_loss_loader(val_loader, model, device, num_batches=eval_iter)
    model.train()
    return train_loss, val_loss


def generate_sample(
    model: GPTScratchForCausalLM,
    tokenizer: Any,
    start_context: str,
    max_new_tokens: int = 50,
    temperature: float = 0.0,
    top_k: int | None = None,
    seed: int = 123,
) -> str:
    """A continuation of `start_context`; sampling draws from its own seeded generator, never from the training's."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    encoded = text_to_token_ids(start_context, tokenizer).to(device)  # [1, tokens]
    encoded = encoded[:, -model.config.context_length :]
    generator = torch.Generator(device=device).manual_seed(seed)
    token_ids = model.generate(
        encoded, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, generator=generator
    )
    model.train(was_training)
    return token_ids_to_text(token_ids, tokenizer)


def generate_and_print_sample(
    model: GPTScratchForCausalLM, tokenizer: Any, device: torch.device | str, start_context: str
) -> None:
    """The book's `generate_and_print_sample`: 50 greedy tokens after `start_context`, printed on one line."""
    print(generate_sample(model.to(device), tokenizer, start_context).replace("\n", " "))


def train_model_simple(
    model: GPTScratchForCausalLM,
    train_loader: DataLoader,
    val_loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    device: torch.device | str,
    num_epochs: int,
    eval_freq: int,
    eval_iter: int,
    start_context: str,
    tokenizer: Any,
) -> tuple[list[float], list[float], list[int]]:
    """The book's `train_model_simple`: returns (train_losses, val_losses, track_tokens_seen), one per evaluation.

    Evaluates after global step 0 and every `eval_freq` steps; prints a sample after each epoch.
    """
    train_losses, val_losses, track_tokens_seen = [], [], []
    tokens_seen, global_step = 0, -1
    for epoch in range(num_epochs):
        model.train()
        for input_batch, target_batch in train_loader:
            optimizer.zero_grad()
            loss = calc_loss_batch(input_batch, target_batch, model, device)
            loss.backward()
            optimizer.step()
            tokens_seen += input_batch.numel()
            global_step += 1
            if global_step % eval_freq == 0:
                train_loss, val_loss = evaluate_model(model, train_loader, val_loader, device, eval_iter)
                train_losses.append(train_loss)
                val_losses.append(val_loss)
                track_tokens_seen.append(tokens_seen)
                print(f"Ep {epoch+1} (Step {global_step:06d}): Train loss {train_loss:.3f}, Val loss {val_loss:.3f}")
        generate_and_print_sample(model, tokenizer, device, start_context)
    return train_losses, val_losses, track_tokens_seen


# ---------------------------------------------------------------------------------------------------------------------
# The grown-up loop


def decay_parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on weight matrices and embeddings (2-D), none on biases and LayerNorm (1-D).

    The same split as the Trainer's default (LayerNorm weights and biases excluded), so the engines agree.
    """
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def window_logits(model: torch.nn.Module, inputs: torch.Tensor, document_eos_id: int | None) -> torch.Tensor:
    """The model's logits [batch, tokens, vocab] for windows [batch, tokens]; with `document_eos_id` (the
    `--document-mask` option), attention stays inside each document the `<|endoftext|>` separators delimit."""
    position_ids = None if document_eos_id is None else document_position_ids(inputs, document_eos_id)
    return model(inputs, position_ids=position_ids, use_cache=False).logits


def evaluate_loss(
    model: torch.nn.Module, loader: DataLoader, accelerator: Accelerator, document_eos_id: int | None = None
) -> float:
    """Mean cross-entropy per token over every window of `loader`, gathered from all processes."""
    model.eval()
    losses = []
    with torch.no_grad():
        for inputs, targets in loader:
            logits = window_logits(model, inputs, document_eos_id)  # [batch, tokens, vocab]
            per_window = F.cross_entropy(logits.transpose(1, 2).float(), targets, reduction="none").mean(dim=1)
            losses.append(accelerator.gather_for_metrics(per_window))
    model.train()
    return torch.cat(losses).mean().item()


def make_accelerator(context: RunContext) -> Accelerator:
    """Accelerator for the run: mixed precision, accumulation, seedable shuffling, trackers, torch.compile."""
    options = context.options
    try:
        return Accelerator(
            cpu=use_cpu(),
            mixed_precision=options.mixed_precision,
            gradient_accumulation_steps=options.grad_accum,
            # The shuffle order of epoch e comes from seed + e, the same on every process and after a resume.
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=options.seed),
            # The scheduler steps once per optimizer step; Accelerate would otherwise step it once per process.
            step_scheduler_with_optimizer=False,
            log_with=options.report_to or None,
            project_config=ProjectConfiguration(
                project_dir=str(context.directory.root), logging_dir=str(context.directory.root / "tensorboard")
            ),
            dynamo_backend="inductor" if options.compile else None,
        )
    except (ValueError, ImportError, RuntimeError) as error:
        raise UsageError(
            f"--mixed-precision {options.mixed_precision} / --report-to {options.report_to}: {error}"
        ) from error


def fit(context: RunContext) -> TrainResult:
    """Trains `context.model` with the options in `context` through a manual Accelerate loop.

    Per optimizer step: `grad_accum` micro-batches of `batch_size` windows per process, the book's loss,
    clipping, AdamW, the scheduler. Evaluates at step 0, every `eval_freq` steps and at the end; prints a sample
    after each epoch; saves checkpoints every `save_steps` steps, at the end and when stopped by a signal.
    """
    options = context.options
    accelerator = make_accelerator(context)
    plan = context.plan
    model = context.model
    optimizer = torch.optim.AdamW(
        decay_parameter_groups(model, options.weight_decay), lr=options.lr, betas=(0.9, 0.999), eps=1e-8,
        fused=fused_adamw(),
    )
    scheduler = get_scheduler(
        scheduler_name(options.lr_scheduler, options.warmup_steps),
        optimizer,
        num_warmup_steps=options.warmup_steps,
        num_training_steps=plan.total_steps,
    )
    # Each loader has its own generator: creating an iterator then draws nothing from the global one, which the
    # dropout masks use, so a resumed run sees the masks the uninterrupted run saw.
    train_loader = DataLoader(
        context.data.train, batch_size=options.batch_size, shuffle=True, drop_last=True, generator=torch.Generator()
    )
    train_eval_loader = DataLoader(context.train_eval, batch_size=options.batch_size, generator=torch.Generator())
    val_loader = DataLoader(context.val_eval, batch_size=options.batch_size, generator=torch.Generator())
    model, optimizer, train_loader, train_eval_loader, val_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, train_eval_loader, val_loader, scheduler
    )
    if options.report_to:
        accelerator.init_trackers("gptscratch", config=_tracker_config(options))

    document_eos_id = context.data.tokenizer.eos_token_id if options.document_mask else None
    micro_batches_per_epoch = plan.steps_per_epoch * options.grad_accum
    step, epoch, micro_in_epoch = 0, 0, 0
    if context.resume_from is not None:
        accelerator.load_state(str(context.resume_from))
        saved = json.loads((context.resume_from / LOOP_STATE_FILE).read_text(encoding="utf-8"))
        step, epoch, micro_in_epoch = saved["step"], saved["epoch"], saved["micro_batches_in_epoch"]
        context.log(f"resumed from {context.resume_from} at step {step} (epoch {epoch + 1})")
    last_checkpoint = context.resume_from

    def evaluate_and_record() -> dict[str, Any]:
        record = metrics_record(
            step,
            step / plan.steps_per_epoch,
            step * plan.tokens_per_step,
            evaluate_loss(model, train_eval_loader, accelerator, document_eos_id),
            evaluate_loss(model, val_loader, accelerator, document_eos_id),
        )
        context.metrics.append(record)
        if context.early_stopping.update(record) and options.early_stopping_patience is not None:
            best = full_model(accelerator, model, context.config)
            if best is not None:
                save_best_model(best, context.directory.best_model)
        if options.report_to:
            accelerator.log({k: v for k, v in record.items() if k != "step"}, step=step)
        if accelerator.is_main_process:
            progress.write(format_evaluation(record))
        return record

    def save(reason: str) -> None:
        nonlocal last_checkpoint
        check_finite_weights(model, step, last_checkpoint)
        state = {"step": step, "epoch": epoch, "micro_batches_in_epoch": micro_in_epoch, "reason": reason}
        if micro_in_epoch >= micro_batches_per_epoch:  # a finished epoch resumes at the start of the next
            state.update(epoch=epoch + 1, micro_batches_in_epoch=0)
        last_checkpoint = save_checkpoint(accelerator, context, state)

    sampled_at = -1

    def sample() -> None:
        nonlocal sampled_at
        sampled_at = step
        # Every process generates: under FSDP or DeepSpeed ZeRO-3 each forward pass gathers the weights from all.
        text = generate_sample(
            accelerator.unwrap_model(model), context.data.tokenizer, context.start_context,
            options.max_new_tokens, options.temperature, options.top_k, options.seed,
        )
        if accelerator.is_main_process:
            progress.write(f"Sample: {text!r}")

    progress = tqdm(
        total=plan.total_steps, initial=step, desc="training", unit="step", dynamic_ncols=True,
        disable=not accelerator.is_main_process,
    )
    if step == 0 and not context.metrics.records:
        evaluate_and_record()
    reason = "completed"
    model.train()
    window_start, tokens_in_window = time.perf_counter(), 0
    while step < plan.total_steps and reason == "completed":
        train_loader.set_epoch(epoch)
        batches = accelerator.skip_first_batches(train_loader, micro_in_epoch) if micro_in_epoch else train_loader
        accumulated = torch.zeros((), device=accelerator.device)
        for inputs, targets in batches:
            with accelerator.accumulate(model):
                loss = lm_loss(window_logits(model, inputs, document_eos_id), targets)
                accumulated += loss.detach()
                if accelerator.sync_gradients:
                    # Checked before the update, so a non-finite loss never reaches the weights.
                    step_loss = accelerator.reduce(accumulated, reduction="mean").item() / options.grad_accum
                    if not math.isfinite(step_loss):
                        raise TrainingDiverged(
                            f"the training loss became {step_loss} at step {step + 1}; stopped without updating "
                            f"the weights. The last good checkpoint is {last_checkpoint or 'none (no save yet)'}; "
                            "resume from it with a lower --lr, more --warmup-steps or --max-grad-norm"
                        )
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), options.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
            micro_in_epoch += 1
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            step += 1
            accumulated.zero_()
            tokens_in_window += plan.tokens_per_step
            elapsed = time.perf_counter() - window_start
            progress.set_postfix(loss=f"{step_loss:.3f}", tok_s=f"{tokens_in_window / max(elapsed, 1e-9):,.0f}")
            progress.update(1)
            if options.report_to:
                accelerator.log({"train/step_loss": step_loss, "train/lr": scheduler.get_last_lr()[0]}, step=step)
            end_of_epoch = micro_in_epoch >= micro_batches_per_epoch
            evaluate_now = step % options.eval_freq == 0 or step == plan.total_steps
            if evaluate_now:
                evaluate_and_record()
                if context.early_stopping.should_stop:
                    reason = "early-stopped"
            if end_of_epoch:
                sample()
            if any_process(context.stop.requested):
                reason = "interrupted"
            save_now = (options.save_steps and step % options.save_steps == 0) or step == plan.total_steps
            if save_now or reason != "completed":
                save(reason)
            if evaluate_now or end_of_epoch or save_now:  # tokens/s measures training only
                window_start, tokens_in_window = time.perf_counter(), 0
            if reason != "completed" or step >= plan.total_steps or end_of_epoch:
                break
        if micro_in_epoch >= micro_batches_per_epoch:
            epoch, micro_in_epoch = epoch + 1, 0
    progress.close()
    if sampled_at != step:
        sample()  # the run ended inside an epoch: show where it got to
    if options.report_to:
        accelerator.end_training()
    accelerator.wait_for_everyone()
    context.model = full_model(accelerator, model, context.config)
    return TrainResult(
        reason=reason,
        steps=step,
        epochs=step / plan.steps_per_epoch,
        tokens_seen=step * plan.tokens_per_step,
        output_dir=context.directory.root,
        metrics=context.metrics.records,
        last_checkpoint=last_checkpoint,
        signal_number=context.stop.signal_number,
    )


def save_checkpoint(accelerator: Accelerator, context: RunContext, state: dict[str, Any]) -> Path:
    """`accelerator.save_state` (model, optimizer, scheduler, RNG of every process) into checkpoint-<step>.

    Written into `.tmp-checkpoint-<step>`, completed by the loop state file, then renamed: an interrupted write
    leaves the previous checkpoints as they were. The tokenizer and config go along, so a checkpoint is a
    self-contained description of the run at that step.
    """
    directory = context.directory
    final = directory.checkpoints / f"checkpoint-{state['step']}"
    staging = directory.checkpoints / f".tmp-checkpoint-{state['step']}"
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        context.data.tokenizer.save_pretrained(staging)
        context.config.save_pretrained(staging)
        with open(staging / LOOP_STATE_FILE, "w", encoding="utf-8") as stream:
            json.dump(state, stream, indent=2)
        if final.exists():  # the same step saved again (a stop request right after a scheduled save)
            shutil.rmtree(final)
        os.replace(staging, final)
        directory.rotate_checkpoints(context.options.save_total_limit)
    accelerator.wait_for_everyone()
    return final


def _tracker_config(options: Any) -> dict[str, Any]:
    """Hyperparameters for TensorBoard's hparams view: scalars only."""
    return {
        key: value for key, value in vars(options).items() if isinstance(value, (int, float, str, bool))
    }
