"""One training run, whichever engine: options -> data -> model -> engine -> model directory.

`train(TrainOptions(...))` is what `gptscratch-train` does: check the options and the output directory (or find the
checkpoint to resume), prepare the data, build the model, print the plan, hand a `RunContext` to an engine
(`train.loop.fit` for the manual Accelerate loop, `train.trainer.fit` for the Hugging Face Trainer), then write the
model directory, the loss plot and `training_summary.json`. `verify_model_directory` reloads the directory through
`AutoModelForCausalLM`, as the command's last check. The output directory's layout is in `train.checkpoints`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils import set_seed
from torch.utils.data import Subset
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from common.commands import UsageError
from common.files import write_json_atomic
from modeling_gptscratch import PRESETS, GPTScratchConfig, GPTScratchForCausalLM
from train import loop, trainer
from train.checkpoints import RUN_FILE, RunDirectory, budget_spent, checkpoint_step
from train.clock import TrainingClock
from train.data import PreparedData, prepare_data
from train.metrics import EarlyStopping, MetricsLog
from train.options import DEFAULT_EVAL_FREQ, TrainOptions, check_options, flag_name, resume_differences
from train.plan import PRECISION_DTYPES, Plan, make_plan, measure_matmul_flops
from train.plot import plot_metrics_file
from train.processes import StopSignals, sum_over_processes, use_cpu
from train.state import RunContext, TrainResult
from train.streaming import prepare_streamed_data

ENGINES = {"accelerate": loop.fit, "trainer": trainer.fit}
DEFAULT_START_CONTEXT = {"pydoc": 'The "for" statement', "stdlib": "def "}
BOOK_START_CONTEXT = "Every effort moves you"
# GPTScratchConfig's own fields that --config may set; the vocabulary and special tokens follow the tokenizer.
MODEL_FIELDS = tuple(
    name
    for name in GPTScratchConfig.__annotations__
    if name not in {"vocab_size", "bos_token_id", "eos_token_id", "pad_token_id", "auto_map"}
)


def build_config(options: TrainOptions, vocab_size: int, eos_token_id: int) -> GPTScratchConfig:
    """The preset with the overrides, sized to the tokenizer; bad values become UsageErrors naming the option."""
    overrides = options.model_overrides()
    # Pretraining on a budget sees its text a few times at most, where dropout only slows learning (measured: README,
    # "Defaults that learn"); and dropout on the attention weights costs SDPA its fused kernel. Both stay off unless
    # asked for, by flag or by --config drop_rate / attention_dropout.
    overrides["drop_rate"] = options.dropout if options.dropout is not None else overrides.get("drop_rate", 0.0)
    overrides["attention_dropout"] = (
        options.attention_dropout if options.attention_dropout is not None else overrides.get("attention_dropout", 0.0)
    )
    try:
        return GPTScratchConfig.from_preset(
            options.preset, **overrides, vocab_size=vocab_size, bos_token_id=eos_token_id, eos_token_id=eos_token_id
        )
    except (ValueError, TypeError) as error:
        raise UsageError(f"--preset {options.preset} with overrides {overrides}: {error}") from error


def check_model_options(options: TrainOptions) -> TrainOptions:
    """The checks that need the model's fields: --config names real ones with values of their types, the window fits
    the model's context. Returns the options with --config's values parsed (`512` an int, `false` a bool)."""
    config = {}
    for key, value in options.config.items():
        if key not in MODEL_FIELDS:
            raise UsageError(f"--config {key}: not a model field one can set; choose among {', '.join(MODEL_FIELDS)}")
        config[key] = model_field_value(key, value)
    options = dataclasses.replace(options, config=config)
    model_context = model_context_length(options)
    if options.context_length and options.context_length > model_context:
        raise UsageError(
            f"--context-length {options.context_length} is longer than the model's context_length {model_context} "
            f"(preset {options.preset}); lower it, or raise the model's with --config "
            f"context_length={options.context_length}"
        )
    return options


_TYPES = {"int": int, "float": float, "bool": bool, "str": str, "None": type(None)}
_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false (1 or 0)", str: "text", type(None): "null"}
_WORDS = {"true": True, "1": True, "false": False, "0": False, "null": None, "none": None}


def model_field_value(name: str, value: Any) -> Any:
    """`value` for GPTScratchConfig's field `name`, as the field's type: a command-line string is parsed (int, float,
    bool as true/false/1/0, null/None where the field takes None); a Python value is checked. A UsageError names the
    field and what it takes."""
    annotation = GPTScratchConfig.__annotations__[name]
    if isinstance(annotation, str):  # the model file's annotations are strings (`from __future__ import annotations`)
        types = [_TYPES[part.strip()] for part in annotation.split("|")]
    else:
        types = list(typing.get_args(annotation)) or [annotation]
    if isinstance(value, str):
        for kind in types:
            try:
                return _parse_as(kind, value)
            except ValueError:
                continue
    elif _has_type(value, types):
        return value
    default = getattr(GPTScratchConfig(), name)
    example = str(default).lower() if isinstance(default, bool) else default
    takes = " or ".join(_TYPE_NAMES[kind] for kind in types)
    raise UsageError(f"--config {name}={value}: {name} takes {takes}, e.g. --config {name}={example}")


def _has_type(value: Any, types: list[type]) -> bool:
    """Whether a Python value fits: bool only where bool is taken (it is an int too), an int where a float is."""
    if isinstance(value, bool):
        return bool in types
    return any(isinstance(value, kind) for kind in types) or (isinstance(value, int) and float in types)


def _parse_as(kind: type, text: str) -> Any:
    """`text` as a value of `kind`; ValueError when it is not one."""
    word = text.strip().lower()
    if kind is bool or kind is type(None):
        if word in _WORDS and isinstance(_WORDS[word], kind):
            return _WORDS[word]
        raise ValueError(text)
    if kind is float:
        number = float(text)
        if not math.isfinite(number):
            raise ValueError(text)
        return number
    return kind(text)


def model_context_length(options: TrainOptions) -> int:
    """The model's context_length: --config's, else the preset's (check_options checked the preset)."""
    return int(options.config.get("context_length", PRESETS[options.preset]["context_length"]))


