"""What every export of a model directory does around its format's writer, so that each refuses the same way and
never leaves half a file: the output checked (apart from the model, free or `overwrite`, writable) before anything
loads, the model directory read and the format's refusal applied before its weights load, then the output written
atomically (a directory through a staging sibling, a file through a temporary one, each renamed once complete).

torch and transformers load only once the output and the model directory have passed, so a refused output costs no
seconds.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.errors import InputError, field
from common.files import (
    atomic_directory,
    check_apart,
    check_output_directory,
    check_writable,
    write_atomic,
    writing_output,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from modeling_gptscratch import GPTScratchConfig, GPTScratchForCausalLM

# Writes the export of a model and its tokenizer into a path: a directory that exists, or a file to create.
Writer = Callable[["GPTScratchForCausalLM", "PreTrainedTokenizerBase", Path], None]
# Raises an InputError when the format cannot hold a model of this config; its second argument names the source.
Refusal = Callable[["GPTScratchConfig", str], Any]


def check_output_file(output: str | os.PathLike, overwrite: bool, output_field: str) -> Path:
    """The absolute `output` if a file may be written there (absent, or any file with `overwrite`, in a writable
    location), else an InputError; writes nothing."""
    target = Path(output).absolute()
    if target.is_dir():
        raise InputError(f"{field(output_field)} {output} is a directory; pass the path of the file to write")
    if target.exists() and not overwrite:
        raise InputError(f"output file {target} exists; pass {field('overwrite')} or choose another")
    check_writable(target.parent, "output file's folder", output_field)
    return target


def export_to(
    model_dir: str | os.PathLike,
    output: str | os.PathLike,
    write: Writer,
    *,
    what: str,
    output_field: str,
    to_file: bool = False,
    overwrite: bool = False,
    dtype: str | None = None,
    refuse: Refusal | None = None,
) -> Path:
    """Writes the export of `model_dir` to `output` with `write` and returns the output's path.

    what: how errors name the output ("GGUF file"); output_field: the argument that named it; to_file: the output
    is one file, not a directory; dtype: the torch dtype the weights load in ("float16"; None: as stored); refuse:
    the format's refusal of a model it cannot hold, applied before the weights load.
    """
    from common.model_dir import load_model_weights, read_model_directory, weights_size

    check_apart(output, {"model": [model_dir]}, named=f"{field(output_field)} {output}")
    if to_file:
        target = check_output_file(output, overwrite, output_field)
    else:
        target = check_output_directory(output, overwrite)  # refuse a taken output before loading the model
    config, tokenizer = read_model_directory(model_dir)
    if refuse is not None:
        refuse(config, f"{field('model')} {model_dir}")
    model = load_model_weights(model_dir, config, **({"dtype": dtype} if dtype else {}))
    if not to_file:
        with atomic_directory(target, overwrite=overwrite, what=what, size=weights_size(model)) as staging:
            write(model, tokenizer, staging)
        return target
    with writing_output(target, what, weights_size(model), output_field):
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(target, lambda temporary: write(model, tokenizer, Path(temporary)), suffix=target.suffix)
    return target
