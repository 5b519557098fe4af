"""A model to start from, wherever it is kept: what `gptscratch-train --init-from SOURCE` reads.

SOURCE is a gptscratch model directory (a run's output, a converted or pushed model), a transformers GPT-2
(`GPT2LMHeadModel`) directory or hub name, or a directory of OpenAI's TensorFlow checkpoint files. Each comes back
as a GPTScratch model and its tokenizer, through the reader its converter uses; anything else, a model the package
cannot map, a tokenizer larger than the weights' vocabulary, or weights that do not fit their config, is one
InputError naming the source.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from common.errors import InputError, field
from common.files import read_json_object

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from modeling_gptscratch import GPTScratchForCausalLM

GPTSCRATCH, GPT2, OPENAI = "gptscratch model directory", "transformers GPT-2", "OpenAI GPT-2 checkpoint"


@dataclass
class ModelSource:
    """A model read from SOURCE: the model (fp32, eval mode), its tokenizer, and which kind of source it was."""

    name: str
    kind: str
    model: GPTScratchForCausalLM
    tokenizer: PreTrainedTokenizerBase


def source_kind(source: str | os.PathLike, named: str) -> str:
    """Which kind of model `source` holds, from its files (nothing is loaded): OpenAI's checkpoint index, else
    config.json's model type; a hub name is a transformers GPT-2. `import_gpt2` refuses the other model types and
    paths that name nothing."""
    from convert.openai_checkpoint import INDEX_FILE
    from modeling_gptscratch import GPTScratchConfig

    directory = Path(source)
    if not directory.is_dir():
        return GPT2
    if (directory / INDEX_FILE).is_file():
        return OPENAI
    if not (directory / "config.json").is_file():
        raise InputError(
            f"{named} is not a model directory (it has neither config.json nor OpenAI's {INDEX_FILE}); pass a "
            "gptscratch or GPT-2 model directory, OpenAI's checkpoint directory, or a hub name"
        )
    values = read_json_object(directory / "config.json", f"{named}: model config", "pass a model directory")
    return GPTSCRATCH if values.get("model_type") == GPTScratchConfig.model_type else GPT2


def read_model_source(source: str | os.PathLike, option: str = "init_from") -> ModelSource:
    """The model and tokenizer `source` holds (see the module's docstring), named in errors by the field `option`.

    The tokenizer must not have more tokens than the model has embedding rows: the highest IDs would have none.
    """
    from common.model_dir import load_model_directory
    from convert.from_transformers import import_gpt2
    from convert.openai_checkpoint import load_openai_checkpoint

    named = f"{field(option)} {source}"
    kind = source_kind(source, named)
    try:
        if kind == GPTSCRATCH:
            model, tokenizer = load_model_directory(source)
        elif kind == OPENAI:
            model, tokenizer = load_openai_checkpoint(source)
    except InputError as error:
        raise InputError(f"{named}: {error}") from None
    if kind == GPT2:
        model, tokenizer = import_gpt2(source, named=named)
    vocab_size = model.config.vocab_size
    if len(tokenizer) > vocab_size:
        raise InputError(
            f"{named}: its tokenizer has {len(tokenizer)} tokens but the model's embedding has {vocab_size} rows; "
            "save the tokenizer the model was trained with beside it"
        )
    return ModelSource(str(source), kind, model.float().eval(), tokenizer)
