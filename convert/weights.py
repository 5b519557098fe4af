"""What the two converters share: checks of the output options (dtype, shard size), shape checks against a config,
the tokenizer, and the model built from converted tensors without initialising random weights first and saved.

torch and transformers are imported inside the functions that use them, never at the top: the converters check
paths, files and shapes first, so bad input is reported in a fraction of a second instead of after the ~5 s those
imports take.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from common.compat import parse_size
from common.errors import InputError, field
from common.model_dir import load_tokenizer_or_refuse, save_model_directory

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

    from modeling_gptscratch import GPTScratchConfig, GPTScratchForCausalLM

DTYPES = ("float32", "bfloat16", "float16")


def check_dtype(dtype: str) -> str:
    """`dtype` if it names a supported output dtype, else an InputError."""
    if dtype not in DTYPES:
        raise InputError(f"dtype {dtype!r} is not supported; pass {field('dtype')} with one of {', '.join(DTYPES)}")
    return dtype


def check_shard_size(size: str | int) -> str | int:
    """`size` if `save_pretrained(max_shard_size=size)` can shard by it, else an InputError.

    A positive number of bytes, or a string such as "500MB" or "2GB" (units KB, MB, GB, TB), read by the parser
    save_pretrained itself uses, so what passes here also passes there: a typo is refused before the conversion
    instead of crashing after it.
    """
    try:
        size_bytes = size if isinstance(size, int) and not isinstance(size, bool) else parse_size(str(size))
    except (ValueError, OverflowError):
        size_bytes = 0
    if size_bytes <= 0:
        raise InputError(f"{field('max_shard_size')} {size!r} is not a size; pass e.g. 500MB or 2GB")
    return size


def check_shapes(
    found: Mapping[str, Sequence[int]], expected: Mapping[str, Sequence[int]], source: str, described_by: str, fix: str
) -> None:
    """Compares a checkpoint's tensor shapes with those its config implies; any difference is an InputError.

    The message names the first missing, unexpected or mis-shaped tensor with both shapes, then how many other
    problems there are, then `fix`. `source` names the checkpoint and `described_by` the config, as the user knows them.
    """
    problems = []
    for name, shape in expected.items():
        if name not in found:
            problems.append(f"{source} lacks {name} (shape {list(shape)}), which {described_by} implies")
        elif list(found[name]) != list(shape):
            problems.append(
                f"{name} has shape {list(found[name])} in {source} but {described_by} implies {list(shape)}"
            )
    problems += [
        f"{source} holds {name} (shape {list(shape)}), which {described_by} does not describe"
        for name, shape in found.items()
        if name not in expected
    ]
    if problems:
        more = f" (and {len(problems) - 1} more mismatches)" if len(problems) > 1 else ""
        raise InputError(f"{problems[0]}{more}; {fix}")


def load_checkpoint_tokenizer(
    directory: str | os.PathLike, vocab_size: int, context_length: int
) -> PreTrainedTokenizerBase:
    """GPT-2's tokenizer from `directory` (OpenAI's encoder.json + vocab.bpe, or a saved tokenizer), its
    `model_max_length` set to the model's `context_length`, as in the hub's gpt2 tokenizer (so truncation and the
    too-long warning work).

    A tokenizer with more tokens than the model's `vocab_size` embedding rows is an InputError: its highest IDs
    would index past the embedding.
    """
    tokenizer = load_tokenizer_or_refuse(
        directory, f"cannot read a tokenizer from {directory}", "it needs OpenAI's encoder.json and vocab.bpe"
    )
    if len(tokenizer) > vocab_size:
        raise InputError(
            f"the tokenizer in {directory} has {len(tokenizer)} tokens but the model's embedding has {vocab_size} "
            "rows; pass the tokenizer the model was trained with"
        )
    tokenizer.model_max_length = context_length
    return tokenizer


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype for a name in DTYPES."""
    import torch

    return getattr(torch, check_dtype(name))


def assemble_model(config: GPTScratchConfig, tensors: Iterable[tuple[str, torch.Tensor]]) -> GPTScratchForCausalLM:
    """A GPTScratchForCausalLM in eval mode whose parameters are exactly `tensors`, given as (parameter name, tensor).

    The model is built on the meta device, so no random weights are allocated, and each tensor becomes its
    parameter without a copy: peak memory is the model's size plus the tensor being converted. `tensors` is
    consumed under a progress bar (a lazy iterator reads the checkpoint one tensor at a time). When
    `config.tie_word_embeddings`, `out_head.weight` is left out of `tensors` and tied to `model.tok_emb.weight`.
    The names and shapes must already have been checked (`check_shapes`); a mismatch here is a converter bug.
    """
    import torch

    from modeling_gptscratch import GPTScratchForCausalLM

    with torch.device("meta"):
        model = GPTScratchForCausalLM(config)
    tied = {"out_head.weight"} if config.tie_word_embeddings else set()
    total = len(model.state_dict()) - len(tied)
    state_dict = dict(tqdm(tensors, total=total, desc="converting", unit="tensor"))
    loaded = model.load_state_dict(state_dict, strict=False, assign=True)
    if set(loaded.missing_keys) != tied or loaded.unexpected_keys:
        raise RuntimeError(
            f"converter bug: missing {sorted(set(loaded.missing_keys) - tied)}, unexpected {loaded.unexpected_keys}"
        )
    model.tie_weights()
    return model.eval()


def converted_model(
    config: Mapping[str, Any], tensors: Iterable[tuple[str, torch.Tensor]], tokenizer_dir: str | os.PathLike
) -> tuple[GPTScratchForCausalLM, PreTrainedTokenizerBase]:
    """What every converter makes: the tokenizer from `tokenizer_dir` (`load_checkpoint_tokenizer`), and the model
    assembled from `tensors` (`assemble_model`) with a GPTScratchConfig of `config` (GPTScratchConfig's keyword
    arguments) whose text starts and ends at the tokenizer's end-of-text token."""
    from modeling_gptscratch import GPTScratchConfig

    tokenizer = load_checkpoint_tokenizer(tokenizer_dir, config["vocab_size"], config["context_length"])
    model_config = GPTScratchConfig(**config, bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    return assemble_model(model_config, tensors), tokenizer


def save_converted_model(
    config: Mapping[str, Any],
    tensors: Iterable[tuple[str, torch.Tensor]],
    tokenizer_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    overwrite: bool = False,
    max_shard_size: str | int = "2GB",
) -> Path:
    """`converted_model`, written atomically as a model directory to `output_dir`; returns its path. The caller has
    checked the output directory already."""
    model, tokenizer = converted_model(config, tensors, tokenizer_dir)
    return save_model_directory(model, tokenizer, output_dir, overwrite=overwrite, max_shard_size=max_shard_size)
