"""One training run, whichever engine: options, the output directory, the plan, metrics, and the final model.

`train(TrainOptions(...))` is what `gptscratch-train` does: check the output directory (or find the checkpoint to
resume), prepare the data, build the model, print the plan, hand over to an engine (`train.loop.fit` for the
manual Accelerate loop, `train.trainer.fit` for the Hugging Face Trainer), then write the model directory, the
loss plot and `training_summary.json`, and reload the directory through `AutoModelForCausalLM` as a check.

Output directory layout (the same for both engines)::

    OUTPUT/                       the model directory: config.json, model.safetensors, generation_config.json,
                                  tokenizer files, modeling_gptscratch.py (written at the end), plus
    OUTPUT/metrics.jsonl          one JSON object per evaluation
    OUTPUT/loss_plot.png|pdf      the book's loss plot
    OUTPUT/training_summary.json  what was trained on, and the final figures
    OUTPUT/checkpoints/           run.json (the options), checkpoint-<step>/ (the newest --save-total-limit),
                                  best-model/ (with --early-stopping-patience)
    OUTPUT/tensorboard/           with --report-to tensorboard
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils import set_seed
from torch.utils.data import Subset

from convert.commands import UsageError
from convert.model_dir import save_model_directory
from modeling_gptscratch import PRESETS, GPTScratchConfig, GPTScratchForCausalLM
from train.data import PreparedData, prepare_data
from train.files import publish, write_json_atomic, write_text_atomic
from train.options import (
    ENGINES,
    LR_SCHEDULERS,
    MIXED_PRECISION,
    RESUME_MUST_MATCH,
    TrainingDiverged,
    TrainOptions,
)

RUN_FILE = "run.json"
LOOP_STATE_FILE = "loop_state.json"  # written last into an Accelerate checkpoint: its presence marks it complete
TRAINER_STATE_FILE = "trainer_state.json"  # written last by the Trainer into its checkpoints
CHECKPOINT_PATTERN = re.compile(r"checkpoint-(\d+)")
DEFAULT_START_CONTEXT = {"pydoc": 'The "for" statement', "stdlib": "def "}
BOOK_START_CONTEXT = "Every effort moves you"
# GPTScratchConfig's own fields that --config may set; the vocabulary and special tokens follow the tokenizer.
MODEL_FIELDS = tuple(
    name for name in GPTScratchConfig.__annotations__
    if name not in {"vocab_size", "bos_token_id", "eos_token_id", "pad_token_id", "auto_map"}
)


@dataclass
class TrainResult:
    """How a run ended. `reason`: completed, early-stopped or interrupted (then `signal_number` is set)."""

    reason: str
    steps: int
    epochs: float
    tokens_seen: int
    output_dir: Path
    metrics: list[dict[str, Any]]
    last_checkpoint: Path | None
    signal_number: int | None = None
    summary: dict[str, Any] | None = None
    start_context: str = ""


# ---------------------------------------------------------------------------------------------------------------------
# The output directory


class RunDirectory:
    """The output directory: model files, metrics, plot, summary, and `checkpoints/`."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).absolute()
        self.checkpoints = self.root / "checkpoints"
        self.metrics_file = self.root / "metrics.jsonl"
        self.best_model = self.checkpoints / "best-model"

    def checkpoint_dirs(self, under: Path | None = None) -> list[Path]:
        """Complete checkpoints (an interrupted write has no state file), oldest first."""
        under = under or self.checkpoints
        if not under.is_dir():
            return []
        found = []
        for path in under.iterdir():
            match = CHECKPOINT_PATTERN.fullmatch(path.name)
            if match and is_complete_checkpoint(path):
                found.append((int(match.group(1)), path))
        return [path for _, path in sorted(found)]

    def resolve_resume(self, spec: str) -> Path:
        """The checkpoint `--resume` names: "latest" is the newest complete one in this directory."""
        if spec == "latest":
            found = self.checkpoint_dirs()
            if not found:
                raise UsageError(
                    f"--resume: {self.checkpoints} holds no complete checkpoint; start without --resume "
                    "(or pass --resume PATH to a checkpoint directory)"
                )
            return found[-1]
        path = Path(spec).absolute()
        if not path.is_dir():
            raise UsageError(f"--resume {spec}: no such checkpoint directory; pass a checkpoints/checkpoint-N one")
        if not is_complete_checkpoint(path) or not (path.parent / RUN_FILE).is_file():
            raise UsageError(
                f"--resume {spec}: not a complete gptscratch checkpoint (no {LOOP_STATE_FILE} or {TRAINER_STATE_FILE}, "
                f"or no {RUN_FILE} beside it); pass a checkpoints/checkpoint-N directory of a gptscratch run"
            )
        return path

    def check_fresh(self, overwrite: bool) -> None:
        """Refuses a non-empty output directory unless `overwrite` (a resumable run is pointed at --resume)."""
        if self.root.exists() and not self.root.is_dir():
            raise UsageError(f"--output-dir {self.root} exists and is not a directory; choose another path")
        if self.root.is_dir() and any(self.root.iterdir()) and not overwrite:
            hint = " or --resume to continue its run" if self.checkpoint_dirs() else ""
            raise UsageError(
                f"--output-dir {self.root} exists and is not empty; pass --overwrite to replace it{hint}, "
                "or choose another directory"
            )

    def start(self, overwrite: bool) -> None:
        """Creates the directory; with `overwrite`, first empties it."""
        if overwrite and self.root.is_dir():
            for entry in self.root.iterdir():
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        self.checkpoints.mkdir(parents=True, exist_ok=True)

    def rotate_checkpoints(self, keep: int) -> None:
        """Deletes all but the newest `keep` complete checkpoints, and leftovers of interrupted writes."""
        for path in self.checkpoint_dirs()[:-keep] if keep > 0 else []:
            shutil.rmtree(path, ignore_errors=True)
        for path in self.checkpoints.glob(".tmp-checkpoint-*"):
            shutil.rmtree(path, ignore_errors=True)

    def write_model(self, model: GPTScratchForCausalLM, tokenizer: Any) -> None:
        """Writes the model directory's files into the output directory without touching checkpoints or metrics.

        The files are written completely into a temporary sibling (by `save_model_directory`), then renamed in one
        by one; config.json, which makes the directory loadable, is removed first and renamed in last, so a crash
        never leaves a loadable directory whose files belong to different models.
        """
        staging = self.root.parent / f".{self.root.name}.model-tmp-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            save_model_directory(model, tokenizer, staging)
            (self.root / "config.json").unlink(missing_ok=True)
            for stale in self.root.glob("model*.safetensors*"):  # shards of an earlier save
                if not (staging / stale.name).exists():
                    stale.unlink()
            names = sorted(path.name for path in staging.iterdir() if path.name != "config.json")
            for name in [*names, "config.json"]:
                publish(staging / name, self.root / name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def is_complete_checkpoint(path: Path) -> bool:
    return (path / LOOP_STATE_FILE).is_file() or (path / TRAINER_STATE_FILE).is_file()


def checkpoint_step(path: Path) -> int:
    match = CHECKPOINT_PATTERN.fullmatch(path.name)
    if not match:
        raise UsageError(f"--resume {path}: the directory name is not checkpoint-<step>")
    return int(match.group(1))


class MetricsLog:
    """metrics.jsonl: one JSON object per evaluation, rewritten atomically on every append (it is small)."""

    def __init__(self, path: Path, write: bool):
        self.path = path
        self.write = write
        self.records: list[dict[str, Any]] = []

    def load(self, up_to_step: int) -> None:
        """Reads the records of a resumed run up to its checkpoint's step; later ones are repeated by the resume."""
        if self.path.is_file():
            lines = self.path.read_text(encoding="utf-8").splitlines()
            self.records = [json.loads(line) for line in lines if line.strip()]
            self.records = [record for record in self.records if record["step"] <= up_to_step]
        self._flush()

    def append(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        self._flush()

    def _flush(self) -> None:
        if self.write:
            write_text_atomic(self.path, "".join(json.dumps(record) + "\n" for record in self.records))


def metrics_record(step: int, epoch: float, tokens_seen: int, train_loss: float, val_loss: float) -> dict[str, Any]:
    """One evaluation's line in metrics.jsonl."""
    return {
        "step": step,
        "epoch": round(epoch, 6),
        "tokens_seen": tokens_seen,
        "train_loss": train_loss,
        "val_loss": val_loss,
        "train_perplexity": perplexity(train_loss),
        "val_perplexity": perplexity(val_loss),
    }


def perplexity(loss: float) -> float:
    """exp(cross-entropy): the effective number of equally likely next tokens. Capped where exp overflows."""
    return math.exp(min(loss, 700.0))


def format_evaluation(record: dict[str, Any]) -> str:
    """The book's progress line, with tokens seen and perplexity."""
    return (
        f"Ep {max(1, math.ceil(record['epoch']))} (Step {record['step']:06d}, {record['tokens_seen']:,} tokens): "
        f"Train loss {record['train_loss']:.3f}, Val loss {record['val_loss']:.3f}, "
        f"Val perplexity {record['val_perplexity']:.1f}"
    )


class EarlyStopping:
    """Stops when the validation loss has not improved for `patience` evaluations; tracks the best one.

    Its state is a function of the metrics so far, so a resumed run picks it up from metrics.jsonl.
    """

    def __init__(self, patience: int | None, records: list[dict[str, Any]] = ()):
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
    def should_stop(self) -> bool:
        return self.patience is not None and self.since_best >= self.patience


def full_model(accelerator: Any, model: torch.nn.Module, config: GPTScratchConfig) -> GPTScratchForCausalLM | None:
    """The trained model with all its weights on the main process, None on the others; every process must call it.

    `model` is what `accelerator.prepare` returned. Sharded engines (FSDP, DeepSpeed) hold a slice of the weights
    per process: their state dict is gathered into a fresh model. Otherwise it is the unwrapped model itself.
    """
    from accelerate.utils import DistributedType

    if accelerator.distributed_type not in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        return accelerator.unwrap_model(model, keep_torch_compile=False) if accelerator.is_main_process else None
    state_dict = accelerator.get_state_dict(model)
    if not accelerator.is_main_process:
        return None
    gathered = GPTScratchForCausalLM(config)
    gathered.load_state_dict(state_dict)
    return gathered


def save_best_model(model: GPTScratchForCausalLM, directory: Path) -> None:
    """Keeps the best model so far (weights + config) in `directory`, replaced atomically."""
    staging = directory.parent / f".tmp-{directory.name}"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    if directory.exists():
        retired = directory.parent / f".old-{directory.name}"
        shutil.rmtree(retired, ignore_errors=True)
        os.replace(directory, retired)
        os.replace(staging, directory)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staging, directory)


# ---------------------------------------------------------------------------------------------------------------------
# Ctrl-C and SIGTERM


class StopSignals:
    """While active, SIGINT and SIGTERM ask the run to stop at the end of the current step (a second one aborts).

    The engines check `requested` after each optimizer step, save a checkpoint and return.
    """

    def __init__(self) -> None:
        self.signal_number: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for number in (signal.SIGINT, signal.SIGTERM):
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    def _handle(self, number: int, frame: Any) -> None:
        if self.signal_number is not None:
            raise KeyboardInterrupt  # a second signal: stop now; checkpoints are written atomically
        self.signal_number = number
        print(f"\n{signal.Signals(number).name} received: stopping after this step and saving a checkpoint", flush=True)

    @property
    def requested(self) -> bool:
        return self.signal_number is not None


def check_finite_weights(model: torch.nn.Module, step: int, last_checkpoint: Path | None) -> None:
    """Raises TrainingDiverged, on every process, before a checkpoint would store weights that are NaN or infinite.

    Each process checks the weights it holds (a shard of them under FSDP or DeepSpeed ZeRO-3).
    """
    finite = all(bool(torch.isfinite(parameter).all()) for parameter in model.parameters())
    if any_process(not finite):
        raise TrainingDiverged(
            f"the weights stopped being finite at step {step}; not saving them. The last good checkpoint is "
            f"{last_checkpoint or 'none'}; resume from it with a lower --lr or more --warmup-steps"
        )


def fused_adamw() -> bool:
    """Whether both engines use torch's fused AdamW kernel (one kernel for all parameters; CPU and CUDA have it)."""
    return PartialState().device.type in ("cpu", "cuda")


def use_cpu() -> bool:
    """True on a machine without an accelerator: Accelerate then runs several processes as CPU data parallelism
    (gloo) instead of treating each as a lone process."""
    return not torch.accelerator.is_available()


def any_process(flag: bool) -> bool:
    """True on every process when `flag` is True on any (a stop request must reach all before a collective save)."""
    state = PartialState()
    if state.num_processes == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=state.device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item())


