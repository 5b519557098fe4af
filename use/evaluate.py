"""`gptscratch-eval` (also `python -m use.evaluate`): a model directory's loss, perplexity and bits per byte on text
files (`use.scoring`), or its scores on lm-eval's benchmark tasks (`train.tasks`).

    gptscratch-eval --model DIR --data FILE... [--context-length L] [--stride S] [--batch-size B] [--json]
    gptscratch-eval --model DIR --tasks NAME[,NAME...] [--limit N] [--include-path DIR] [--batch-size B] [--json]

Python: `use.scoring.evaluate_text(model, tokenizer, texts)` and `train.tasks.evaluate_tasks(model, tokenizer,
["hellaswag"])`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from common.commands import ArgumentParser, UsageError, run_command
from common.model_dir import inference_device, load_model_weights, read_model_directory
from train.tasks import (
    LM_EVAL_INSTALL,
    check_generation_budget,
    evaluate_tasks,
    format_task_table,
    import_lm_eval,
    load_tasks,
)
from use.scoring import check_text_file, evaluate_files

PROG = "gptscratch-eval"


def build_parser() -> argparse.ArgumentParser:
    """The flags of `gptscratch-eval`: the model directory, then text files (--data) or lm-eval tasks (--tasks)."""
    parser = ArgumentParser(
        prog=PROG,
        description="Evaluate a model directory, in one of two modes. --data: loss, perplexity and bits per byte on "
        "text files (sliding window). Each file is scored on its own, after a leading <|endoftext|> so that its first "
        "token is scored too, and the last window may be shorter than the context, so every token of the text is "
        "scored once. (The training loop's validation loss scores only the full windows of its own token stream; "
        "use.scoring.score_token_ids reproduces it.) --tasks: lm-eval benchmark tasks such as hellaswag or "
        f"lambada_openai, or your own task YAMLs (needs lm-eval: {LM_EVAL_INSTALL}).",
    )
    parser.add_argument("--model", required=True, help="model directory (trained or converted)")
    parser.add_argument("--data", nargs="+", metavar="FILE", help="text mode: UTF-8 text files, each scored alone")
    parser.add_argument(
        "--tasks",
        metavar="NAME[,NAME...]",
        help="task mode: lm-eval tasks, groups or task YAML paths, comma-separated (e.g. hellaswag,lambada_openai)",
    )
    parser.add_argument(
        "--context-length", type=int, default=None, help="text mode: window length (default: the model's)"
    )
    parser.add_argument(
        "--stride",
        type=int,
        default=None,
        help="text mode: tokens between window starts (default: the context length, non-overlapping windows as in "
        "training); smaller gives each token more history and costs context/stride times more",
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        metavar="N",
        help="task mode: evaluate only the first N documents of each task (a quick check, not the benchmark's score)",
    )
    parser.add_argument(
        "--include-path",
        default=None,
        metavar="DIR",
        help="task mode: a directory of your own task YAMLs (lm-eval's include_path); they win over built-in tasks "
        "of the same name",
    )
    parser.add_argument(
        "--batch-size", type=int, default=4, help="windows, or lm-eval requests, per forward pass (default 4)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return parser


def _refuse_other_modes_flags(args: argparse.Namespace, flags: Sequence[str], mode: str) -> None:
    """A UsageError for the first of `flags` that was given: it belongs to the other mode than `mode`."""
    for flag in flags:
        if getattr(args, flag.lstrip("-").replace("-", "_")) is not None:
            raise UsageError(f"{flag} does not apply to {mode}; drop it")


def _main_text(args: argparse.Namespace) -> None:
    """--data: loss, perplexity and bits per byte of the model on the text files."""
    _refuse_other_modes_flags(args, ("--limit", "--include-path"), "--data (it is for --tasks)")
    for path in args.data:
        check_text_file(path)
    config, tokenizer = read_model_directory(args.model)
    model_context = config.max_position_embeddings
    context_length = model_context if args.context_length is None else args.context_length
    if not 1 <= context_length <= model_context:
        raise UsageError(
            f"--context-length must be between 1 and the model's context {model_context}, got {context_length}"
        )
    stride = context_length if args.stride is None else args.stride
    if not 1 <= stride <= context_length:
        raise UsageError(f"--stride must be between 1 and the context length {context_length}, got {stride}")
    model = load_model_weights(args.model, config, device=inference_device())
    result = evaluate_files(model, tokenizer, args.data, context_length, stride, args.batch_size)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"data           {len(args.data)} file(s), {result['bytes']:,} bytes, {result['tokens']:,} tokens scored")
        print(f"windows        context {context_length}, stride {stride}")
        print(f"loss           {result['loss']:.4f} nats/token")
        print(f"perplexity     {result['perplexity']:.2f}")
        print(f"bits per byte  {result['bits_per_byte']:.4f}")


def _main_tasks(args: argparse.Namespace) -> None:
    """--tasks: lm-eval's scores of the model on the tasks. Every refusal comes before the weights are loaded:
    lm-eval missing, the model directory, the flags, unknown tasks, task data that cannot be had."""
    _refuse_other_modes_flags(args, ("--context-length", "--stride"), "--tasks (it is for --data)")
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit must be >= 1, got {args.limit}")
    if args.include_path is not None and not Path(args.include_path).is_dir():
        raise UsageError(f"--include-path {args.include_path} is not a directory; pass a directory of task YAMLs")
    names = [name.strip() for name in args.tasks.split(",") if name.strip()]
    if not names:
        raise UsageError("--tasks names no task; pass e.g. --tasks hellaswag,lambada_openai")
    import_lm_eval()
    config, tokenizer = read_model_directory(args.model)
    selection = load_tasks(names, args.include_path)
    check_generation_budget(selection, config.max_position_embeddings)
    model = load_model_weights(args.model, config, device=inference_device())
    summary = evaluate_tasks(model, tokenizer, selection, limit=args.limit, batch_size=args.batch_size)
    print(json.dumps(summary) if args.json else format_task_table(summary))


def _main(argv: Sequence[str] | None) -> None:
    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if (args.data is None) == (args.tasks is None):
        raise UsageError(
            "pass exactly one of --data FILE... (loss, perplexity, bits per byte on text) and --tasks NAME[,NAME...] "
            f"(lm-eval tasks); see {PROG} --help"
        )
    if args.tasks is not None:
        _main_tasks(args)
    else:
        _main_text(args)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of `gptscratch-eval` (also `python -m train.evaluate`); `argv` defaults to the command line."""
    run_command(PROG, lambda: _main(argv))


if __name__ == "__main__":
    main()
