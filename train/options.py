"""A training run's options in groups, each field declared once: its kind, default, help, check and resume rule.

`TrainOptions` holds one dataclass per group (`run`, `data`, `model`, `optimisation`, `evaluation`, `logging`: the
checkpoints and logging); library functions take the group they need. From Python,
`TrainOptions.from_fields(output_dir="out", max_steps=100)` fills the groups by field name; a YAML or JSON file of the
same names maps onto them (`train.option_values.fields_from_file`), each value typed as strictly as the flag would
type it. `gptscratch-train` derives its flags from these declarations (`train.cli`): a flag is its field's name with
dashes. `TrainOptions.check` runs every field's own check and those of fields that go together;
`resume_differences` names the fields a resumed run changed that must stay. Errors name the field
(`common.errors.field`), never a flag. Standard library only, so the command checks its arguments before importing
torch.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from common.errors import InputError, field
from train.checks import (
    at_least_two,
    below_one,
    duration,
    finite,
    fraction,
    greater_than_zero,
    new_tokens,
    not_negative,
    one_of,
    parse_duration,
    positive,
    ratio,
    vocabulary_size,
)

ENGINES = ("accelerate", "trainer")
LR_SCHEDULERS = ("cosine", "linear", "constant", "wsd")
FLOOR_SCHEDULERS = ("cosine", "wsd")  # the schedules that decay to min_lr (linear decays to 0, constant never)
# Tuned by measurement (benchmarks/RESULTS.md, Defaults that learn): AdamW for every weight learns worse at Muon's rate.
DEFAULT_LR = {"muon": 4e-3, "adamw": 1.5e-3}
MIN_LR_DIVISOR = 10  # min_lr's default is lr over this
# A run that repeats a small corpus overfits within minutes; one that keeps learning never waits 5 evaluations for
# a better validation loss (benchmarks/RESULTS.md, Defaults that learn).
DEFAULT_PATIENCE = 5
# A small corpus overfits within a few epochs: evaluating every epoch there lets early stopping keep the best model.
DEFAULT_EVAL_FREQ = 50
DEFAULT_VOCAB_SIZE = 8192  # of a fitted tokenizer (tokenizer "train"): the yardstick of benchmarks/RESULTS.md
# A pair of tokens seen once in the text a tokenizer is fitted on is a memorised word, not a pattern: on a small
# corpus, merging it makes tokens the model sees once and the validation text rarely.
DEFAULT_MIN_FREQUENCY = 2
OPTIMIZERS = ("adamw", "muon")
MIXED_PRECISION = ("no", "bf16", "fp16")
EMBEDDED_CORPORA = ("pydoc", "stdlib")
# Accelerate's trackers (accelerate.tracking.LOGGER_TYPE_TO_CLASS; tests/test_trackers.py holds the two equal).
TRACKERS = ("tensorboard", "trackio", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive", "swanlab")
PRESET_NAMES = ("tiny", "gpt2-124m", "gpt2-355m", "gpt2-774m", "gpt2-1558m")  # modeling_gptscratch.PRESETS
DEFAULT_EPOCHS = 6  # without max_steps, epochs or max_time

# Resume rules. A resumed run continues exactly only with the options that shape its numbers as they were; the
# others (how long it runs, how often it evaluates and saves, where it writes) may change.
MUST_MATCH = "must match"
MAY_CHANGE = "may change"

# Kinds of field: how a value is typed, from a flag's text or a configuration file's value.
SWITCH = "switch"  # False unless set: a flag without a value, true or false in a file
TOGGLE = "toggle"  # None (the model's own), true or false: --name / --no-name
INTEGER, NUMBER, TEXT, TEXTS = "integer", "number", "text", "texts"  # TEXTS: one or more
DURATION = "duration"  # seconds, or text with a unit (90s, 10m, 2h)
PAIRS = "pairs"  # KEY=VALUE settings, a mapping in a file


REQUIRED = object()  # a field without a default: the run cannot go without it


def option(
    default: Any = None,
    help: str = "",
    *,
    kind: str = TEXT,
    check: Callable[[str, Any], None] | None = None,
    resume: str = MUST_MATCH,
    choices: Sequence[str] | None = None,
    metavar: str | None = None,
    bare: Any = None,
) -> Any:
    """A field of an options group: its `default`, `help`, `kind`, own `check` (a `choices` field checks its value is
    one of them) and `resume` rule. `metavar` names the value in help texts; `bare` is the value of the flag given
    without one."""
    if choices is not None and check is None:
        check = one_of(choices, "value")
    metadata = {
        "help": help,
        "kind": kind,
        "check": check,
        "resume": resume,
        "choices": choices,
        "metavar": metavar,
        "bare": bare,
    }
    if default is REQUIRED:
        return dataclasses.field(metadata=metadata)
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


# ---------------------------------------------------------------------------------------------------------------------
# The groups


@dataclass
class RunOptions:
    """Where the run writes, and whether it starts, continues or only plans."""

    output_dir: str = option(
        REQUIRED, "the model directory to write (metrics, plot and checkpoints inside)", resume=MAY_CHANGE
    )
    overwrite: bool = option(False, "replace a non-empty output directory", kind=SWITCH, resume=MAY_CHANGE)
    resume: str | None = option(
        help="continue from the newest checkpoint in the output directory (latest), or from checkpoint PATH",
        resume=MAY_CHANGE,
        metavar="PATH",
        bare="latest",
    )
    dry_run: bool = option(False, "print the plan and exit", kind=SWITCH, resume=MAY_CHANGE)


@dataclass
class DataOptions:
    """What the run reads and how it cuts it into training windows."""

    data: list[str] | None = option(help="UTF-8 text files, directories or globs", kind=TEXTS, metavar="PATH")
    dataset: str | None = option(help="a Hugging Face dataset name (online, or cached)")
    dataset_config: str | None = option(help="the dataset's configuration")
    dataset_split: str = option("train", "the dataset's split")
    text_column: str = option("text", "the dataset's text column")
    embedded: str = option(
        "pydoc",
        "the embedded corpus, used without {data} or {dataset}: Python's pydoc topics (465 KB) or the standard "
        "library's sources",
        choices=EMBEDDED_CORPORA,
    )
    dedup: bool = option(False, "drop exact duplicate documents before tokenising", kind=SWITCH)
    tokenizer: str = option(
        "train",
        "train: fit a byte-level BPE on the training split; gpt2: GPT-2's from the Hub; PATH: a directory "
        "with encoder.json + vocab.bpe or a saved tokenizer",
        metavar="gpt2|PATH|train",
    )
    vocab_size: int = option(
        DEFAULT_VOCAB_SIZE,
        "vocabulary of a fitted tokenizer (at most; see {min_frequency})",
        kind=INTEGER,
        check=vocabulary_size,
    )
    min_frequency: int = option(
        DEFAULT_MIN_FREQUENCY,
        "a fitted tokenizer merges a pair of tokens only where it occurs at least this often in "
        "the text it is fitted on, so a small corpus gets fewer tokens than {vocab_size} (1: every pair)",
        kind=INTEGER,
        check=positive,
    )
    train_ratio: float = option(
        0.9, "share of the text (in characters) for training; the rest validates", kind=NUMBER, check=ratio
    )
    context_length: int | None = option(
        help="window length in tokens (default: the model's)", kind=INTEGER, check=positive
    )
    stride: int | None = option(
        help="tokens between window starts (default: the window length)", kind=INTEGER, check=positive
    )
    document_mask: bool = option(
        False,
        "keep attention inside each <|endoftext|>-separated document of a window (positions restart at each document)",
        kind=SWITCH,
    )
    num_proc: int | None = option(
        help="tokenising processes (default: 1 below 64 M characters, else all CPUs)",
        kind=INTEGER,
        check=positive,
        resume=MAY_CHANGE,
    )
    cache_dir: str | None = option(
        help="where prepared token files and fitted tokenizers are kept, and hub datasets downloaded (default: HF's "
        "datasets cache)",
        resume=MAY_CHANGE,
    )
    streaming: bool = option(
        False,
        "with {dataset}: tokenise on the fly from datasets' streaming mode instead of preparing token files "
        "(needs {max_steps}; validation is the split's first documents)",
        kind=SWITCH,
    )
    shuffle_buffer: int = option(1000, "with {streaming}: windows in the shuffle buffer", kind=INTEGER, check=positive)

    def corpus_fields(self) -> dict[str, Any]:
        """The fields that decide a corpus's tokens (what `train.data.prepare_tokens` takes); window sizes and
        streaming decide only how a run reads them."""
        return {name: getattr(self, name) for name in CORPUS_FIELDS}


# What gptscratch-prepare takes: the data fields that decide the tokens.
CORPUS_FIELDS = (
    "data",
    "dataset",
    "dataset_config",
    "dataset_split",
    "text_column",
    "embedded",
    "dedup",
    "tokenizer",
    "vocab_size",
    "min_frequency",
    "train_ratio",
    "num_proc",
    "cache_dir",
)


@dataclass
class ModelOptions:
    """The model's size and shape, or the model the run starts from; the training-time dropout."""

    init_from: str | None = option(
        help="start from this model's weights and tokenizer, not from random weights: a gptscratch model directory "
        "(a run's output, a converted or pushed model), a transformers GPT-2 directory or hub name "
        "(openai-community/gpt2, from the local cache when offline), or OpenAI's checkpoint directory; the model's "
        "shape comes with it",
        metavar="SOURCE",
    )
    preset: str = option(
        "tiny",
        "model size: tiny, gpt2-124m, gpt2-355m, gpt2-774m or gpt2-1558m",
        metavar="NAME",
        check=one_of(PRESET_NAMES, "preset"),
    )
    n_layers: int | None = option(help="override the preset's number of transformer blocks", kind=INTEGER)
    n_heads: int | None = option(help="override the preset's attention heads", kind=INTEGER)
    emb_dim: int | None = option(help="override the preset's embedding size", kind=INTEGER)
    qkv_bias: bool | None = option(help="override the preset's qkv bias", kind=TOGGLE)
    # Pretraining on a budget sees its text a few times at most, where dropout only slows learning (measured:
    # benchmarks/RESULTS.md); and dropout on the attention weights costs SDPA its fused kernel. Both are off unless
    # asked for (config's drop_rate and attention_dropout set them too, and win).
    dropout: float = option(
        0.0,
        "dropout after the embeddings and on the residual branches (the book trains with 0.1)",
        kind=NUMBER,
        check=below_one,
    )
    attention_dropout: float = option(
        0.0,
        "dropout on the attention weights (0 keeps SDPA's fused kernel; the book applies dropout there too)",
        kind=NUMBER,
        check=below_one,
    )
    config: dict[str, Any] = option(
        {},
        "override any model field, e.g. context_length=512 or layer_norm_eps=1e-6 (repeatable)",
        kind=PAIRS,
        metavar="KEY=VALUE",
    )

    def overrides(self) -> dict[str, Any]:
        """The model fields this run sets over its preset: `config`, then the shape fields, which win (dropout
        aside)."""
        shape = {name: getattr(self, name) for name in ("n_layers", "n_heads", "emb_dim", "qkv_bias")}
        return {**self.config, **{name: value for name, value in shape.items() if value is not None}}


