"""A training run's options, each declared once: its flag's help, default, check and resume rule.

`TrainOptions` is what `train.run.train` takes from Python. `gptscratch-train` builds its parser from these fields
(`build_parser`): the flag is the field's name with dashes, grouped as the `group` says; `--config-file run.yaml`
(or .json) sets the same fields, and flags on the command line win. `check_options` runs every field's check,
`resume_differences` compares the fields a resumed run must keep. Standard library only, so the command checks its
arguments before importing torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.commands import ArgumentParser, UsageError
from common.files import read_utf8_file

PROGRAM = "gptscratch-train"
ENGINES = ("accelerate", "trainer")
LR_SCHEDULERS = ("cosine", "linear", "constant", "wsd")
FLOOR_SCHEDULERS = ("cosine", "wsd")  # the schedules that decay to --min-lr (linear decays to 0, constant never)
# Tuned by measurement (README, Defaults that learn): AdamW for every weight learns worse at Muon's rate.
DEFAULT_LR = {"muon": 4e-3, "adamw": 1.5e-3}
MIN_LR_DIVISOR = 10  # --min-lr's default is --lr over this
# A run that repeats a small corpus overfits within minutes; one that keeps learning never waits 5 evaluations for
# a better validation loss (README, "Defaults that learn").
DEFAULT_PATIENCE = 5
# A small corpus overfits within a few epochs: evaluating every epoch there lets early stopping keep the best model.
DEFAULT_EVAL_FREQ = 50
DEFAULT_VOCAB_SIZE = 8192  # of a fitted tokenizer (--tokenizer train): the yardstick in README's "Defaults that learn"
# A pair of tokens seen once in the text a tokenizer is fitted on is a memorised word, not a pattern: on a small
# corpus, merging it makes tokens the model sees once and the validation text rarely (README, "Defaults that learn").
DEFAULT_MIN_FREQUENCY = 2
OPTIMIZERS = ("adamw", "muon")
MIXED_PRECISION = ("no", "bf16", "fp16")
EMBEDDED_CORPORA = ("pydoc", "stdlib")
TRACKERS = ("tensorboard", "wandb", "mlflow")
PRESET_NAMES = ("tiny", "gpt2-124m", "gpt2-355m", "gpt2-774m", "gpt2-1558m")  # modeling_gptscratch.PRESETS
GROUPS = ("run", "data", "model", "optimisation", "evaluation and samples", "checkpoints and logging")
DEFAULT_EPOCHS = 6  # without --max-steps, --epochs or --max-time
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600}

# Resume rules. A resumed run continues exactly only with the options that shape its numbers as they were; the
# others (how long it runs, how often it evaluates and saves, where it writes) may change.
MUST_MATCH = "must match"
MAY_CHANGE = "may change"


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


# ---------------------------------------------------------------------------------------------------------------------
# Checks: each gets the flag and the value, and raises UsageError naming both.


def positive(flag: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise UsageError(f"{flag} {value}: must be a positive integer")


def greater_than_zero(flag: str, value: float) -> None:
    if not value > 0:
        raise UsageError(f"{flag} {value}: must be greater than 0")


def greater_than_zero_if_set(flag: str, value: float | None) -> None:
    if value is not None:
        greater_than_zero(flag, value)


def not_negative(flag: str, value: float) -> None:
    if value < 0:
        raise UsageError(f"{flag} {value}: must not be negative")


def not_negative_if_set(flag: str, value: float | None) -> None:
    if value is not None:
        not_negative(flag, value)


def below_one(flag: str, value: float | None) -> None:
    if value is not None and not 0 <= value < 1:
        raise UsageError(f"{flag} {value}: must be in [0, 1)")


def ratio(flag: str, value: float) -> None:
    if not 0 < value < 1:
        raise UsageError(f"{flag} {value}: must be between 0 and 1 (0.9 keeps 10% for validation)")


# The most tokens a command generates. 100,000 tokens is a novel's length (about 75,000 English words) and over an
# hour of decoding for GPT-2 124M on a CPU (24 tokens/s in `make bench`), well past any use of a model whose window
# holds 1,024; a larger number is a typo for a smaller one, and would decode for days before anyone noticed.
MAX_NEW_TOKENS = 100_000


def new_tokens(flag: str, value: int) -> None:
    if not 0 <= value <= MAX_NEW_TOKENS:
        raise UsageError(
            f"{flag} {value}: must be between 0 and {MAX_NEW_TOKENS:,} (a novel's length, hours of decoding); "
            "ask for fewer tokens"
        )


def fraction(flag: str, value: float) -> None:
    if not 0 < value <= 1:
        raise UsageError(f"{flag} {value}: must be in (0, 1]")


def parse_duration(value: str | float) -> float:
    """Seconds from a number of seconds or a duration such as `90s`, `10m`, `1.5h`; ValueError otherwise."""
    text = str(value).strip().lower()
    scale = DURATION_UNITS.get(text[-1:], None)
    seconds = float(text[:-1] if scale else text) * (scale or 1)
    if not 0 < seconds < float("inf"):
        raise ValueError(value)
    return seconds


def duration(flag: str, value: str | float | None) -> None:
    if value is None:
        return
    try:
        parse_duration(value)
    except ValueError:
        raise UsageError(
            f"{flag} {value}: expected a positive duration in seconds (90) or with a unit (90s, 10m, 2h)"
        ) from None


def one_of(choices: Sequence[str], what: str) -> Callable[[str, str], None]:
    def check(flag: str, value: str) -> None:
        if value not in choices:
            raise UsageError(f"{flag} {value}: unknown {what}; choose one of: {', '.join(choices)}")

    return check


REQUIRED = object()  # an option with no default: TrainOptions needs it, and so does the command line


def option(
    default: Any = None,
    help: str = "",
    *,
    group: str,
    check: Callable[[str, Any], None] | None = None,
    resume: str = MUST_MATCH,
    **flag: Any,
) -> Any:
    """A TrainOptions field: `default`, the flag's `help` and argparse settings (`flag`), the `group` it is listed
    under, its `check` and its `resume` rule."""
    assert group in GROUPS, group
    metadata = {"help": help, "group": group, "check": check, "resume": resume, "flag": flag}
    if default is REQUIRED:
        return dataclasses.field(metadata=metadata)
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclass
class TrainOptions:
    """Everything a run needs; `gptscratch-train` fills it from its flags (same names, dashes for underscores)."""

    output_dir: str = option(
        REQUIRED, "the model directory to write (metrics, plot and checkpoints inside)", group="run", resume=MAY_CHANGE
    )
    overwrite: bool = option(
        False, "replace a non-empty --output-dir", group="run", resume=MAY_CHANGE, action="store_true"
    )
    resume: str | None = option(
        help="continue from the newest checkpoint in --output-dir, or from checkpoint PATH",
        group="run",
        resume=MAY_CHANGE,
        nargs="?",
        const="latest",
        metavar="PATH",
    )
    dry_run: bool = option(False, "print the plan and exit", group="run", resume=MAY_CHANGE, action="store_true")

    # Data
    data: list[str] | None = option(
        help="UTF-8 text files, directories or globs", group="data", nargs="+", metavar="PATH"
    )
    dataset: str | None = option(help="a Hugging Face dataset name (online, or cached)", group="data")
    dataset_config: str | None = option(help="the dataset's configuration", group="data")
    dataset_split: str = option("train", "the dataset's split", group="data")
    text_column: str = option("text", "the dataset's text column", group="data")
    embedded: str = option(
        "pydoc",
        "the embedded corpus, used without --data/--dataset: Python's pydoc topics (465 KB) or the standard "
        "library's sources",
        group="data",
        choices=EMBEDDED_CORPORA,
    )
    dedup: bool = option(False, "drop exact duplicate documents before tokenising", group="data", action="store_true")
    tokenizer: str = option(
        "train",
        "train: fit a byte-level BPE on the training split; gpt2: GPT-2's from the Hub; PATH: a directory "
        "with encoder.json + vocab.bpe or a saved tokenizer",
        group="data",
        metavar="gpt2|PATH|train",
    )
    vocab_size: int = option(
        DEFAULT_VOCAB_SIZE,
        "vocabulary of --tokenizer train (at most; see --min-frequency)",
        group="data",
        check=positive,
        type=int,
    )
    min_frequency: int = option(
        DEFAULT_MIN_FREQUENCY,
        "--tokenizer train merges a pair of tokens only where it occurs at least this often in "
        "the text it is fitted on, so a small corpus gets fewer than --vocab-size tokens (1: every pair)",
        group="data",
        check=positive,
        type=int,
    )
    train_ratio: float = option(
        0.9, "share of the text (in characters) for training; the rest validates", group="data", check=ratio, type=float
    )
    context_length: int | None = option(
        help="window length in tokens (default: the model's)", group="data", check=positive, type=int
    )
    stride: int | None = option(
        help="tokens between window starts (default: the window length)", group="data", check=positive, type=int
    )
    document_mask: bool = option(
        False,
        "keep attention inside each <|endoftext|>-separated document of a window (positions restart at each document)",
        group="data",
        action="store_true",
    )
    num_proc: int | None = option(
        help="tokenising processes (default: 1 below 64 M characters, else all CPUs)",
        group="data",
        check=positive,
        resume=MAY_CHANGE,
        type=int,
    )
    cache_dir: str | None = option(
        help="where prepared token files and fitted tokenizers are kept, and hub datasets downloaded (default: HF's "
        "datasets cache)",
        group="data",
        resume=MAY_CHANGE,
    )
    streaming: bool = option(
        False,
        "with --dataset: tokenise on the fly from datasets' streaming mode instead of preparing token files "
        "(needs --max-steps; validation is the split's first documents)",
        group="data",
        action="store_true",
    )
    shuffle_buffer: int = option(
        1000, "with --streaming: windows in the shuffle buffer", group="data", check=positive, type=int
    )

    # Model
    preset: str = option(
        "tiny",
        "model size: tiny, gpt2-124m, gpt2-355m, gpt2-774m or gpt2-1558m",
        group="model",
        check=one_of(PRESET_NAMES, "preset"),
        metavar="NAME",
    )
    n_layers: int | None = option(help="override the preset's number of transformer blocks", group="model", type=int)
    n_heads: int | None = option(help="override the preset's attention heads", group="model", type=int)
    emb_dim: int | None = option(help="override the preset's embedding size", group="model", type=int)
    qkv_bias: bool | None = option(
        help="override the preset's qkv bias", group="model", action=argparse.BooleanOptionalAction
    )
    dropout: float | None = option(
        help="dropout after the embeddings and on the residual branches (default: 0; the book trains with 0.1)",
        group="model",
        check=below_one,
        type=float,
    )
    attention_dropout: float | None = option(
        help="dropout on the attention weights (default: 0, which keeps SDPA's fused kernel; the book applies "
        "--dropout there too)",
        group="model",
        check=below_one,
        type=float,
    )
    config: dict[str, Any] = option(
        {},
        "override any model field, e.g. context_length=512 or layer_norm_eps=1e-6 (repeatable)",
        group="model",
        action="append",
        metavar="KEY=VALUE",
    )

    # Optimisation
    engine: str = option(
        "accelerate",
        "accelerate: the manual loop; trainer: the Hugging Face Trainer",
        group="optimisation",
        check=one_of(ENGINES, "engine"),
        choices=ENGINES,
    )
    epochs: int | None = option(
        help=f"passes over the training windows (default: {DEFAULT_EPOCHS}; with --max-time, no limit)",
        group="optimisation",
        check=positive,
        resume=MAY_CHANGE,
        type=int,
    )
    max_steps: int | None = option(
        help="optimizer steps to run (overrides --epochs)",
        group="optimisation",
        check=positive,
        resume=MAY_CHANGE,
        type=int,
    )
    max_time: str | None = option(
        help="train for this long: seconds (90) or a duration (90s, 10m, 2h); the schedule decays over it and the "
        "final evaluation and checkpoint fit in it. With --max-steps or --epochs, the first limit reached ends the "
        "run",
        group="optimisation",
        check=duration,
        resume=MAY_CHANGE,
        metavar="DURATION",
    )
    batch_size: int = option(4, "windows per batch and process", group="optimisation", check=positive, type=int)
    optimizer: str = option(
        "muon",
        "muon: torch.optim.Muon for the blocks' weight matrices, AdamW for the embeddings, norms and biases; "
        "adamw: AdamW for every weight",
        group="optimisation",
        check=one_of(OPTIMIZERS, "optimizer"),
        choices=OPTIMIZERS,
    )
    lr: float | None = option(
        help=f"peak learning rate, AdamW's and Muon's unless --muon-lr (default: {DEFAULT_LR['muon']:g} with "
        f"--optimizer muon, {DEFAULT_LR['adamw']:g} with adamw)",
        group="optimisation",
        check=greater_than_zero,
        type=float,
    )
    muon_lr: float | None = option(
        help="Muon's peak learning rate (default: --lr; Muon's update is scaled to AdamW's size)",
        group="optimisation",
        check=greater_than_zero_if_set,
        type=float,
    )
    muon_momentum: float = option(
        0.8,
        "Muon's Nesterov momentum (torch's and modded-nanogpt's is 0.95, for runs of thousands of steps; 0.8 "
        "learned more in runs of minutes)",
        group="optimisation",
        check=below_one,
        type=float,
    )
    weight_decay: float = option(0.1, "on weight matrices only", group="optimisation", check=not_negative, type=float)
    warmup_steps: int = option(20, "linear warmup steps", group="optimisation", check=not_negative, type=int)
    lr_scheduler: str = option(
        "cosine",
        "the learning rate after warmup: constant, linear (to 0), cosine (to --min-lr) or wsd "
        "(warmup-stable-decay: constant, then a linear decay to --min-lr over the last --decay-ratio)",
        group="optimisation",
        check=one_of(LR_SCHEDULERS, "scheduler"),
        choices=LR_SCHEDULERS,
    )
    min_lr: float | None = option(
        help=f"the learning rate cosine and wsd end at (default: --lr / {MIN_LR_DIVISOR:g})",
        group="optimisation",
        check=not_negative_if_set,
        type=float,
    )
    decay_ratio: float = option(
        0.2, "wsd: the share of the run its decay takes", group="optimisation", check=fraction, type=float
    )
    grad_accum: int = option(1, "micro-batches per optimizer step", group="optimisation", check=positive, type=int)
    max_grad_norm: float = option(1.0, "gradient clipping", group="optimisation", check=greater_than_zero, type=float)
    mixed_precision: str = option(
        "no",
        "autocast precision (the weights stay fp32)",
        group="optimisation",
        check=one_of(MIXED_PRECISION, "precision"),
        choices=MIXED_PRECISION,
    )
    seed: int = option(123, "seeds weights, shuffling and dropout", group="optimisation", type=int)
    compile: bool = option(
        False, "torch.compile the model (pays off on GPUs)", group="optimisation", action="store_true"
    )

    # Evaluation and samples
    eval_freq: int | None = option(
        help=f"evaluate every N steps (default: {DEFAULT_EVAL_FREQ}, or every epoch where an epoch is shorter)",
        group="evaluation and samples",
        check=positive,
        resume=MAY_CHANGE,
        type=int,
    )
    eval_iter: int = option(
        5, "batches per evaluation", group="evaluation and samples", check=positive, resume=MAY_CHANGE, type=int
    )
    start_context: str | None = option(
        help="prompt of the samples (default: one that suits the corpus)",
        group="evaluation and samples",
        resume=MAY_CHANGE,
    )
    temperature: float = option(
        0.8, "0 is greedy", group="evaluation and samples", check=not_negative, resume=MAY_CHANGE, type=float
    )
    top_k: int | None = option(
        40,
        "sample from the k most likely tokens (0: from all)",
        group="evaluation and samples",
        check=positive,
        resume=MAY_CHANGE,
        type=int,
    )
    max_new_tokens: int = option(
        50, "sample length", group="evaluation and samples", check=new_tokens, resume=MAY_CHANGE, type=int
    )
    early_stopping_patience: int = option(
        DEFAULT_PATIENCE,
        "stop after N evaluations without a better validation loss, and keep the best model (0: "
        "never stop, keep the last)",
        group="evaluation and samples",
        check=not_negative,
        resume=MAY_CHANGE,
        type=int,
    )

    # Checkpoints and logging
    save_steps: int | None = option(
        100, "checkpoint every N steps", group="checkpoints and logging", check=positive, resume=MAY_CHANGE, type=int
    )
    save_total_limit: int = option(
        2, "checkpoints kept", group="checkpoints and logging", check=positive, resume=MAY_CHANGE, type=int
    )
    report_to: list[str] = option(
        [], "experiment trackers", group="checkpoints and logging", resume=MAY_CHANGE, nargs="+", choices=TRACKERS
    )
    peak_flops: float | None = option(
        help="the FLOP/s one process's device can do (e.g. 989e12 for an H100's bf16), the denominator of MFU "
        "(default: this machine's matmul throughput, measured at start in the training precision)",
        group="checkpoints and logging",
        check=greater_than_zero_if_set,
        resume=MAY_CHANGE,
        type=float,
    )

    def __post_init__(self) -> None:
        if self.lr is None:
            self.lr = DEFAULT_LR.get(self.optimizer)  # an unknown optimizer is refused by its own check

    def floor_lr(self) -> float:
        """Where the schedule ends: --min-lr, by default a MIN_LR_DIVISOR-th of --lr for cosine and wsd; 0 for the
        others (linear decays to 0; constant does not decay)."""
        if self.lr_scheduler not in FLOOR_SCHEDULERS:
            return 0.0
        return self.lr / MIN_LR_DIVISOR if self.min_lr is None else self.min_lr

    def time_budget(self) -> float | None:
        """--max-time in seconds, or None."""
        return None if self.max_time is None else parse_duration(self.max_time)

    def model_overrides(self) -> dict[str, Any]:
        """The model fields this run sets over its preset: `config`, then the shape flags (dropout aside)."""
        flags = {name: getattr(self, name) for name in ("n_layers", "n_heads", "emb_dim", "qkv_bias")}
        return {**self.config, **{name: value for name, value in flags.items() if value is not None}}


OPTION_FIELDS = {spec.name: spec for spec in dataclasses.fields(TrainOptions)}


def check_fields(options: Any, names: Iterable[str]) -> None:
    """Runs the own checks of the options `names` (TrainOptions fields) on `options`, which has them as attributes."""
    for name in names:
        check = OPTION_FIELDS[name].metadata["check"]
        if check is not None:
            check(flag_name(name), getattr(options, name))


def check_options(options: TrainOptions) -> None:
    """Runs every option's own check, then those of options that go together; each error names its flag and the
    fix."""
    check_fields(options, OPTION_FIELDS)
    if options.min_lr is not None and options.lr_scheduler not in FLOOR_SCHEDULERS:
        raise UsageError(
            f"--min-lr {options.min_lr}: --lr-scheduler {options.lr_scheduler} has no floor; use "
            f"{' or '.join(FLOOR_SCHEDULERS)}"
        )
    if options.min_lr is not None and options.min_lr >= options.lr:
        raise UsageError(f"--min-lr {options.min_lr} must be below --lr {options.lr}")
    if options.streaming:
        check_streaming(options)


def check_streaming(options: TrainOptions) -> None:
    """--streaming reads a hub dataset as it trains, with the Accelerate loop, for a given number of steps."""
    if not options.dataset:
        raise UsageError(
            "--streaming streams a --dataset NAME; local files (--data) are tokenised once into token "
            "files instead (see gptscratch-prepare)"
        )
    if options.max_steps is None:
        raise UsageError("--streaming needs --max-steps N: a stream has no length to count epochs in")
    if options.engine == "trainer":
        raise UsageError(
            "--engine trainer does not take --streaming: the Trainer resumes a stream by reading it "
            "again from the start; use --engine accelerate, whose checkpoints keep the stream's position"
        )
    if options.dedup:
        raise UsageError("--dedup compares whole documents before training; it does not apply to --streaming")


def resume_differences(options: TrainOptions, original: TrainOptions) -> list[str]:
    """The options a resumed run sets otherwise than the run it continues, of those that must match (field names)."""
    return [
        name
        for name, spec in OPTION_FIELDS.items()
        if spec.metadata["resume"] == MUST_MATCH and getattr(options, name) != getattr(original, name)
    ]


# ---------------------------------------------------------------------------------------------------------------------
# The command line: the parser, derived from the fields, and --config-file


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default only when it has one: not for unset options (None) or off switches (False)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, [], {}):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """`gptscratch-train`'s parser: one flag per TrainOptions field, in its group, plus --config-file."""
    parser = ArgumentParser(
        prog=PROGRAM,
        description="Pretrain a GPT from scratch on unlabeled text (next-token prediction). With no data flags it "
        "trains on an embedded corpus that ships with Python, with a tokenizer fitted on it.",
        formatter_class=DefaultsFormatter,
    )
    parser.add_argument(
        "--config-file",
        metavar="FILE",
        help="a YAML or JSON file of options (the flags' names, e.g. batch_size: 8); flags given here win",
    )
    add_option_flags(parser, OPTION_FIELDS)
    return parser


