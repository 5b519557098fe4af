"""One training run, whichever engine: options -> data -> model -> engine -> model directory.

`train(TrainOptions.from_fields(...))` is what `gptscratch-train` does: check the options and the output directory
(or find the checkpoint to resume), prepare the data, build the model, print the plan, hand a `RunContext` to an
engine (`train.loop.fit` for the manual Accelerate loop, `train.trainer.fit` for the Hugging Face Trainer), then
write the model directory, the loss plot and `training_summary.json`. `verify_model_directory` reloads the
directory through `AutoModelForCausalLM`, as the command's last check. The output directory's layout is in
`train.checkpoints`.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils import set_seed
from torch.utils.data import Subset
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from common.errors import InputError, field
from common.files import check_apart, write_json_atomic, write_text_atomic
from common.model_card import model_card
from convert.sources import read_model_source
from modeling_gptscratch import GPTScratchConfig, GPTScratchForCausalLM
from train import loop, trainer
from train.checkpoints import RUN_FILE, RunDirectory, budget_spent, checkpoint_step
from train.clock import TrainingClock
from train.context import RunContext, TrainResult
from train.data import PreparedData, cache_root, corpus_inputs, prepare_data
from train.distributed import launched, load_gathered, start_processes, sum_over_processes
from train.metrics import MetricsLog, task_metrics
from train.model_config import (
    build_config,
    check_context_length,
    model_context_length,
    source_config,
    typed_model_options,
)
from train.options import DEFAULT_EVAL_FREQ, TrainOptions, resume_differences
from train.plan import PRECISION_DTYPES, Plan, make_plan, measure_matmul_flops
from train.plot import plot_metrics_file
from train.stability import StepGuard
from train.stopping import EarlyStopping, StopReason, StopSignals, stop_reason
from train.streaming import prepare_streamed_data
from train.task_scores import TaskScores
from train.trackers import check_trackers

ENGINES = {"accelerate": loop.fit, "trainer": trainer.fit}
DEFAULT_START_CONTEXT = {"pydoc": 'The "for" statement', "stdlib": "def "}
BOOK_START_CONTEXT = "Every effort moves you"


def options_for_resume(options: TrainOptions, checkpoint: Path) -> TrainOptions:
    """Checks that a resumed run uses the options that shape its numbers; returns the options to run with."""
    saved = json.loads((checkpoint.parent / RUN_FILE).read_text(encoding="utf-8"))
    original = TrainOptions.from_fields(**saved["options"])
    differences = resume_differences(options, original)
    if differences:
        name = differences[0]
        now, before = options.fields()[name], original.fields()[name]
        raise InputError(
            f"{field(name)} {now!r} differs from the checkpoint's {before!r}; resume with the original settings, or "
            f"start a new run in another {field('output_dir')}"
        )
    if saved["num_processes"] != PartialState().num_processes:
        raise InputError(
            f"{field('resume')}: the checkpoint was written by {saved['num_processes']} processes, this run has "
            f"{PartialState().num_processes}; launch the same number to continue exactly"
        )
    return options


def train(options: TrainOptions, log: Callable[[str], None] | None = None) -> TrainResult | None:
    """Runs (or with `dry_run`, only plans) a pretraining run; returns None for a dry run.

    Raises InputError for bad options or data, TrainingDiverged when the loss stops being finite.
    """
    state = start_processes()
    if log is None:  # printed between progress bars, on the main process only
        log = tqdm.write if state.is_main_process else (lambda message: None)
    options.check()
    parallelism = launched(options.optimisation)  # a launch whose strategy would not run is refused here
    options = dataclasses.replace(options, model=typed_model_options(options.model))
    init_from = options.model.init_from
    if not init_from:  # a model of these settings exists: checked now, not once the data is ready (its vocabulary,
        # which only sizes it, is the tokenizer's)
        build_config(options.model, vocab_size=257, eos_token_id=0)
        check_context_length(options.model, options.data.context_length)
    inputs = {
        **corpus_inputs(options.data.data, options.data.tokenizer),
        "cache_dir": [cache_root(options.data.cache_dir)],
        "init_from": [Path(init_from)] if init_from and Path(init_from).exists() else [],
    }
    check_apart(options.run.output_dir, inputs, named=f"{field('output_dir')} {options.run.output_dir}")
    directory = RunDirectory(options.run.output_dir)
    resume_from = directory.resolve_resume(options.run.resume) if options.run.resume else None
    if resume_from is None:
        directory.check_fresh(options.run.overwrite)
    else:
        options = options_for_resume(options, resume_from)
    directory.check_writable()
    check_trackers(options.logging.report_to, options.optimisation.engine)
    source, start_config = None, None  # the model the run starts from, and its config, when it is not random
    if resume_from is not None and init_from:
        start_config = GPTScratchConfig.from_pretrained(resume_from)
    elif init_from:
        source = read_model_source(init_from)
        start_config = source_config(options, source.model.config, source.tokenizer)
    model_context = start_config.context_length if start_config else model_context_length(options.model)
    tasks = TaskScores.for_run(options.evaluation, model_context, options.optimisation.batch_size)
    with state.main_process_first():  # the main process tokenises; the others read its cache
        data = load_data(options, resume_from, model_context, log)
    config = start_config or build_config(options.model, len(data.tokenizer), data.tokenizer.eos_token_id)
    data.tokenizer.model_max_length = config.context_length
    plan = make_plan(options.data, options.model, options.optimisation, config, data, parallelism)
    if options.evaluation.eval_freq is None:
        options = options.replace(eval_freq=min(DEFAULT_EVAL_FREQ, plan.steps_per_epoch))
    ended = end_reason(options, directory, resume_from, plan) if resume_from is not None else None
    if ended is None or options.run.dry_run:  # a run with nothing left to train says so in one line instead
        for line in plan.lines:
            log(line)
    check_batch_fits(options, data, state.num_processes)
    if options.run.dry_run:
        return None
    if ended is not None:  # nothing to train: the model directory is written, or is there already
        return finish_ended_run(options, directory, resume_from, data, config, plan, ended, log)

    context = start_run(options, directory, resume_from, data, config, plan, log)
    context.tasks = tasks
    if source is not None:
        context.model.load_state_dict(source.model.state_dict())
        del source
    with context.stop:
        result = ENGINES[options.optimisation.engine](context)
    result.start_context = context.start_context
    finish_run(context, result)
    return result


def check_batch_fits(options: TrainOptions, data: PreparedData, processes: int) -> None:
    """Refuses a batch (over processes and accumulation) larger than the training windows of an epoch."""
    optimisation = options.optimisation
    windows = data.train.windows_per_epoch
    if windows is not None and windows < optimisation.batch_size * processes * optimisation.grad_accum:
        train = data.train
        raise InputError(
            f"{field('batch_size')} {optimisation.batch_size} (x {processes} processes x {optimisation.grad_accum} "
            f"accumulation steps) is larger than the {windows} training windows ({field('context_length')} "
            f"{train.context_length}, {field('stride')} {train.stride}); lower {field('batch_size')} or "
            f"{field('stride')}, or give more text"
        )


def end_reason(options: TrainOptions, directory: RunDirectory, checkpoint: Path, plan: Plan) -> StopReason | None:
    """Why the run that `checkpoint` belongs to has nothing left to train, with these options (the engines' own
    rule, `train.stopping.stop_reason`, at the checkpoint's step); None when a longer time budget or more steps
    extend the run."""
    step = checkpoint_step(checkpoint)
    metrics = MetricsLog(directory.metrics_file, write=False)
    metrics.load(step)
    spent, budget = budget_spent(checkpoint), options.optimisation.time_budget()
    return stop_reason(
        interrupted=False,
        early_stopped=EarlyStopping(options.evaluation.early_stopping_patience, metrics.records).should_stop,
        out_of_time=budget is not None and spent is not None and budget <= spent,
        last_step=plan.is_last_step(step),
    )


def finish_ended_run(
    options: TrainOptions,
    directory: RunDirectory,
    checkpoint: Path,
    data: PreparedData,
    config: GPTScratchConfig,
    plan: Plan,
    reason: StopReason,
    log: Callable[[str], None],
) -> TrainResult:
    """A resumed run whose checkpoint is its end: no step, evaluation or checkpoint more. The model directory is
    written from the checkpoint when the run was stopped before it was (a kill after the last save); when it is
    there already, nothing is written and the result says so (`already_finished`)."""
    step = checkpoint_step(checkpoint)
    if directory.finished_step() == step:
        metrics = MetricsLog(directory.metrics_file, write=False)
        metrics.load(step)
        return TrainResult(
            reason=reason,
            steps=step,
            epochs=step / plan.steps_per_epoch,
            tokens_seen=step * plan.tokens_per_step,
            output_dir=directory.root,
            metrics=metrics.records,
            last_checkpoint=checkpoint,
            already_finished=True,
        )
    log(f"{checkpoint} is the run's end ({reason.value}, step {step}): writing the model directory from it")
    context = start_run(options, directory, checkpoint, data, config, plan, log)
    load_weights(context.model, checkpoint)
    result = context.result(reason, step)
    result.start_context = context.start_context
    finish_run(context, result)
    return result


def load_weights(model: GPTScratchForCausalLM, directory: Path) -> None:
    """Puts the weights saved in `directory` (a checkpoint, sharded or not, the best model) into `model`."""
    if not load_gathered(model, directory):
        model.load_state_dict(GPTScratchForCausalLM.from_pretrained(directory).state_dict())


def load_data(
    options: TrainOptions, resume_from: Path | None, model_context: int, log: Callable[[str], None]
) -> PreparedData:
    """The run's tokenizer and windows (token files, or a stream), by default `model_context` tokens long. A resumed
    run takes the tokenizer saved in its checkpoint; a run from `init_from`, its model's."""
    state, data = PartialState(), options.data
    corpus = data.corpus_fields()
    if resume_from is not None:
        corpus["tokenizer"] = str(resume_from)
    elif options.model.init_from:
        corpus["tokenizer"] = options.model.init_from
    context_length = data.context_length or model_context
    if data.streaming:
        prepared = prepare_streamed_data(
            dataset=data.dataset,
            dataset_config=data.dataset_config,
            dataset_split=data.dataset_split,
            text_column=data.text_column,
            tokenizer=corpus["tokenizer"],
            vocab_size=data.vocab_size,
            min_frequency=data.min_frequency,
            cache_dir=data.cache_dir,
            context_length=context_length,
            stride=data.stride,
            evaluation_windows=evaluation_windows(options),
            shuffle_buffer=data.shuffle_buffer,
            seed=options.optimisation.seed,
            rank=state.process_index,
            processes=state.num_processes,
            progress=state.is_main_process,
        )
    else:
        prepared = prepare_data(
            context_length=context_length, stride=data.stride, progress=state.is_main_process, log=log, **corpus
        )
    if resume_from is not None:  # describe the checkpoint's tokenizer as the original run did
        run_file = json.loads((resume_from.parent / RUN_FILE).read_text())
        prepared.tokenizer_description = run_file["tokenizer_description"]
    return prepared


def start_run(
    options: TrainOptions,
    directory: RunDirectory,
    resume_from: Path | None,
    data: PreparedData,
    config: GPTScratchConfig,
    plan: Plan,
    log: Callable[[str], None],
) -> RunContext:
    """Creates the output directory (with run.json, the options a resume checks), reloads the metrics of a
    resumed run, builds the initial model, and hands it all over in a RunContext."""
    state = PartialState()
    metrics = MetricsLog(directory.metrics_file, write=state.is_main_process)
    step = checkpoint_step(resume_from) if resume_from else 0
    if state.is_main_process:
        with directory.starting(options.run.overwrite and resume_from is None):
            if resume_from is not None and not (directory.checkpoints / RUN_FILE).exists():
                # Resuming another directory's checkpoint here: its options come along for the next resume.
                shutil.copy2(resume_from.parent / RUN_FILE, directory.checkpoints / RUN_FILE)
            elif resume_from is None:
                write_json_atomic(
                    directory.checkpoints / RUN_FILE,
                    {
                        "options": options.fields(),
                        "num_processes": state.num_processes,
                        "source": data.source,
                        "tokenizer_description": data.tokenizer_description,
                    },
                )
            metrics.load(step)  # and rewrites metrics.jsonl without the evaluations past the checkpoint
    state.wait_for_everyone()
    if not state.is_main_process:
        metrics.load(step)

    optimisation = options.optimisation
    dtype = PRECISION_DTYPES[optimisation.mixed_precision]
    peak_flops = sum_over_processes(options.logging.peak_flops or measure_matmul_flops(state.device, dtype))
    source = (
        field("peak_flops") if options.logging.peak_flops else f"the matmul throughput measured in {str(dtype)[6:]}"
    )
    log(
        f"MFU is against {peak_flops / 1e12:.3g} TFLOP/s: {source}"
        + (f", summed over {state.num_processes} processes" if state.num_processes > 1 else "")
    )

    set_seed(optimisation.seed)
    model = GPTScratchForCausalLM(config)  # the same initial weights in both engines for the same seed
    eval_windows = evaluation_windows(options)
    return RunContext(
        options=options,
        data=data,
        config=config,
        plan=plan,
        model=model,
        directory=directory,
        resume_from=resume_from,
        # A fixed spread of training windows and the first validation windows (the book's val_loader order), so
        # every evaluation measures the same text and draws nothing from the random generators.
        train_eval=data.train.evaluation_windows(eval_windows),
        val_eval=Subset(data.val, range(min(len(data.val), eval_windows))),
        start_context=start_context(options),
        metrics=metrics,
        early_stopping=EarlyStopping(options.evaluation.early_stopping_patience, metrics.records),
        stop=StopSignals(),
        clock=TrainingClock(plan.tokens_per_step, plan.flops_per_token, peak_flops, optimisation.time_budget()),
        guard=StepGuard(
            optimisation.skip_loss_zscore,
            optimisation.skip_grad_zscore,
            optimisation.spike_window,
            optimisation.max_rollbacks,
        ),
        log=log,
    )


def start_context(options: TrainOptions) -> str:
    """The samples' prompt: the option's, else one that suits the embedded corpus, else the book's."""
    data = options.data
    if options.evaluation.start_context:
        return options.evaluation.start_context
    if data.data or data.dataset:
        return BOOK_START_CONTEXT
    return DEFAULT_START_CONTEXT.get(data.embedded, BOOK_START_CONTEXT)


def finish_run(context: RunContext, result: TrainResult) -> None:
    """The loss plot; then, unless the run was interrupted, the model directory (the best model under early
    stopping) and training_summary.json."""
    state, directory = PartialState(), context.directory
    if state.is_main_process and context.metrics.records:
        plot_metrics_file(directory.metrics_file, directory.root / "loss_plot")
    if result.reason == StopReason.INTERRUPTED:
        return
    if state.is_main_process:
        model = context.model  # the trained model with all its weights (`full_model`), on the main process
        kept = context.kept_step(result.steps)
        if kept != result.steps:  # a best model from the last step holds the weights the run ended with
            load_weights(model, directory.best_model)
            context.log(
                f"early stopping: the model directory holds the best model (step {kept}, the lowest validation loss)"
            )
        model.generation_config.max_new_tokens = context.options.evaluation.max_new_tokens
        directory.write_model(model, context.data.tokenizer)
        result.summary = write_summary(context, result)
    state.wait_for_everyone()


def write_summary(context: RunContext, result: TrainResult) -> dict[str, Any]:
    """training_summary.json (the source, tokenizer, final figures and benchmark scores) and, before it, the model
    card README.md that tells them; training_summary.json is written last (`RunDirectory.finished_step`)."""
    records = context.metrics.records
    kept = context.kept_step(result.steps)
    final = next((record for record in reversed(records) if record["step"] == kept), records[-1])
    summary = {
        "source": context.data.source,
        "tokenizer": context.data.tokenizer_description,
        "engine": context.options.optimisation.engine,
        "init_from": context.options.model.init_from,
        "preset": None if context.options.model.init_from else context.options.model.preset,
        "parameters": sum(p.numel() for p in context.model.parameters()),
        "steps": result.steps,
        "epochs": round(result.epochs, 4),
        "tokens_seen": result.tokens_seen,
        "train_loss": final["train_loss"],
        "val_loss": final["val_loss"],
        "train_perplexity": final["train_perplexity"],
        "val_perplexity": final["val_perplexity"],
        "initial_val_loss": records[0]["val_loss"],
        "task_scores": last_task_scores(records),
        "time_s": round(context.clock.used(), 1),
        "stopped": result.reason.value,
    }
    root = context.directory.root
    card = model_card(root.name, context.model, context.data.tokenizer, summary, (root / "loss_plot.png").is_file())
    write_text_atomic(root / "README.md", card)
    write_json_atomic(context.directory.summary_file, summary)
    return summary


def last_task_scores(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The benchmark scores of the last evaluation that ran the tasks, with its step; None without tasks."""
    scored = [record for record in records if task_metrics(record)]
    if not scored:
        return None
    return {"step": scored[-1]["step"], **{name: scored[-1][name] for name in task_metrics(scored[-1])}}


def verify_model_directory(
    directory: Path,
    prompt: str,
    max_new_tokens: int = 30,
    temperature: float = 0.0,
    top_k: int | None = None,
    seed: int = 123,
) -> str:
    """Reloads a written model directory the way users will (Auto classes, trust_remote_code) and generates."""
    model = AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    prompt_ids = torch.tensor([tokenizer.encode(prompt)])
    output = model.generate(
        prompt_ids,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        generator=torch.Generator().manual_seed(seed),
    )
    return tokenizer.decode(output[0].tolist())


def evaluation_windows(options: TrainOptions) -> int:
    """Windows each evaluation measures per split, over all processes."""
    return options.evaluation.eval_iter * options.optimisation.batch_size * PartialState().num_processes