@dataclass
class OptimisationOptions:
    """The engine, how long it trains, and the optimizer, schedule and precision of its steps."""

    engine: str = option(
        "accelerate", "accelerate: the manual loop; trainer: the Hugging Face Trainer", choices=ENGINES
    )
    epochs: int | None = option(
        help=f"passes over the training windows (default: {DEFAULT_EPOCHS}; with {{max_time}}, no limit)",
        kind=INTEGER,
        check=positive,
        resume=MAY_CHANGE,
    )
    max_steps: int | None = option(
        help="optimizer steps to run (overrides {epochs})", kind=INTEGER, check=positive, resume=MAY_CHANGE
    )
    max_time: str | None = option(
        help="train for this long: seconds (90) or a duration (90s, 10m, 2h); the schedule decays over it and the "
        "final evaluation and checkpoint fit in it. With {max_steps} or {epochs}, the first limit reached ends the run",
        kind=DURATION,
        check=duration,
        resume=MAY_CHANGE,
        metavar="DURATION",
    )
    batch_size: int = option(4, "windows per batch and process", kind=INTEGER, check=positive)
    optimizer: str = option(
        "muon",
        "muon: torch.optim.Muon for the blocks' weight matrices, AdamW for the embeddings, norms and biases; "
        "adamw: AdamW for every weight",
        choices=OPTIMIZERS,
    )
    lr: float | None = option(
        help=f"peak learning rate, AdamW's and Muon's unless {{muon_lr}} (default: {DEFAULT_LR['muon']:g} with the "
        f"muon optimizer, {DEFAULT_LR['adamw']:g} with adamw)",
        kind=NUMBER,
        check=greater_than_zero,
    )
    muon_lr: float | None = option(
        help="Muon's peak learning rate (default: {lr}; Muon's update is scaled to AdamW's size)",
        kind=NUMBER,
        check=greater_than_zero,
    )
    muon_momentum: float = option(
        0.8,
        "Muon's Nesterov momentum (torch's and modded-nanogpt's is 0.95, for runs of thousands of steps; 0.8 "
        "learned more in runs of minutes)",
        kind=NUMBER,
        check=below_one,
    )
    weight_decay: float = option(0.1, "on weight matrices only", kind=NUMBER, check=not_negative)
    warmup_steps: int = option(20, "linear warmup steps", kind=INTEGER, check=not_negative)
    lr_scheduler: str = option(
        "cosine",
        "the learning rate after warmup: constant, linear (to 0), cosine (to {min_lr}) or wsd "
        "(warmup-stable-decay: constant, then a linear decay to {min_lr} over the last {decay_ratio})",
        choices=LR_SCHEDULERS,
    )
    min_lr: float | None = option(
        help=f"the learning rate cosine and wsd end at (default: {{lr}} / {MIN_LR_DIVISOR:g})",
        kind=NUMBER,
        check=not_negative,
    )
    decay_ratio: float = option(0.2, "wsd: the share of the run its decay takes", kind=NUMBER, check=fraction)
    grad_accum: int = option(1, "micro-batches per optimizer step", kind=INTEGER, check=positive)
    max_grad_norm: float = option(1.0, "gradient clipping", kind=NUMBER, check=greater_than_zero)
    skip_loss_zscore: float = option(
        6.0,
        "skip the update of a step whose loss lies more than Z standard deviations above the mean of the last "
        "{spike_window} applied steps (0: never)",
        kind=NUMBER,
        check=not_negative,
        metavar="Z",
    )
    skip_grad_zscore: float = option(
        6.0,
        "skip the update of a step whose gradient norm (before clipping) lies more than Z standard deviations "
        "above the mean of the last {spike_window} applied steps (0: never)",
        kind=NUMBER,
        check=not_negative,
        metavar="Z",
    )
    spike_window: int = option(
        50, "applied steps a loss or gradient-norm spike is measured against", kind=INTEGER, check=at_least_two
    )
    max_rollbacks: int = option(
        3,
        "a NaN or infinite loss rolls the run back to its last checkpoint and skips the steps since, at most N "
        "times (0: stop at once)",
        kind=INTEGER,
        check=not_negative,
        resume=MAY_CHANGE,
    )
    mixed_precision: str = option("no", "autocast precision (the weights stay fp32)", choices=MIXED_PRECISION)
    seed: int = option(123, "seeds weights, shuffling and dropout", kind=INTEGER)
    compile: bool = option(False, "torch.compile the model (pays off on GPUs)", kind=SWITCH)

    def __post_init__(self) -> None:
        if self.lr is None:
            self.lr = DEFAULT_LR.get(self.optimizer)  # an unknown optimizer is refused by its own check

    def floor_lr(self) -> float:
        """Where the schedule ends: min_lr, by default a MIN_LR_DIVISOR-th of lr for cosine and wsd; 0 for the
        others (linear decays to 0; constant does not decay)."""
        if self.lr_scheduler not in FLOOR_SCHEDULERS:
            return 0.0
        return self.lr / MIN_LR_DIVISOR if self.min_lr is None else self.min_lr

    def time_budget(self) -> float | None:
        """max_time in seconds, or None."""
        return None if self.max_time is None else parse_duration(self.max_time)