# ---------------------------------------------------------------------------------------------------------------------
# The run


@dataclass
class Plan:
    """The run's sizes: optimizer steps per epoch and in all, tokens per step (all processes), and the printout."""

    steps_per_epoch: int
    total_steps: int
    tokens_per_step: int
    lines: list[str]


@dataclass
class RunContext:
    """What an engine gets: the options, data, model and the bookkeeping shared by both engines.

    The engine trains `model` and replaces it, on the main process, by the trained model with all its weights.
    """

    options: TrainOptions
    data: PreparedData
    config: GPTScratchConfig
    plan: Plan
    model: GPTScratchForCausalLM
    directory: RunDirectory
    resume_from: Path | None
    train_eval: Subset
    val_eval: Subset
    start_context: str
    metrics: MetricsLog
    early_stopping: EarlyStopping
    stop: StopSignals
    log: Callable[[str], None]


def build_config(options: TrainOptions, vocab_size: int, eos_token_id: int) -> GPTScratchConfig:
    """The preset with the overrides, sized to the tokenizer; bad values become UsageErrors naming the option."""
    if options.preset not in PRESETS:
        raise UsageError(f"--preset {options.preset}: unknown preset; choose one of: {', '.join(PRESETS)}")
    overrides = dict(options.model_overrides)
    if options.dropout is not None:
        overrides["drop_rate"] = options.dropout
    try:
        return GPTScratchConfig.from_preset(
            options.preset, **overrides, vocab_size=vocab_size, bos_token_id=eos_token_id, eos_token_id=eos_token_id
        )
    except (ValueError, TypeError) as error:
        raise UsageError(f"--preset {options.preset} with overrides {overrides}: {error}") from error


