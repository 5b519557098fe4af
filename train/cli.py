"""`gptscratch-train`: pretrain a GPTScratch model on unlabeled text. Parses flags, calls `train.run.train`, prints."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Sequence
from typing import Any

from convert.commands import ArgumentParser, UsageError, run_command
from train.options import TrainingDiverged, TrainOptions

PROGRAM = "gptscratch-train"


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default only when it has one: not for unset options (None) or off switches (False)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    from train.options import ENGINES, LR_SCHEDULERS, MIXED_PRECISION

    defaults = TrainOptions(output_dir="")
    parser = ArgumentParser(
        prog=PROGRAM,
        description="Pretrain a GPT from scratch on unlabeled text (next-token prediction). With no data flags it "
        "trains on an embedded corpus that ships with Python, with a tokenizer fitted on it.",
        formatter_class=_DefaultsFormatter,
    )
    parser.add_argument("--output-dir", required=True,
                        help="the model directory to write (metrics, plot and checkpoints inside)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output-dir")
    parser.add_argument("--resume", nargs="?", const="latest", default=None, metavar="PATH",
                        help="continue from the newest checkpoint in --output-dir, or from checkpoint PATH")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit")

    data = parser.add_argument_group("data")
    data.add_argument("--data", nargs="+", metavar="PATH", help="UTF-8 text files, directories or globs")
    data.add_argument("--dataset", help="a Hugging Face dataset name (online, or cached)")
    data.add_argument("--dataset-config", help="the dataset's configuration")
    data.add_argument("--dataset-split", default=defaults.dataset_split, help="the dataset's split")
    data.add_argument("--text-column", default=defaults.text_column, help="the dataset's text column")
    data.add_argument("--embedded", choices=("pydoc", "stdlib"), default=defaults.embedded,
                      help="the embedded corpus, used without --data/--dataset: Python's pydoc topics (465 KB) "
                      "or the standard library's sources")
    data.add_argument("--dedup", action="store_true", help="drop exact duplicate documents before tokenising")
    data.add_argument("--tokenizer", default=defaults.tokenizer, metavar="gpt2|PATH|train",
                      help="train: fit a byte-level BPE on the training split; gpt2: GPT-2's from the Hub; PATH: "
                      "a directory with encoder.json + vocab.bpe or a saved tokenizer")
    data.add_argument("--vocab-size", type=int, default=defaults.vocab_size, help="vocabulary of --tokenizer train")
    data.add_argument("--train-ratio", type=float, default=defaults.train_ratio,
                      help="share of the text (in characters) for training; the rest validates")
    data.add_argument("--context-length", type=int, help="window length in tokens (default: the model's)")
    data.add_argument("--stride", type=int, help="tokens between window starts (default: the window length)")
    data.add_argument("--document-mask", action="store_true",
                      help="keep attention inside each <|endoftext|>-separated document of a window (positions "
                      "restart at each document)")
    data.add_argument("--num-proc", type=int,
                      help="tokenising processes (default: 1 below 64 M characters, else all CPUs)")
    data.add_argument("--cache-dir", help="where datasets keeps its Arrow caches (default: HF's datasets cache)")

    model = parser.add_argument_group("model")
    model.add_argument("--preset", default=defaults.preset, metavar="NAME",
                       help="model size: tiny, gpt2-124m, gpt2-355m, gpt2-774m or gpt2-1558m")
    model.add_argument("--n-layers", type=int, help="override the preset's number of transformer blocks")
    model.add_argument("--n-heads", type=int, help="override the preset's attention heads")
    model.add_argument("--emb-dim", type=int, help="override the preset's embedding size")
    model.add_argument("--qkv-bias", action=argparse.BooleanOptionalAction, help="override the preset's qkv bias")
    model.add_argument("--dropout", type=float, help="dropout rate (default: the preset's, 0.1)")
    model.add_argument("--config", action="append", default=[], metavar="KEY=VALUE",
                       help="override any model field, e.g. context_length=512 or layer_norm_eps=1e-6 (repeatable)")

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--engine", choices=ENGINES, default=defaults.engine,
                       help="accelerate: the manual loop; trainer: the Hugging Face Trainer")
    optim.add_argument("--epochs", type=int, default=defaults.epochs, help="passes over the training windows")
    optim.add_argument("--max-steps", type=int, help="optimizer steps to run (overrides --epochs)")
    optim.add_argument("--batch-size", type=int, default=defaults.batch_size, help="windows per batch and process")
    optim.add_argument("--lr", type=float, default=defaults.lr, help="AdamW's peak learning rate")
    optim.add_argument("--weight-decay", type=float, default=defaults.weight_decay, help="on weight matrices only")
    optim.add_argument("--warmup-steps", type=int, default=defaults.warmup_steps, help="linear warmup steps")
    optim.add_argument("--lr-scheduler", choices=LR_SCHEDULERS, default=defaults.lr_scheduler,
                       help="the learning rate after warmup")
    optim.add_argument("--grad-accum", type=int, default=defaults.grad_accum, help="micro-batches per optimizer step")
    optim.add_argument("--max-grad-norm", type=float, default=defaults.max_grad_norm, help="gradient clipping")
    optim.add_argument("--mixed-precision", choices=MIXED_PRECISION, default=defaults.mixed_precision)
    optim.add_argument("--seed", type=int, default=defaults.seed, help="seeds weights, shuffling and dropout")
    optim.add_argument("--compile", action="store_true", help="torch.compile the model (pays off on GPUs)")

    evaluation = parser.add_argument_group("evaluation and samples")
    evaluation.add_argument("--eval-freq", type=int, default=defaults.eval_freq, help="evaluate every N steps")
    evaluation.add_argument("--eval-iter", type=int, default=defaults.eval_iter, help="batches per evaluation")
    evaluation.add_argument("--start-context", help="prompt of the samples (default: one that suits the corpus)")
    evaluation.add_argument("--temperature", type=float, default=defaults.temperature, help="0 is greedy")
    evaluation.add_argument("--top-k", type=int, default=defaults.top_k,
                            help="sample from the k most likely tokens (0: from all)")
    evaluation.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens, help="sample length")
    evaluation.add_argument("--early-stopping-patience", type=int,
                            help="stop after N evaluations without a better validation loss; keep the best model")

    outputs = parser.add_argument_group("checkpoints and logging")
    outputs.add_argument("--save-steps", type=int, default=defaults.save_steps, help="checkpoint every N steps")
    outputs.add_argument("--save-total-limit", type=int, default=defaults.save_total_limit, help="checkpoints kept")
    outputs.add_argument("--report-to", nargs="+", default=[], choices=("tensorboard", "wandb", "mlflow"),
                         help="experiment trackers")
    return parser


def parse_config_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """`KEY=VALUE` strings -> dict; values are read as JSON (numbers, true/false, null), else kept as strings."""
    overrides = {}
    for pair in pairs:
        key, separator, value = pair.partition("=")
        if not separator or not key:
            raise UsageError(f"--config {pair}: expected KEY=VALUE, e.g. --config context_length=512")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


def options_from_args(args: argparse.Namespace) -> TrainOptions:

    overrides = parse_config_overrides(args.config)
    for flag in ("n_layers", "n_heads", "emb_dim", "qkv_bias"):
        if getattr(args, flag) is not None:
            overrides[flag] = getattr(args, flag)
    model_flags = {"config", "n_layers", "n_heads", "emb_dim", "qkv_bias"}
    values = {key: value for key, value in vars(args).items() if key not in model_flags}
    values["top_k"] = values["top_k"] or None  # 0 keeps every token
    return TrainOptions(**values, model_overrides=overrides)


def run(argv: Sequence[str] | None = None) -> int:
    """Parses `argv`, trains, prints the outcome; returns the exit status (128 + signal number when stopped)."""
    args = build_parser().parse_args(argv)
    from train.run import train, verify_model_directory

    options = options_from_args(args)
    result = train(options)
    if result is None:
        return 0
    from accelerate import PartialState

    if not PartialState().is_main_process:
        return 0
    if result.reason == "interrupted":
        name = signal.Signals(result.signal_number).name if result.signal_number else "a stop request"
        print(
            f"stopped by {name} at step {result.steps}; checkpoint {result.last_checkpoint}. "
            f"Continue with the same command and --resume"
        )
        return 128 + (result.signal_number or 0)
    first, last = result.metrics[0], result.summary
    print(
        f"done ({result.reason}): {result.steps} steps, {result.epochs:.2f} epochs, {result.tokens_seen:,} tokens; "
        f"val loss {first['val_loss']:.3f} -> {last['val_loss']:.3f}, "
        f"val perplexity {first['val_perplexity']:.1f} -> {last['val_perplexity']:.1f}"
    )
    print(f"model directory: {result.output_dir} (metrics.jsonl, loss_plot.png, loss_plot.pdf, training_summary.json)")
    text = verify_model_directory(
        result.output_dir, result.start_context, options.max_new_tokens, options.temperature, options.top_k,
        options.seed,
    )
    print(f"reloaded with AutoModelForCausalLM.from_pretrained(..., trust_remote_code=True): {text!r}")
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: bad input is one line on stderr and exit status 2."""

    def guarded() -> int:
        try:
            return run(argv)
        except TrainingDiverged as error:
            print(f"{PROGRAM}: stopped: {error}", file=sys.stderr)
            return 1

    run_command(PROGRAM, guarded)


if __name__ == "__main__":
    main()