@dataclass
class EvaluationOptions:
    """When the run measures itself, and the samples it prints."""

    eval_freq: int | None = option(
        help=f"evaluate every N steps (default: {DEFAULT_EVAL_FREQ}, or every epoch where an epoch is shorter)",
        kind=INTEGER,
        check=positive,
        resume=MAY_CHANGE,
    )
    eval_iter: int = option(5, "batches per evaluation", kind=INTEGER, check=positive, resume=MAY_CHANGE)
    start_context: str | None = option(
        help="prompt of the samples (default: one that suits the corpus)", resume=MAY_CHANGE
    )
    temperature: float = option(0.8, "0 is greedy", kind=NUMBER, check=not_negative, resume=MAY_CHANGE)
    top_k: int | None = option(
        40, "sample from the k most likely tokens (0: from all)", kind=INTEGER, check=not_negative, resume=MAY_CHANGE
    )
    max_new_tokens: int = option(50, "sample length", kind=INTEGER, check=new_tokens, resume=MAY_CHANGE)
    eval_tasks: list[str] = option(
        [],
        "lm-eval benchmark tasks scored at evaluations, as gptscratch-eval's tasks: names (hellaswag), comma-separated "
        "or several, or task YAMLs under {include_path}; each metric is logged as TASK/METRIC",
        kind=TEXTS,
        resume=MAY_CHANGE,
        metavar="TASK",
    )
    include_path: str | None = option(
        help="a directory of your own lm-eval task YAMLs for {eval_tasks} (lm-eval's include_path)",
        resume=MAY_CHANGE,
        metavar="DIR",
    )
    eval_tasks_limit: int | None = option(
        help="score only the first N documents of each task: a quick signal, not the benchmark's score",
        kind=INTEGER,
        check=positive,
        resume=MAY_CHANGE,
    )
    eval_tasks_freq: int | None = option(
        help="score the tasks at step 0 and then at the first evaluation after every N steps (default: at every "
        "evaluation)",
        kind=INTEGER,
        check=positive,
        resume=MAY_CHANGE,
    )
    early_stopping_patience: int = option(
        DEFAULT_PATIENCE,
        "stop after N evaluations without a better validation loss, and keep the best model (0: "
        "never stop, keep the last)",
        kind=INTEGER,
        check=not_negative,
        resume=MAY_CHANGE,
    )

    def task_names(self) -> list[str]:
        """The lm-eval tasks `eval_tasks` names, given as several values or comma-separated (as gptscratch-eval's
        `tasks`)."""
        return [name.strip() for value in self.eval_tasks for name in value.split(",") if name.strip()]

    def sampling_top_k(self) -> int | None:
        """top_k as decoding takes it: None keeps every token (0 here)."""
        return self.top_k or None