def add_option_flags(parser: argparse.ArgumentParser, names: Sequence[str]) -> None:
    """Adds the flags of the TrainOptions fields `names` to `parser`, each in its group (the "run" group is the
    parser's own)."""
    groups: dict[str, Any] = {"run": parser}
    for name in names:
        spec = OPTION_FIELDS[name]
        if spec.metadata["flag"].get("action") == "append":
            default = []  # KEY=VALUE strings, read into the field's dict by parse_arguments
        elif spec.default_factory is not dataclasses.MISSING:
            default = spec.default_factory()
        else:
            default = None if spec.default is dataclasses.MISSING else spec.default
        group = spec.metadata["group"]
        if group not in groups:
            groups[group] = parser.add_argument_group(group)
        groups[group].add_argument(
            flag_name(name), dest=name, default=default, help=spec.metadata["help"] or None, **spec.metadata["flag"]
        )


def parse_config_pairs(pairs: Sequence[str]) -> dict[str, str]:
    """`KEY=VALUE` strings -> dict of strings; each value is parsed by its model field's type once the model's fields
    are at hand (`train.run.check_model_options`: this module imports no torch)."""
    overrides = {}
    for pair in pairs:
        key, separator, value = pair.partition("=")
        if not separator or not key:
            raise UsageError(f"--config {pair}: expected KEY=VALUE, e.g. --config context_length=512")
        overrides[key] = value
    return overrides


