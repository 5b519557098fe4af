"""`gptscratch-train`: pretrain a GPTScratch model on unlabeled text. Parses flags, calls `train.run.train`, prints.

Its flags are the fields of `train.options`, a flag per field (the name with dashes), listed in the fields' groups;
`--config-file run.yaml` (or .json) sets the same fields by name, and flags given on the command line win. The
options are standard library only, so bad arguments are refused before torch is imported; `train.run` and what it
brings are imported once the arguments are good.
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
from collections.abc import Sequence
from typing import Any

from common.commands import ArgumentParser, UsageError, flag_name, print_error, run_command
from common.files import check_apart
from train.option_values import fields_from_file, parse_pairs, parse_text
from train.options import DURATION, FIELDS, INTEGER, NUMBER, PAIRS, SWITCH, TEXTS, TOGGLE, TrainOptions, iterate_fields

PROGRAM = "gptscratch-train"


class DefaultsFormatter(argparse.HelpFormatter):
    """Shows a field's default after its help where it has one: not for unset options (None), off switches (False),
    empty lists and mappings."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        spec = FIELDS.get(action.dest)
        if spec is None or spec.default in (None, False, dataclasses.MISSING):
            return action.help
        return f"{action.help} (default: {spec.default})"


class FlagNames(dict):
    """`{name}` in a field's help is another field, shown as its flag."""

    def __missing__(self, key: str) -> str:
        return flag_name(key)


def add_field_flags(parser: argparse.ArgumentParser, names: Sequence[str] | None = None) -> None:
    """Adds a flag for each field of `names` (every field by default) to `parser`, in its group, typed by its kind.
    Defaults stay unset (argparse.SUPPRESS): what a command line did not give comes from elsewhere (a file, the
    declarations)."""
    groups: dict[str, Any] = {"run": parser}
    for title, name, spec in iterate_fields():
        if names is not None and name not in names:
            continue
        meta = spec.metadata
        settings: dict[str, Any] = {"metavar": meta["metavar"], "choices": meta["choices"]}
        kind = meta["kind"]
        if kind == SWITCH:
            settings = {"action": "store_true"}
        elif kind == TOGGLE:
            settings = {"action": argparse.BooleanOptionalAction}
        elif kind == TEXTS:
            settings["nargs"] = "+"
        elif kind == PAIRS:
            settings["action"] = "append"
        elif meta["bare"] is not None:
            settings.update(nargs="?", const=meta["bare"])
        if kind in (INTEGER, NUMBER, DURATION) and settings["metavar"] is None:
            settings["metavar"] = "N" if kind == INTEGER else "X" if kind == NUMBER else None
        if title not in groups:
            groups[title] = parser.add_argument_group(title)
        groups[title].add_argument(
            flag_name(name),
            dest=name,
            default=argparse.SUPPRESS,
            help=meta["help"].format_map(FlagNames()) or None,
            **{key: value for key, value in settings.items() if value is not None},
        )


def flag_values(args: argparse.Namespace) -> dict[str, Any]:
    """The fields a parsed command line gave, typed: numbers parsed, KEY=VALUE pairs collected."""
    values = {}
    for name, value in vars(args).items():
        if name not in FIELDS:
            continue
        kind = FIELDS[name].metadata["kind"]
        if kind == PAIRS:
            value = parse_pairs(name, value)
        elif kind in (INTEGER, NUMBER) and isinstance(value, str):
            value = parse_text(name, value)
        values[name] = value
    return values


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
        default=None,
        help="a YAML or JSON file of options (the flags' names, e.g. batch_size: 8); flags given here win",
    )
    add_field_flags(parser)
    return parser


def parse_arguments(argv: Sequence[str] | None) -> TrainOptions:
    """The command line (and its --config-file) as TrainOptions, after every field's check: the declarations'
    defaults, then the file's values, then the flags'."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    values = fields_from_file(args.config_file) if args.config_file else {}
    values.update(flag_values(args))
    if "output_dir" not in values:
        raise UsageError(f"the following arguments are required: --output-dir; see {PROGRAM} --help")
    if args.config_file:  # a replaced output directory must not take the file that describes the run with it
        check_apart(
            values["output_dir"], {"config_file": [args.config_file]}, named=f"--output-dir {values['output_dir']}"
        )
    options = TrainOptions.from_fields(**values)
    options.check()
    return options


def run(argv: Sequence[str] | None = None) -> int:
    """Parses `argv`, trains, prints the outcome; returns the exit status (128 + signal number when stopped, 1 when
    the loss diverged)."""
    options = parse_arguments(argv)
    # Imported once the arguments are good: torch, transformers and datasets take seconds to load.
    from accelerate import PartialState

    from train.run import train, verify_model_directory
    from train.stability import TrainingDiverged
    from train.stopping import StopReason

    try:
        result = train(options)
    except TrainingDiverged as error:
        print_error(f"{PROGRAM}: stopped: {error}")
        return 1
    if result is None or not PartialState().is_main_process:
        return 0
    if result.already_finished:
        further = (
            "--early-stopping-patience" if result.reason == StopReason.EARLY_STOPPED else "--max-steps or --epochs"
        )
        print(
            f"nothing to do: the run in {result.output_dir} already finished at step {result.steps} "
            f"({result.reason.value}) and its model directory is complete; raise {further} to train further"
        )
        return 0
    if result.reason == StopReason.INTERRUPTED:
        name = signal.Signals(result.signal_number).name if result.signal_number else "a stop request"
        print(
            f"stopped by {name} at step {result.steps}; checkpoint {result.last_checkpoint}. "
            f"Continue with the same command and --resume"
        )
        return 128 + (result.signal_number or 0)
    first, last = result.metrics[0], result.summary
    print(
        f"done ({result.reason.value}): {result.steps} steps, {result.epochs:.2f} epochs, {result.tokens_seen:,} "
        f"tokens; val loss {first['val_loss']:.3f} -> {last['val_loss']:.3f}, "
        f"val perplexity {first['val_perplexity']:.1f} -> {last['val_perplexity']:.1f}"
    )
    print(f"model directory: {result.output_dir} (metrics.jsonl, loss_plot.png, loss_plot.pdf, training_summary.json)")
    evaluation = options.evaluation
    text = verify_model_directory(
        result.output_dir,
        result.start_context,
        evaluation.max_new_tokens,
        evaluation.temperature,
        evaluation.sampling_top_k(),
        options.optimisation.seed,
    )
    print(f"reloaded with AutoModelForCausalLM.from_pretrained(..., trust_remote_code=True): {text!r}")
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: bad input is one line on stderr and exit status 2."""
    run_command(PROGRAM, lambda: run(argv))


if __name__ == "__main__":
    main()