@dataclass
class LoggingOptions:
    """Checkpoints, experiment trackers and the throughput figures."""

    save_steps: int | None = option(100, "checkpoint every N steps", kind=INTEGER, check=positive, resume=MAY_CHANGE)
    save_total_limit: int = option(2, "checkpoints kept", kind=INTEGER, check=positive, resume=MAY_CHANGE)
    report_to: list[str] = option([], "experiment trackers", kind=TEXTS, resume=MAY_CHANGE, choices=TRACKERS)
    peak_flops: float | None = option(
        help="the FLOP/s one process's device can do (e.g. 989e12 for an H100's bf16), the denominator of MFU "
        "(default: this machine's matmul throughput, measured at start in the training precision)",
        kind=NUMBER,
        check=greater_than_zero,
        resume=MAY_CHANGE,
    )


# The groups in the order `--help` lists them, with their titles.
GROUPS = {
    "run": (RunOptions, "run"),
    "data": (DataOptions, "data"),
    "model": (ModelOptions, "model"),
    "optimisation": (OptimisationOptions, "optimisation"),
    "evaluation": (EvaluationOptions, "evaluation and samples"),
    "logging": (LoggingOptions, "checkpoints and logging"),
}
# Every field by name (names are unique across groups), and the group that holds it.
FIELDS: dict[str, dataclasses.Field] = {}
FIELD_GROUPS: dict[str, str] = {}
for _group, (_options, _title) in GROUPS.items():
    for _spec in dataclasses.fields(_options):
        FIELDS[_spec.name], FIELD_GROUPS[_spec.name] = _spec, _group


