"""The Hugging Face Trainer engine (`engine trainer`): the same data, model and options on `transformers.Trainer`.

Options map onto `TrainingArguments` (clipping, accumulation, bf16/fp16, evaluation, saving and logging steps,
seeds); the optimizer and learning-rate schedule are the Accelerate loop's (`train.optimization`), through
`create_optimizer` and `create_scheduler`, and the run's clock stops it at the end of `max_time`. The windows are
already the book's (input, target) pairs, so rows go to the model as `input_ids` and `labels` through
`default_data_collator` (the pre-windowed equivalent of the
causal-LM collator with mlm=False), and the loss is the book's: cross-entropy of every position against its
target. `DataCollatorForLanguageModeling(mlm=False)` would copy the inputs into the labels and let the model
shift them, dropping each window's last target: 1 / context_length of the signal, and a loss that no longer
matches the Accelerate loop's.

Evaluations measure the same fixed windows as the Accelerate loop (the Trainer's dict `eval_dataset`: `train` and
`val`), add perplexity to the metrics, and write the same metrics.jsonl records; checkpoints live in
OUTPUT/checkpoints/checkpoint-<step> as the Trainer writes them, and `resume` hands one to
`resume_from_checkpoint`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from transformers import Trainer, TrainerCallback, TrainingArguments, default_data_collator
from transformers.integrations import TensorBoardCallback
from transformers.trainer_callback import ExportableState, ProgressCallback

from common.compat import CheckpointFolder
from train.book import generate_sample
from train.context import RunContext, TrainResult
from train.distributed import full_model, gradient_norm, use_cpu, weights_are_sharded
from train.loss import lm_loss, token_losses
from train.metrics import perplexity, task_metrics
from train.optimization import build_optimizer, build_scheduler
from train.stability import Rollback
from train.stopping import StopReason
from train.trackers import EXPERIMENT, trainer_experiment
from train.windows import document_position_ids

UNLIMITED_STEPS = 2**62  # the Trainer needs a step count: with max_time alone, the clock ends the run


class WindowFeatures(Dataset):
    """Windows as Trainer rows: {"input_ids": [tokens], "labels": [tokens]}, the labels already shifted by one;
    with `document_eos_id` (`document_mask`) also "position_ids" that restart at each document."""

    def __init__(self, windows: Dataset, document_eos_id: int | None = None):
        self.windows = windows
        self.document_eos_id = document_eos_id

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        inputs, targets = self.windows[index]
        row = {"input_ids": inputs, "labels": targets}
        if self.document_eos_id is not None:
            row["position_ids"] = document_position_ids(inputs, self.document_eos_id)
        return row


class GPTScratchTrainer(CheckpointFolder, Trainer):
    """Trainer with the book's loss on pre-shifted labels, the run's optimizer and schedule (the Accelerate loop's),
    perplexity in eval metrics, tokens/s and MFU in training logs, the run's NaN stop, and atomic checkpoints."""

    # compute_loss returns a per-batch mean; the Trainer divides it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(self, *args: Any, run_context: RunContext, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.run_context = run_context
        self.step_loss = 0.0  # the loss of the optimizer step in progress, its micro-batches' so far

    @contextlib.contextmanager
    def checkpoint_parent(self, step: int) -> Iterator[Path]:
        """Where the Trainer writes checkpoint-<step>: a temporary folder (`RunDirectory.writing_checkpoint`), renamed
        once complete, as the Accelerate loop writes its own. In place, a kill mid-way would leave a checkpoint that
        fails to load."""
        directory, keep = self.run_context.directory, self.args.save_total_limit
        with directory.writing_checkpoint(step, self.model, keep) as staging:
            yield staging.parent

    def create_optimizer(self, model: torch.nn.Module | None = None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            optimisation = self.run_context.options.optimisation
            self.optimizer = build_optimizer(self.model if model is None else model, optimisation)
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None) -> Any:
        if self.lr_scheduler is None:
            context = self.run_context
            self.lr_scheduler = build_scheduler(
                optimizer or self.optimizer, context.options.optimisation, context.plan.total_steps, context.clock
            )
        return self.lr_scheduler

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Training logs (those with a loss) also carry tokens/s and MFU since the last evaluation, for the console
        and the trackers."""
        if "loss" in logs:
            logs.update({key: value for key, value in self.run_context.clock.throughput().items() if value is not None})
        super().log(logs, start_time)

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """Mean cross-entropy of logits [batch, tokens, vocab] against labels [batch, tokens] (already shifted)."""
        labels = inputs.pop("labels")
        outputs = model(**inputs, use_cache=False)
        loss = lm_loss(outputs.logits, labels)
        return (loss, outputs) if return_outputs else loss

    def get_eval_dataloader(self, eval_dataset: str | Dataset | None = None) -> DataLoader:
        """Evaluation batches in order and without dropping the last one (`dataloader_drop_last` is for training)."""
        if isinstance(eval_dataset, str):
            eval_dataset = self.eval_dataset[eval_dataset]
        elif eval_dataset is None:
            eval_dataset = self.eval_dataset
        loader = DataLoader(eval_dataset, batch_size=self.args.eval_batch_size, collate_fn=self.data_collator)
        return self.accelerator.prepare(loader)

    def prediction_step(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[torch.Tensor, None, None]:
        """An evaluation batch's mean loss, computed without its [batch, tokens, vocab] logits (`token_losses`, as
        the Accelerate loop's validation) and without keeping any logits; sharded weights (FSDP, DeepSpeed) go
        through the Trainer's own step, whole only inside the wrapped forward."""
        if weights_are_sharded(self.accelerator):
            return super().prediction_step(model, inputs, prediction_loss_only=True, ignore_keys=ignore_keys)
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.accelerator.autocast():
            losses = token_losses(
                self.accelerator.unwrap_model(model),
                inputs["input_ids"],
                inputs["labels"],
                self.run_context.document_eos_id,
            )
        return losses.mean().detach(), None, None

    def evaluation_loop(self, *args: Any, **kwargs: Any) -> Any:
        """Adds `<prefix>_perplexity` = exp(loss) to the metrics, before they are logged and passed to callbacks."""
        output = super().evaluation_loop(*args, **kwargs)
        prefix = kwargs.get("metric_key_prefix", "eval")
        if f"{prefix}_loss" in output.metrics:
            output.metrics[f"{prefix}_perplexity"] = perplexity(output.metrics[f"{prefix}_loss"])
        return output

    def training_step(
        self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], num_items_in_batch: Any = None
    ) -> torch.Tensor:
        """The Trainer's forward and backward of a micro-batch, then the run's checks on every process: a non-finite
        loss rolls back or stops before the optimizer step, and on the accumulation's last micro-batch the step guard
        sees the step's loss and gradient norm before the Trainer clips and steps (`RunContext.guard_step`)."""
        loss = super().training_step(model, inputs, num_items_in_batch)
        context, step = self.run_context, self.state.global_step + 1
        micro_loss = self.accelerator.reduce(loss.detach(), reduction="mean").item()  # divided by the accumulation
        context.check_loss(micro_loss, step)
        self.step_loss += micro_loss
        if self.accelerator.sync_gradients:
            context.guard_step(step, self.step_loss, gradient_norm(model, self.accelerator), self.optimizer)
            self.step_loss = 0.0
        return loss