def validate_options(options: TrainOptions) -> None:
    """Checks values argparse cannot; each error names its flag and the fix."""
    if options.engine not in ENGINES:
        raise UsageError(f"--engine {options.engine}: unknown engine; choose one of: {', '.join(ENGINES)}")
    if options.preset not in PRESETS:
        raise UsageError(f"--preset {options.preset}: unknown preset; choose one of: {', '.join(PRESETS)}")
    positive = {
        "--batch-size": options.batch_size, "--grad-accum": options.grad_accum, "--epochs": options.epochs,
        "--eval-freq": options.eval_freq, "--eval-iter": options.eval_iter, "--vocab-size": options.vocab_size,
        "--max-new-tokens": options.max_new_tokens + 1, "--save-total-limit": options.save_total_limit,
    }
    optional_positive = {
        "--max-steps": options.max_steps, "--context-length": options.context_length, "--stride": options.stride,
        "--save-steps": options.save_steps, "--early-stopping-patience": options.early_stopping_patience,
        "--top-k": options.top_k, "--num-proc": options.num_proc,
    }
    for flag, value in {**positive, **{k: v for k, v in optional_positive.items() if v is not None}}.items():
        if value < 1:
            raise UsageError(f"{flag} {value}: must be a positive integer")
    for flag, value in {"--lr": options.lr, "--max-grad-norm": options.max_grad_norm}.items():
        if not value > 0:
            raise UsageError(f"{flag} {value}: must be greater than 0")
    if options.weight_decay < 0 or options.warmup_steps < 0 or options.temperature < 0:
        raise UsageError("--weight-decay, --warmup-steps and --temperature must not be negative")
    if options.dropout is not None and not 0 <= options.dropout < 1:
        raise UsageError(f"--dropout {options.dropout}: must be in [0, 1)")
    for key in options.model_overrides:
        if key not in MODEL_FIELDS:
            raise UsageError(f"--config {key}: not a model field one can set; choose among {', '.join(MODEL_FIELDS)}")
    model_context = int(options.model_overrides.get("context_length", PRESETS[options.preset]["context_length"]))
    if options.context_length and options.context_length > model_context:
        raise UsageError(
            f"--context-length {options.context_length} is longer than the model's context_length {model_context} "
            f"(preset {options.preset}); lower it, or raise the model's with --config "
            f"context_length={options.context_length}"
        )
    if options.lr_scheduler not in LR_SCHEDULERS:
        raise UsageError(f"--lr-scheduler {options.lr_scheduler}: choose one of: {', '.join(LR_SCHEDULERS)}")
    if options.mixed_precision not in MIXED_PRECISION:
        raise UsageError(f"--mixed-precision {options.mixed_precision}: choose one of: {', '.join(MIXED_PRECISION)}")