@dataclass
class TrainOptions:
    """Everything a run needs, in its groups; `from_fields` builds it from field names (those of the flags)."""

    run: RunOptions
    data: DataOptions = dataclasses.field(default_factory=DataOptions)
    model: ModelOptions = dataclasses.field(default_factory=ModelOptions)
    optimisation: OptimisationOptions = dataclasses.field(default_factory=OptimisationOptions)
    evaluation: EvaluationOptions = dataclasses.field(default_factory=EvaluationOptions)
    logging: LoggingOptions = dataclasses.field(default_factory=LoggingOptions)

    @classmethod
    def from_fields(cls, **values: Any) -> TrainOptions:
        """Options from field names and values, each put in its group; the rest keep their defaults."""
        unknown = sorted(set(values) - set(FIELDS))
        if unknown:
            raise InputError(f"{unknown[0]} is {not_an_option(unknown[0])}")
        if "output_dir" not in values:
            raise InputError(f"{field('output_dir')} is required: the directory the run writes")
        grouped: dict[str, dict[str, Any]] = {group: {} for group in GROUPS}
        for name, value in values.items():
            grouped[FIELD_GROUPS[name]][name] = value
        return cls(**{group: GROUPS[group][0](**grouped[group]) for group in GROUPS})

    def fields(self) -> dict[str, Any]:
        """Every field by name, flat (what run.json keeps, and `from_fields` takes back)."""
        return {name: getattr(getattr(self, FIELD_GROUPS[name]), name) for name in FIELDS}

    def replace(self, **values: Any) -> TrainOptions:
        """A copy with the named fields changed."""
        return TrainOptions.from_fields(**{**self.fields(), **values})

    def check(self) -> None:
        """Runs every field's own check, then those of fields that go together; each error names its field."""
        check_fields(self.fields())
        optimisation = self.optimisation
        if optimisation.min_lr is not None and optimisation.lr_scheduler not in FLOOR_SCHEDULERS:
            raise InputError(
                f"{field('min_lr')} {optimisation.min_lr}: {field('lr_scheduler')} {optimisation.lr_scheduler} has no "
                f"floor; use {' or '.join(FLOOR_SCHEDULERS)}"
            )
        if optimisation.min_lr is not None and optimisation.min_lr >= optimisation.lr:
            raise InputError(f"{field('min_lr')} {optimisation.min_lr} must be below {field('lr')} {optimisation.lr}")
        if self.data.streaming:
            self.check_streaming()
        evaluation = self.evaluation
        if not evaluation.task_names():
            for name in ("include_path", "eval_tasks_limit", "eval_tasks_freq"):
                if getattr(evaluation, name) is not None:
                    raise InputError(f"{field(name)} goes with {field('eval_tasks')}, which names no task; add tasks")

    def check_streaming(self) -> None:
        """Streaming reads a hub dataset as it trains, with the Accelerate loop, for a given number of steps."""
        if not self.data.dataset:
            raise InputError(
                f"{field('streaming')} streams a {field('dataset')} NAME; local files ({field('data')}) are tokenised "
                "once into token files instead (see gptscratch-prepare)"
            )
        if self.optimisation.max_steps is None:
            raise InputError(
                f"{field('streaming')} needs {field('max_steps')} N: a stream has no length to count epochs in"
            )
        if self.optimisation.engine == "trainer":
            raise InputError(
                f"{field('engine')} trainer does not take {field('streaming')}: the Trainer resumes a stream by "
                "reading it again from the start; use the accelerate engine, whose checkpoints keep the stream's "
                "position"
            )
        if self.data.dedup:
            raise InputError(
                f"{field('dedup')} compares whole documents before training; it does not apply to {field('streaming')}"
            )