def options_for_resume(options: TrainOptions, checkpoint: Path) -> TrainOptions:
    """Checks that a resumed run uses the options that shape its numbers; returns the options to run with."""
    saved = json.loads((checkpoint.parent / RUN_FILE).read_text(encoding="utf-8"))
    original = TrainOptions(**saved["options"])
    differences = resume_differences(options, original)
    if differences:
        name = differences[0]
        raise UsageError(
            f"{flag_name(name)} {getattr(options, name)!r} differs from the checkpoint's {getattr(original, name)!r}; "
            "resume with the original settings, or start a new run in another --output-dir"
        )
    if saved["num_processes"] != PartialState().num_processes:
        raise UsageError(
            f"--resume: the checkpoint was written by {saved['num_processes']} processes, this run has "
            f"{PartialState().num_processes}; launch the same number to continue exactly"
        )
    return options


def train(options: TrainOptions, log: Callable[[str], None] | None = None) -> TrainResult | None:
    """Runs (or with `dry_run`, only plans) a pretraining run; returns None for a dry run.

    Raises UsageError for bad options or data, TrainingDiverged when the loss stops being finite.
    """
    state = PartialState(cpu=use_cpu())
    if log is None:  # printed between progress bars, on the main process only
        log = tqdm.write if state.is_main_process else (lambda message: None)
    check_options(options)
    options = check_model_options(options)
    directory = RunDirectory(options.output_dir)
    resume_from = directory.resolve_resume(options.resume) if options.resume else None
    if resume_from is None:
        directory.check_fresh(options.overwrite)
    else:
        options = options_for_resume(options, resume_from)
    directory.check_writable()
    with state.main_process_first():  # the main process tokenises; the others read its cache
        data = load_data(options, resume_from, log)
    config = build_config(options, len(data.tokenizer), data.tokenizer.eos_token_id)
    data.tokenizer.model_max_length = config.context_length
    plan = make_plan(options, config, data, state.num_processes)
    if options.eval_freq is None:
        options = dataclasses.replace(options, eval_freq=min(DEFAULT_EVAL_FREQ, plan.steps_per_epoch))
    ended = end_reason(options, directory, resume_from, plan) if resume_from is not None else None
    if ended is None or options.dry_run:  # a run with nothing left to train says so in one line instead
        for line in plan.lines:
            log(line)
    if not data.streamed and len(data.train) < options.batch_size * state.num_processes * options.grad_accum:
        raise UsageError(
            f"--batch-size {options.batch_size} (x {state.num_processes} processes x {options.grad_accum} "
            f"accumulation steps) is larger than the {len(data.train)} training windows; lower --batch-size "
            "or give more text"
        )
    if options.dry_run:
        return None
    if ended is not None:  # nothing to train: the model directory is written, or is there already
        return finish_ended_run(options, directory, resume_from, data, config, plan, ended, log)

    context = start_run(options, directory, resume_from, data, config, plan, log)
    with context.stop:
        result = ENGINES[options.engine](context)
    result.start_context = context.start_context
    finish_run(context, result)
    return result