def train(options: TrainOptions, log: Callable[[str], None] | None = None) -> TrainResult | None:
    """Runs (or with `dry_run`, only plans) a pretraining run; returns None for a dry run.

    Raises UsageError for bad options or data, TrainingDiverged when the loss stops being finite.
    """
    state = PartialState(cpu=use_cpu())
    if log is None:
        log = print if state.is_main_process else (lambda message: None)
    validate_options(options)
    directory = RunDirectory(options.output_dir)
    resume_from = directory.resolve_resume(options.resume) if options.resume else None
    if resume_from is None:
        directory.check_fresh(options.overwrite)
    else:
        options = _options_for_resume(options, resume_from)

    with state.main_process_first():
        data = prepare_data(
            context_length=_window_length(options),
            stride=options.stride,
            data=options.data,
            dataset=options.dataset,
            dataset_config=options.dataset_config,
            dataset_split=options.dataset_split,
            text_column=options.text_column,
            embedded=options.embedded,
            dedup=options.dedup,
            tokenizer=str(resume_from) if resume_from else options.tokenizer,
            vocab_size=options.vocab_size,
            train_ratio=options.train_ratio,
            num_proc=options.num_proc,
            cache_dir=options.cache_dir,
            log=log,
        )
    if resume_from is not None:  # the tokenizer came from the checkpoint; describe it as the original run did
        data.tokenizer_description = json.loads((resume_from.parent / RUN_FILE).read_text())["tokenizer_description"]
    config = build_config(options, len(data.tokenizer), data.tokenizer.eos_token_id)
    data.tokenizer.model_max_length = config.context_length
    plan = make_plan(options, config, data, state.num_processes)
    for line in plan.lines:
        log(line)
    if len(data.train) < options.batch_size * state.num_processes * options.grad_accum:
        raise UsageError(
            f"--batch-size {options.batch_size} (x {state.num_processes} processes x {options.grad_accum} "
            f"accumulation steps) is larger than the {len(data.train)} training windows; lower --batch-size "
            "or give more text"
        )
    if options.dry_run:
        return None

    if state.is_main_process:
        directory.start(options.overwrite and resume_from is None)
        if resume_from is not None and not (directory.checkpoints / RUN_FILE).exists():
            # Resuming another directory's checkpoint here: its options come along for the next --resume.
            shutil.copy2(resume_from.parent / RUN_FILE, directory.checkpoints / RUN_FILE)
        elif resume_from is None:
            write_json_atomic(
                directory.checkpoints / RUN_FILE,
                {"options": dataclasses.asdict(options), "num_processes": state.num_processes,
                 "source": data.source, "tokenizer_description": data.tokenizer_description},
            )
    state.wait_for_everyone()
    metrics = MetricsLog(directory.metrics_file, write=state.is_main_process)
    metrics.load(checkpoint_step(resume_from) if resume_from else 0)

    set_seed(options.seed)
    model = GPTScratchForCausalLM(config)  # the same initial weights in both engines for the same seed
    eval_windows = options.eval_iter * options.batch_size * state.num_processes
    context = RunContext(
        options=options,
        data=data,
        config=config,
        plan=plan,
        model=model,
        directory=directory,
        resume_from=resume_from,
        # A fixed spread of training windows and the first validation windows (the book's val_loader order), so
        # every evaluation measures the same text and draws nothing from the random generators.
        train_eval=Subset(data.train, evenly_spaced(len(data.train), eval_windows)),
        val_eval=Subset(data.val, range(min(len(data.val), eval_windows))),
        start_context=options.start_context or DEFAULT_START_CONTEXT.get(
            options.embedded if not (options.data or options.dataset) else "", BOOK_START_CONTEXT
        ),
        metrics=metrics,
        early_stopping=EarlyStopping(options.early_stopping_patience, metrics.records),
        stop=StopSignals(),
        log=log,
    )
    if options.engine == "trainer":
        from train.trainer import fit
    else:
        from train.loop import fit
    with context.stop:
        result = fit(context)
    result.start_context = context.start_context

    if state.is_main_process and metrics.records:
        from train.plot import plot_metrics_file

        plot_metrics_file(directory.metrics_file, directory.root / "loss_plot")
    if result.reason == "interrupted":
        return result
    if state.is_main_process:
        model = context.model  # the trained model with all its weights (`full_model`), on the main process
        if options.early_stopping_patience is not None and directory.best_model.is_dir():
            model.load_state_dict(GPTScratchForCausalLM.from_pretrained(directory.best_model).state_dict())
            log(f"early stopping: the model directory holds the best model (step {context.early_stopping.best_step})")
        model.generation_config.max_new_tokens = options.max_new_tokens
        directory.write_model(model, data.tokenizer)
        result.summary = write_summary(context, result)
    state.wait_for_everyone()
    return result