class RunCallback(TrainerCallback, ExportableState):
    """metrics.jsonl records, progress lines, samples, early stopping, the stop on Ctrl-C / SIGTERM or at the end of
    `max_time`, and the run's clock (its time used is kept in trainer_state.json)."""

    def __init__(self, context: RunContext):
        self.context = context
        self.trainer: Trainer | None = None  # set once the Trainer exists: best models are gathered through it
        self.pending: dict[str, float] = {}
        self.reason = StopReason.COMPLETED
        self.rollback: Rollback | None = None  # set between a rollback and the Trainer's restart from its checkpoint

    def state(self) -> dict[str, Any]:
        clock = self.context.clock
        attributes = {
            "time_used": clock.used(),
            "budget_spent": clock.spent_budget(),
            "guard": self.context.guard.state_dict(),
        }
        return {"args": {}, "attributes": attributes}

    def on_train_begin(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        # A resumed run's state was read from its checkpoint's trainer_state.json, with the time it had used and the
        # step guard's state; a rollback goes on from that state, skipping the steps since.
        saved = state.stateful_callbacks.get(type(self).__name__, {}).get("attributes", {})
        if self.rollback is not None:
            self.context.roll_back(self.rollback, saved["guard"])
            self.rollback = None
        elif "guard" in saved:
            self.context.guard.load_state_dict(saved["guard"])
        if not self.context.clock.running:  # after a rollback, the time spent since the checkpoint still counts
            self.context.clock.start(saved.get("time_used", 0.0))

    def on_optimizer_step(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        # After the update, before the scheduler sets the next step's learning rate (as the Accelerate loop).
        self.context.step_ended(state.global_step + 1)

    def on_evaluate(
        self, args: TrainingArguments, state: Any, control: Any, metrics: dict | None = None, **kwargs: Any
    ) -> None:
        # The dict eval_dataset is evaluated one split at a time; the record is complete after both.
        self.pending.update(metrics or {})
        if "eval_train_loss" not in self.pending or "eval_val_loss" not in self.pending:
            return
        train_loss, val_loss = self.pending.pop("eval_train_loss"), self.pending.pop("eval_val_loss")
        self.pending.clear()
        record = self.context.record_evaluation(
            state.global_step, train_loss, val_loss, self.trainer.accelerator, self.trainer.model_wrapped
        )
        scores = {name: record[name] for name in task_metrics(record) if record[name] is not None}
        if scores:  # to the trackers, as the Trainer logs its own evaluation
            self.trainer.log(scores)
        if self.context.stop_reason(state.global_step) == StopReason.EARLY_STOPPED:
            self.reason = StopReason.EARLY_STOPPED
            control.should_training_stop = control.should_save = True

    def on_step_end(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        # The Trainer ends at its last step by itself; a stop request or the time budget end it here.
        reason = self.context.stop_reason(state.global_step)
        if reason == StopReason.INTERRUPTED:
            control.should_training_stop = control.should_save = True
        elif reason == StopReason.TIME_LIMIT:
            control.should_training_stop = control.should_evaluate = control.should_save = True
        if reason is not None:
            self.reason = reason
        if control.should_save:
            self.context.check_weights(kwargs["model"], state.global_step)

    def on_save(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        self.context.clock.paused("checkpoint")

    def on_epoch_end(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        # Every process generates (sharded weights are gathered by each forward pass); the main one prints.
        evaluation = self.context.options.evaluation
        text = generate_sample(
            kwargs["model"],
            self.context.data.tokenizer,
            self.context.start_context,
            evaluation.max_new_tokens,
            evaluation.temperature,
            evaluation.sampling_top_k(),
            self.context.options.optimisation.seed,
        )
        self.context.log(f"Sample: {text!r}")
        self.context.clock.paused("sample")


class RunProgress(ProgressCallback):
    """The Trainer's progress bar with tokens/s and MFU since the last evaluation; its total is the steps the run
    is expected to end at (with `max_time`, as the clock learns the pace)."""

    def __init__(self, context: RunContext):
        super().__init__()
        self.context = context

    def on_train_begin(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        super().on_train_begin(args, state, control, **kwargs)
        if self.training_bar is not None:
            self.training_bar.total = self.context.plan.total_steps  # not UNLIMITED_STEPS

    def on_step_end(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        if self.training_bar is not None:
            expected = self.context.expected_steps(state.global_step)
            if expected is not None:
                self.training_bar.total = expected
            self.training_bar.set_postfix(self.context.progress_postfix(), refresh=False)
        super().on_step_end(args, state, control, **kwargs)


def training_arguments(context: RunContext, evaluate_first: bool) -> TrainingArguments:
    """The run's options as TrainingArguments. The optimizer and its schedule are built by the run's own code
    (`GPTScratchTrainer.create_optimizer` / `create_scheduler`); lr, weight decay and warmup are set here too for
    the Trainer's logs and saved arguments."""
    options = context.options
    optimisation, evaluation, logging = options.optimisation, options.evaluation, options.logging
    total_steps = context.plan.total_steps or UNLIMITED_STEPS
    return TrainingArguments(
        output_dir=str(context.directory.checkpoints),
        per_device_train_batch_size=optimisation.batch_size,
        per_device_eval_batch_size=optimisation.batch_size,
        max_steps=total_steps,
        learning_rate=optimisation.lr,
        weight_decay=optimisation.weight_decay,
        warmup_steps=optimisation.warmup_steps,
        max_grad_norm=optimisation.max_grad_norm,
        gradient_accumulation_steps=optimisation.grad_accum,
        bf16=optimisation.mixed_precision == "bf16",
        fp16=optimisation.mixed_precision == "fp16",
        torch_compile=optimisation.compile,
        use_cpu=use_cpu(),
        eval_strategy="steps",
        eval_steps=evaluation.eval_freq,
        eval_on_start=evaluate_first,
        prediction_loss_only=True,  # evaluation keeps each batch's loss, never its logits
        save_strategy="steps",
        save_steps=logging.save_steps or total_steps,  # the Trainer also saves at the last step
        save_total_limit=logging.save_total_limit,
        logging_steps=evaluation.eval_freq,
        report_to=[name for name in logging.report_to if name != "tensorboard"] or "none",
        project=EXPERIMENT,  # Trackio's; the other integrations read trainer_experiment's variables
        seed=optimisation.seed,
        data_seed=optimisation.seed,
        dataloader_drop_last=True,
        remove_unused_columns=False,
        # compute_loss is the book's per-batch mean: no token counts to gather across processes.
        average_tokens_across_devices=False,
        ddp_find_unused_parameters=False,
    )


def fit(context: RunContext) -> TrainResult:
    """Trains `context.model` with transformers' Trainer; the same outputs as `train.loop.fit`. A loss that is not
    finite rolls the run back (`train.stability`): a fresh Trainer resumes from the last good checkpoint."""
    callback = RunCallback(context)
    callbacks: list[TrainerCallback] = [callback]
    if "tensorboard" in context.options.logging.report_to:
        from torch.utils.tensorboard import SummaryWriter  # tensorboard is an optional extra

        callbacks.append(TensorBoardCallback(SummaryWriter(log_dir=str(context.directory.root / "tensorboard"))))
    if context.resume_from is not None:
        context.log(f"resuming from {context.resume_from}")
    resume = context.resume_from
    while True:
        trainer = GPTScratchTrainer(
            model=context.model,
            args=training_arguments(context, evaluate_first=resume is None),
            train_dataset=WindowFeatures(context.data.train, context.document_eos_id),
            eval_dataset={
                "train": WindowFeatures(context.train_eval, context.document_eos_id),
                "val": WindowFeatures(context.val_eval, context.document_eos_id),
            },
            data_collator=default_data_collator,
            processing_class=context.data.tokenizer,
            callbacks=callbacks,
            run_context=context,
        )
        callback.trainer = trainer
        if trainer.pop_callback(ProgressCallback) is not None:  # absent when the Trainer's bars are disabled
            trainer.add_callback(RunProgress(context))
        try:
            with trainer_experiment():
                trainer.train(resume_from_checkpoint=str(resume) if resume else None)
            break
        except Rollback as rollback:
            callback.rollback, resume = rollback, rollback.checkpoint
    context.model = full_model(trainer.accelerator, trainer.model_wrapped, context.config)
    return context.result(callback.reason, trainer.state.global_step)