def end_reason(options: TrainOptions, directory: RunDirectory, checkpoint: Path, plan: Plan) -> str | None:
    """Why the run that `checkpoint` belongs to has nothing left to train, with these options: "early-stopped" when
    its evaluations so far stop it, "completed" when it is at the plan's last step, "time-limit" when it spent a
    --max-time no shorter than this one; else None (a longer --max-time, or more steps, extend the run)."""
    step = checkpoint_step(checkpoint)
    metrics = MetricsLog(directory.metrics_file, write=False)
    metrics.load(step)
    if EarlyStopping(options.early_stopping_patience, metrics.records).should_stop:
        return "early-stopped"
    if plan.total_steps is not None and step >= plan.total_steps:
        return "completed"
    spent, budget = budget_spent(checkpoint), options.time_budget()
    return "time-limit" if budget is not None and spent is not None and budget <= spent else None


def finish_ended_run(
    options: TrainOptions,
    directory: RunDirectory,
    checkpoint: Path,
    data: PreparedData,
    config: GPTScratchConfig,
    plan: Plan,
    reason: str,
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
    log(f"{checkpoint} is the run's end ({reason}, step {step}): writing the model directory from it")
    context = start_run(options, directory, checkpoint, data, config, plan, log)
    load_weights(context.model, checkpoint)
    result = context.result(reason, step)
    result.start_context = context.start_context
    finish_run(context, result)
    return result


def load_weights(model: GPTScratchForCausalLM, directory: Path) -> None:
    """Puts the weights saved in `directory` (a checkpoint, the best model) into `model`."""
    model.load_state_dict(GPTScratchForCausalLM.from_pretrained(directory).state_dict())


def load_data(options: TrainOptions, resume_from: Path | None, log: Callable[[str], None]) -> PreparedData:
    """The run's tokenizer and windows (token files, or a stream); a resumed run takes the tokenizer saved in its
    checkpoint."""
    state = PartialState()
    shared = dict(
        context_length=options.context_length or model_context_length(options),
        stride=options.stride,
        dataset_config=options.dataset_config,
        dataset_split=options.dataset_split,
        text_column=options.text_column,
        tokenizer=str(resume_from) if resume_from else options.tokenizer,
        vocab_size=options.vocab_size,
        min_frequency=options.min_frequency,
        cache_dir=options.cache_dir,
        progress=state.is_main_process,
    )
    if options.streaming:
        data = prepare_streamed_data(
            dataset=options.dataset,
            evaluation_windows=evaluation_windows(options),
            shuffle_buffer=options.shuffle_buffer,
            seed=options.seed,
            rank=state.process_index,
            processes=state.num_processes,
            **shared,
        )
    else:
        data = prepare_data(
            data=options.data,
            dataset=options.dataset,
            embedded=options.embedded,
            dedup=options.dedup,
            train_ratio=options.train_ratio,
            num_proc=options.num_proc,
            log=log,
            **shared,
        )
    if resume_from is not None:  # describe the checkpoint's tokenizer as the original run did
        data.tokenizer_description = json.loads((resume_from.parent / RUN_FILE).read_text())["tokenizer_description"]
    return data


def start_run(
    options: TrainOptions,
    directory: RunDirectory,
    resume_from: Path | None,
    data: PreparedData,
    config: GPTScratchConfig,
    plan: Plan,
    log: Callable[[str], None],
) -> RunContext:
    """Creates the output directory (with run.json, the options a --resume checks), reloads the metrics of a
    resumed run, builds the initial model, and hands it all over in a RunContext."""
    state = PartialState()
    metrics = MetricsLog(directory.metrics_file, write=state.is_main_process)
    step = checkpoint_step(resume_from) if resume_from else 0
    if state.is_main_process:
        with directory.starting(options.overwrite and resume_from is None):
            if resume_from is not None and not (directory.checkpoints / RUN_FILE).exists():
                # Resuming another directory's checkpoint here: its options come along for the next --resume.
                shutil.copy2(resume_from.parent / RUN_FILE, directory.checkpoints / RUN_FILE)
            elif resume_from is None:
                write_json_atomic(
                    directory.checkpoints / RUN_FILE,
                    {
                        "options": dataclasses.asdict(options),
                        "num_processes": state.num_processes,
                        "source": data.source,
                        "tokenizer_description": data.tokenizer_description,
                    },
                )
            metrics.load(step)  # and rewrites metrics.jsonl without the evaluations past the checkpoint
    state.wait_for_everyone()
    if not state.is_main_process:
        metrics.load(step)

    dtype = PRECISION_DTYPES[options.mixed_precision]
    peak_flops = sum_over_processes(options.peak_flops or measure_matmul_flops(state.device, dtype))
    source = "--peak-flops" if options.peak_flops else f"the matmul throughput measured in {str(dtype)[6:]}"
    log(
        f"MFU is against {peak_flops / 1e12:.3g} TFLOP/s: {source}"
        + (f", summed over {state.num_processes} processes" if state.num_processes > 1 else "")
    )

    set_seed(options.seed)
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
        # A fixed spread of training windows (a stream's first ones) and the first validation windows (the book's
        # val_loader order), so every evaluation measures the same text and draws nothing from the random generators.
        train_eval=(
            data.train_head if data.streamed else Subset(data.train, evenly_spaced(len(data.train), eval_windows))
        ),
        val_eval=Subset(data.val, range(min(len(data.val), eval_windows))),
        start_context=options.start_context
        or DEFAULT_START_CONTEXT.get(
            options.embedded if not (options.data or options.dataset) else "", BOOK_START_CONTEXT
        ),
        metrics=metrics,
        early_stopping=EarlyStopping(options.early_stopping_patience, metrics.records),
        stop=StopSignals(),
        clock=TrainingClock(plan.tokens_per_step, plan.flops_per_token, peak_flops, options.time_budget()),
        log=log,
    )