def config_file_arguments(path: str) -> list[str]:
    """The options in a YAML or JSON file as the command-line arguments that set them, so the file's values go
    through the same parsing and checks as flags (and flags after them win)."""
    fix = "write a mapping of option names to values, e.g. batch_size: 8"
    text = read_utf8_file(path, "--config-file", fix)
    if Path(path).suffix.lower() == ".json":
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise UsageError(f"--config-file {path} is not valid JSON ({error}); {fix}") from None
    else:
        import yaml  # PyYAML comes with datasets

        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError as error:
            reason = str(error).splitlines()[0]
            raise UsageError(f"--config-file {path} is not valid YAML ({reason}); {fix}") from None
    if not isinstance(values, dict):
        raise UsageError(f"--config-file {path} does not hold a mapping; {fix}")
    arguments = []
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name not in OPTION_FIELDS:
            raise UsageError(f"--config-file {path}: {key!r} is not an option; see {PROGRAM} --help for their names")
        flag = flag_name(name)
        action = OPTION_FIELDS[name].metadata["flag"].get("action")
        if action == "store_true":
            arguments += [flag] if value is True else []
        elif action is argparse.BooleanOptionalAction:
            arguments += [flag if value else "--no-" + flag[2:]] if value is not None else []
        elif name == "config":
            if not isinstance(value, dict):
                raise UsageError(f"--config-file {path}: config must be a mapping of model fields, e.g. n_layers: 4")
            for field_name, field_value in value.items():
                # As typed on the command line: YAML's true and null as true and null, numbers and text as they are.
                if isinstance(field_value, bool) or field_value is None:
                    field_value = json.dumps(field_value)
                arguments += ["--config", f"{field_name}={field_value}"]
        elif isinstance(value, list):
            arguments += [flag, *map(str, value)]
        elif value is not None:
            arguments += [flag, str(value)]
    return arguments


def parse_arguments(argv: Sequence[str] | None) -> TrainOptions:
    """The command line (and its --config-file) as TrainOptions, after argparse's and every option's checks."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.config_file:
        from_file = config_file_arguments(args.config_file)
        try:
            parser.parse_args(from_file)
        except UsageError as error:
            raise UsageError(f"--config-file {args.config_file}: {error}") from None
        args = parser.parse_args([*from_file, *argv])
    values = vars(args)
    del values["config_file"]
    if values["output_dir"] is None:
        raise UsageError(f"the following arguments are required: --output-dir; see {PROGRAM} --help")
    values["config"] = parse_config_pairs(values["config"])
    values["top_k"] = values["top_k"] or None  # 0 keeps every token
    options = TrainOptions(**values)
    check_options(options)
    return options