def write_summary(context: RunContext, result: TrainResult) -> dict[str, Any]:
    """training_summary.json: the source, tokenizer and final figures, for the model card."""
    records = context.metrics.records
    final = records[-1]
    if context.options.early_stopping_patience is not None and context.early_stopping.best_step is not None:
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
        "stopped": result.reason,
    }
    write_json_atomic(context.directory.root / "training_summary.json", summary)
    return summary


def verify_model_directory(
    directory: Path, prompt: str, max_new_tokens: int = 30, temperature: float = 0.0, top_k: int | None = None,
    seed: int = 123,
) -> str:
    """Reloads a written model directory the way users will (Auto classes, trust_remote_code) and generates."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    prompt_ids = torch.tensor([tokenizer.encode(prompt)])
    output = model.generate(
        prompt_ids, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
        generator=torch.Generator().manual_seed(seed),
    )
    return tokenizer.decode(output[0].tolist())


def _options_for_resume(options: TrainOptions, checkpoint: Path) -> TrainOptions:
    """Checks that a resumed run uses the options that shape its numbers; returns the options to run with."""
    saved = json.loads((checkpoint.parent / RUN_FILE).read_text(encoding="utf-8"))
    original = TrainOptions(**saved["options"])
    for name in RESUME_MUST_MATCH:
        ours, theirs = getattr(options, name), getattr(original, name)
        if ours != theirs:
            flag = "--" + name.replace("_", "-")
            raise UsageError(
                f"{flag} {ours!r} differs from the checkpoint's {theirs!r}; resume with the original "
                f"settings, or start a new run in another --output-dir"
            )
    if saved["num_processes"] != PartialState().num_processes:
        raise UsageError(
            f"--resume: the checkpoint was written by {saved['num_processes']} processes, this run has "
            f"{PartialState().num_processes}; launch the same number to continue exactly"
        )
    return options


def _window_length(options: TrainOptions) -> int:
    """The window: --context-length, else the model's context_length (validate_options checked the preset)."""
    return options.context_length or int(
        options.model_overrides.get("context_length", PRESETS[options.preset]["context_length"])
    )