def finish_run(context: RunContext, result: TrainResult) -> None:
    """The loss plot; then, unless the run was interrupted, the model directory (the best model under early
    stopping) and training_summary.json."""
    state, directory, options = PartialState(), context.directory, context.options
    if state.is_main_process and context.metrics.records:
        plot_metrics_file(directory.metrics_file, directory.root / "loss_plot")
    if result.reason == "interrupted":
        return
    if state.is_main_process:
        model = context.model  # the trained model with all its weights (`full_model`), on the main process
        best_step = context.early_stopping.best_step
        # A best model from the last step holds the weights the run ended with: nothing to read.
        if context.early_stopping.keeps_best and directory.best_model.is_dir() and best_step != result.steps:
            load_weights(model, directory.best_model)
            context.log(
                f"early stopping: the model directory holds the best model (step {best_step}, the lowest "
                "validation loss)"
            )
        model.generation_config.max_new_tokens = options.max_new_tokens
        directory.write_model(model, context.data.tokenizer)
        result.summary = write_summary(context, result)
    state.wait_for_everyone()


def write_summary(context: RunContext, result: TrainResult) -> dict[str, Any]:
    """training_summary.json: the source, tokenizer and final figures, for the model card."""
    records = context.metrics.records
    final = records[-1]
    if context.early_stopping.keeps_best and context.early_stopping.best_step is not None:
        final = next(record for record in records if record["step"] == context.early_stopping.best_step)
    summary = {
        "source": context.data.source,
        "tokenizer": context.data.tokenizer_description,
        "engine": context.options.engine,
        "preset": context.options.preset,
        "parameters": sum(p.numel() for p in context.model.parameters()),
        "steps": result.steps,
        "epochs": round(result.epochs, 4),
        "tokens_seen": result.tokens_seen,
        "train_loss": final["train_loss"],
        "val_loss": final["val_loss"],
        "train_perplexity": final["train_perplexity"],
        "val_perplexity": final["val_perplexity"],
        "initial_val_loss": records[0]["val_loss"],
        "time_s": round(context.clock.used(), 1),
        "stopped": result.reason,
    }
    write_json_atomic(context.directory.summary_file, summary)
    return summary


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
    return options.eval_iter * options.batch_size * PartialState().num_processes


def evenly_spaced(length: int, count: int) -> list[int]:
    """`count` indices spread over range(length) (all of them when count >= length)."""
    if count >= length:
        return list(range(length))
    return [int(i * length / count) for i in range(count)]