def not_an_option(name: str) -> str:
    """The end of the sentence that refuses `name`: not an option, with the nearest one."""
    close = difflib.get_close_matches(name, FIELDS, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"not an option{hint}; docs/training.md lists the options"


def check_fields(values: Mapping[str, Any]) -> None:
    """Runs the own checks of the fields in `values` (names of TrainOptions fields): a number is finite first."""
    for name, value in values.items():
        spec = FIELDS[name]
        if spec.metadata["kind"] == NUMBER:
            finite(name, value)
        check = spec.metadata["check"]
        if check is not None:
            for item in (value or []) if spec.metadata["kind"] == TEXTS else [value]:
                check(name, item)


def resume_differences(options: TrainOptions, original: TrainOptions) -> list[str]:
    """The fields a resumed run sets otherwise than the run it continues, of those that must match."""
    now, before = options.fields(), original.fields()
    return [
        name for name, spec in FIELDS.items() if spec.metadata["resume"] == MUST_MATCH and now[name] != before[name]
    ]


def iterate_fields() -> Iterator[tuple[str, str, dataclasses.Field]]:
    """(group title, name, declaration) of every field, group by group, in declaration order."""
    for group, (_, title) in GROUPS.items():
        for name, spec in FIELDS.items():
            if FIELD_GROUPS[name] == group:
                yield title, name, spec
