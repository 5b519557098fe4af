"""`gptscratch-convert` (also `python -m convert`): OpenAI's GPT-2 checkpoints, the book's, or a transformers GPT-2
into a model directory.

    gptscratch-convert --checkpoint-dir DIR --output-dir OUT [--dtype float32|bfloat16|float16] [--overwrite]
    gptscratch-convert --download 124M|355M|774M|1558M --models-dir DIR [--output-dir OUT]
    gptscratch-convert --book-checkpoint FILE --book-config JSON --tokenizer DIR --output-dir OUT
    gptscratch-convert --from-transformers DIR|NAME --output-dir OUT

Thin: parses the flags and calls the Python API (convert.openai_checkpoint, convert.book_checkpoint,
convert.from_transformers).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from common.commands import ArgumentParser, UsageError, flag_name, run_command
from convert.book_checkpoint import convert_book_checkpoint
from convert.from_transformers import convert_transformers_gpt2
from convert.openai_checkpoint import (
    DOWNLOAD_BASE_URLS,
    MODEL_SIZES,
    convert_openai_checkpoint,
    download_and_convert_openai_checkpoint,
)
from convert.weights import DTYPES, check_shard_size

PROG = "gptscratch-convert"

# The flags each source needs, and those it also accepts; any other flag given with it is an error, not ignored.
_SOURCE_FLAGS = {
    "checkpoint_dir": ({"output_dir"}, set()),
    "download": ({"models_dir"}, {"output_dir", "base_url"}),
    "book_checkpoint": ({"book_config", "tokenizer", "output_dir"}, set()),
    "from_transformers": ({"output_dir"}, set()),
}


def build_parser() -> argparse.ArgumentParser:
    """The flags of `gptscratch-convert`: one source (--checkpoint-dir, --download, --book-checkpoint or
    --from-transformers) and its options; which flags go with which source is checked after parsing
    (`_check_flag_combination`)."""
    parser = ArgumentParser(
        prog=PROG,
        description="Convert OpenAI's GPT-2 TensorFlow checkpoints, the book's model.pth files, or a transformers "
        "GPT-2 into a model directory (safetensors + config + tokenizer) that AutoModelForCausalLM.from_pretrained "
        "loads.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint-dir", type=Path, metavar="DIR", help="a directory holding OpenAI's GPT-2 files")
    source.add_argument(
        "--download",
        choices=MODEL_SIZES,
        metavar="SIZE",
        help=f"download GPT-2 {'|'.join(MODEL_SIZES)} from OpenAI, then convert it",
    )
    source.add_argument(
        "--book-checkpoint", type=Path, metavar="FILE", help="the book's model.pth or model_and_optimizer.pth"
    )
    source.add_argument(
        "--from-transformers",
        metavar="DIR|NAME",
        help="a transformers GPT-2 (GPT2LMHeadModel) directory, or a hub name such as openai-community/gpt2 (read "
        "from the local cache when offline)",
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        metavar="OUT",
        help="the model directory to write (with --download, by default MODELS_DIR/gpt2-SIZE)",
    )
    parser.add_argument(
        "--models-dir", type=Path, metavar="DIR", help="with --download: where the SIZE/ folder of OpenAI's files goes"
    )
    parser.add_argument(
        "--base-url",
        action="append",
        metavar="URL",
        help="with --download: fetch URL/SIZE/FILE instead of from OpenAI and the book's mirror (repeatable)",
    )
    parser.add_argument(
        "--book-config",
        metavar="JSON",
        help="with --book-checkpoint: the book's config dict as a JSON file or object (vocab_size, context_length, "
        "emb_dim, n_heads, n_layers, drop_rate, qkv_bias)",
    )
    parser.add_argument(
        "--tokenizer",
        type=Path,
        metavar="DIR",
        help="with --book-checkpoint: a directory holding encoder.json and vocab.bpe",
    )
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="dtype of the written weights (float32)")
    parser.add_argument(
        "--max-shard-size",
        default="2GB",
        metavar="SIZE",
        help="split the weights into files of at most SIZE, e.g. 500MB (2GB)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    return parser


def _check_flag_combination(args: argparse.Namespace) -> str:
    """The chosen source's name, after checking that its required flags are given and no foreign one is."""
    chosen = next(name for name in _SOURCE_FLAGS if getattr(args, name) is not None)
    required, optional = _SOURCE_FLAGS[chosen]
    for name in sorted(required):
        if getattr(args, name) is None:
            raise UsageError(f"{flag_name(chosen)} needs {flag_name(name)}; see {PROG} --help")
    every_extra = set().union(*(needed | accepted for needed, accepted in _SOURCE_FLAGS.values()))
    for name in sorted(every_extra - required - optional):
        if getattr(args, name) is not None:
            raise UsageError(f"{flag_name(name)} does not go with {flag_name(chosen)}; leave it out")
    return chosen


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of `gptscratch-convert`."""

    def convert() -> None:
        args = build_parser().parse_args(argv)
        source = _check_flag_combination(args)
        check_shard_size(args.max_shard_size)  # a typo is refused before minutes of converting, not after them
        options = dict(dtype=args.dtype, overwrite=args.overwrite, max_shard_size=args.max_shard_size)
        if source == "checkpoint_dir":
            output = convert_openai_checkpoint(args.checkpoint_dir, args.output_dir, **options)
        elif source == "download":
            output = download_and_convert_openai_checkpoint(
                args.download,
                args.models_dir,
                args.output_dir,
                base_urls=args.base_url or DOWNLOAD_BASE_URLS,
                **options,
            )
        elif source == "from_transformers":
            output = convert_transformers_gpt2(args.from_transformers, args.output_dir, **options)
        else:
            output = convert_book_checkpoint(
                args.book_checkpoint, args.book_config, args.tokenizer, args.output_dir, **options
            )
        print(f"wrote model directory {output}")

    run_command(PROG, convert)