def evenly_spaced(length: int, count: int) -> list[int]:
    """`count` indices spread over range(length) (all of them when count >= length)."""
    if count >= length:
        return list(range(length))
    return [int(i * length / count) for i in range(count)]


# ---------------------------------------------------------------------------------------------------------------------
# The plan


def steps_per_epoch(windows: int, batch_size: int, num_processes: int, grad_accum: int, engine: str) -> int:
    """Optimizer steps per epoch: the Accelerate loop drops an incomplete accumulation, the Trainer steps on it."""
    batches = windows // (batch_size * num_processes)
    if engine == "trainer":
        return max(1, math.ceil(batches / grad_accum))
    return max(1, batches // grad_accum)


def make_plan(options: TrainOptions, config: GPTScratchConfig, data: PreparedData, num_processes: int) -> Plan:
    """Sizes, memory, tokens and steps of the run, and the Chinchilla-optimal token count for the model's size."""
    with torch.device("meta"):  # counts parameters without allocating them
        model = GPTScratchForCausalLM(config)
    total = sum(p.numel() for p in model.parameters())
    embeddings = model.model.tok_emb.weight.numel() + model.model.pos_emb.weight.numel()
    per_epoch = steps_per_epoch(len(data.train), options.batch_size, num_processes, options.grad_accum, options.engine)
    total_steps = options.max_steps or per_epoch * options.epochs
    window = data.train.context_length
    tokens_per_step = options.batch_size * window * num_processes * options.grad_accum
    run_tokens = total_steps * tokens_per_step
    chinchilla = 20 * total

    # Memory per process, fp32 master weights as Accelerate and the Trainer keep them under mixed precision.
    weights = gradients = 4 * total
    adam = 8 * total  # two fp32 moments per parameter
    activation_bytes = 2 if options.mixed_precision != "no" else 4
    # Per layer and token ~ (34 * emb_dim + 5 * heads * tokens) 16-bit values kept for backward (Korthikanti et
    # al. 2022, no recomputation; the second term is the attention matrix, which fused attention kernels avoid),
    # plus the fp32 logits and their gradient.
    activations = options.batch_size * window * (
        config.n_layers * (34 * config.emb_dim + 5 * config.n_heads * window) * activation_bytes / 2
        + 2 * 4 * config.vocab_size
    )
    precision = {"no": "fp32", "bf16": "bf16 mixed", "fp16": "fp16 mixed"}[options.mixed_precision]
    overrides = "".join(f", {key}={value}" for key, value in options.model_overrides.items())
    lines = [
        "Plan",
        f"  data        {data.source}; {data.documents:,} documents"
        + (f", {data.duplicates_dropped:,} duplicates dropped" if options.dedup else ""),
        f"  tokenizer   {data.tokenizer_description}",
        f"  split       train {data.train.num_tokens:,} tokens -> {len(data.train):,} windows; "
        f"validation {data.val.num_tokens:,} tokens -> {len(data.val):,} windows "
        f"(context {window}, stride {data.train.stride}, ratio {options.train_ratio}"
        + (", attention within each document)" if options.document_mask else ")"),
        f"  model       {options.preset}{overrides}: {config.n_layers} layers, {config.n_heads} heads, "
        f"{config.emb_dim} dims, context {config.context_length}, vocab {config.vocab_size}, "
        f"dropout {config.drop_rate}",
        f"  parameters  {total:,} ({total / 1e6:.2f} M), {total - embeddings:,} without embeddings",
        f"  memory      weights {_mb(weights)}, gradients {_mb(gradients)}, AdamW states {_mb(adam)}, "
        f"activations ~{_mb(activations)} (batch {options.batch_size} x {window}, {precision}); "
        f"~{_mb(weights + gradients + adam + activations)} per process",
        f"  schedule    {options.engine} engine, {num_processes} process{'es' * (num_processes > 1)}: "
        f"{per_epoch} steps/epoch, {total_steps} steps"
        + (" (max steps)" if options.max_steps else f" ({options.epochs} epochs)")
        + f", {tokens_per_step:,} tokens/step; lr {options.lr} {options.lr_scheduler}, "
        f"warmup {options.warmup_steps}, weight decay {options.weight_decay}",
        f"  tokens      this run sees {run_tokens:,}; Chinchilla-optimal for {total / 1e6:.2f} M parameters "
        f"(20 tokens/parameter) is {chinchilla:,} ({run_tokens / chinchilla:.1%} of it)",
    ]
    return Plan(per_epoch, total_steps, tokens_per_step, lines)


def scheduler_name(name: str, warmup_steps: int) -> str:
    """The transformers scheduler for `--lr-scheduler`: "constant" keeps a requested warmup."""
    return "constant_with_warmup" if name == "constant" and warmup_steps else name


def _mb(size: float) -> str:
    return f"{size / 2**30:.2f} GiB" if size >= 2**30 else f"{size / 2**20:.1f} MiB"

