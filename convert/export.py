"""`gptscratch-export` (also `python -m convert.export`): a model directory out to the programs that run models.

    gptscratch-export --model DIR --format gpt2 --output DIR [--dtype f32|f16|bf16]         transformers, no remote code
    gptscratch-export --model DIR --format gguf --output FILE [--dtype f32|f16|bf16|q8_0]   llama.cpp
    gptscratch-export --model DIR --format onnx --output DIR [--dtype f32|f16]              ONNX Runtime, KV cache
    (each with [--overwrite])

Thin over `export_model`, which checks the output and the model before any weights load, refuses a model the
format cannot hold (GPT-2's formats tie the output head to the token embedding), and writes the output atomically.
The formats' writers: convert.gpt2_export, convert.gguf_export, convert.onnx_export; `write_export` writes any of them
into a directory (what `gptscratch-push --format` publishes).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from common.commands import ArgumentParser, run_command
from common.errors import InputError, field
from common.files import format_size
from convert.exporting import export_to

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from modeling_gptscratch import GPTScratchConfig, GPTScratchForCausalLM

PROG = "gptscratch-export"
# Each format and the dtypes it is written in, its default first (gpt2 keeps the stored dtype unless told).
DTYPES = {"gpt2": ("f32", "f16", "bf16"), "gguf": ("f32", "f16", "bf16", "q8_0"), "onnx": ("f32", "f16")}
FORMATS = tuple(DTYPES)
# What the output is, as messages name it.
OUTPUTS = {"gpt2": "GPT-2 directory", "gguf": "GGUF file", "onnx": "ONNX directory"}
GGUF_FILE = "model.gguf"  # the GGUF file's name inside a directory (a pushed repository)
_TORCH_DTYPES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}


def check_export(format: str, dtype: str | None) -> str | None:
    """The dtype an export in `format` is written in (`dtype`, or the format's default: f32, and for gpt2 None, the
    stored one); an InputError for an unknown format or a dtype the format lacks."""
    if format not in DTYPES:
        raise InputError(f"{field('format')} {format!r} is unknown; choose one of: {', '.join(FORMATS)}")
    if dtype is None:
        return None if format == "gpt2" else DTYPES[format][0]
    if dtype not in DTYPES[format]:
        raise InputError(
            f"{field('dtype')} {dtype}: the {format} format is written in {', '.join(DTYPES[format])}; pass one of them"
        )
    return dtype


def write_export(
    format: str,
    model: GPTScratchForCausalLM,
    tokenizer: PreTrainedTokenizerBase,
    path: str | os.PathLike,
    dtype: str | None = None,
    name: str = "gptscratch",
) -> None:
    """Writes the `format` export of `model` (already in `dtype`; GGUF converts it itself) to `path`: for gpt2 the
    GPT-2 directory and for onnx model.onnx with generation_config.json and the tokenizer, into the existing
    directory `path`; for gguf the file `path` (the model named `name` inside). Not atomic: the callers
    write into a staging folder or a temporary file."""
    if format == "gpt2":
        from convert.gpt2_export import write_gpt2_directory

        write_gpt2_directory(model, tokenizer, path)
    elif format == "gguf":
        from convert.gguf_export import write_gguf

        write_gguf(model, tokenizer, path, dtype or DTYPES["gguf"][0], name)
    else:
        from convert.onnx_export import write_onnx_directory

        write_onnx_directory(model, tokenizer, path)


def weights_dtype(format: str, dtype: str | None) -> str | None:
    """The torch dtype, by name, the weights load in for an export in `format` written in `dtype` (as
    `check_export` gives it): float32 for GGUF, which converts them itself; for the others `dtype`'s, written as
    loaded (None: as stored)."""
    return "float32" if format == "gguf" else _TORCH_DTYPES.get(dtype or "")


def refuse_untied_head(config: GPTScratchConfig, source: str) -> None:
    """GPT-2's refusal of a model whose output head is not the token embedding (convert.gpt2_export.gpt2_config),
    which gpt2 and gguf (GPT-2's architecture) share."""
    from convert.gpt2_export import gpt2_config

    gpt2_config(config, source)


def export_model(
    model_dir: str | os.PathLike,
    format: str,
    output: str | os.PathLike,
    dtype: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Writes the `format` export of `model_dir` to `output` atomically and returns its path: a directory for gpt2
    and onnx, one file for gguf. dtype: see `DTYPES` (default f32; gpt2: as stored).

    Bad input raises InputError before anything is written: an unknown format or a dtype it lacks, an output that
    is, holds or lies inside the model directory, one that exists without `overwrite`, a model directory that
    cannot be read, a model with an untied head for gpt2 and gguf (GPT-2's architecture ties it).
    """
    dtype = check_export(format, dtype)
    name = Path(model_dir).absolute().name
    return export_to(
        model_dir,
        output,
        lambda model, tokenizer, path: write_export(format, model, tokenizer, path, dtype, name),
        what=OUTPUTS[format],
        output_field="output",
        to_file=format == "gguf",
        overwrite=overwrite,
        dtype=weights_dtype(format, dtype),
        refuse=refuse_untied_head if format in ("gpt2", "gguf") else None,
    )


def output_size(path: Path) -> int:
    """Bytes of a file, or of every file under a directory."""
    files = [path] if path.is_file() else [file for file in path.rglob("*") if file.is_file()]
    return sum(file.stat().st_size for file in files)


def build_parser() -> argparse.ArgumentParser:
    """The flags of `gptscratch-export`."""
    parser = ArgumentParser(
        prog=PROG,
        description="Export a gptscratch model directory for transformers (plain GPT-2), llama.cpp (GGUF) or "
        "ONNX Runtime (ONNX with a KV cache).",
    )
    parser.add_argument("--model", required=True, help="gptscratch model directory (trained or converted)")
    parser.add_argument("--format", required=True, choices=FORMATS, help="gpt2, gguf or onnx")
    parser.add_argument("--output", required=True, help="where to write: a directory (gpt2, onnx) or a file (gguf)")
    parser.add_argument(
        "--dtype",
        default=None,
        help="weights' type: gpt2 f32|f16|bf16 (default: as stored); gguf f32|f16|bf16|q8_0 and onnx f32|f16 "
        "(default f32)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    return parser


def _main(argv: Sequence[str] | None) -> None:
    args = build_parser().parse_args(argv)
    check_export(args.format, args.dtype)  # before torch loads
    output = export_model(args.model, args.format, args.output, args.dtype, args.overwrite)
    print(f"wrote {OUTPUTS[args.format]} {output} ({format_size(output_size(output))})")


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of `gptscratch-export` (also `python -m convert.export`); `argv` defaults to the command line."""
    run_command(PROG, lambda: _main(argv))


if __name__ == "__main__":
    main()
