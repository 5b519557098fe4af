"""The one model directory format: what `save_pretrained` writes, written atomically, and loaded with clear errors.

torch and transformers are imported inside the functions that need them, so a command that only checks its inputs
and outputs (`common.files.check_output_directory`, the flags) refuses bad ones before paying the seconds those
imports take.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.errors import InputError, first_line
from common.files import atomic_directory, read_json_object

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

    from modeling_gptscratch import GPTScratchConfig, GPTScratchForCausalLM

# A saved tokenizer always has one of these; without any, AutoTokenizer would fall back to config.json's auto_map
# and ask on stdin whether to run the directory's code.
_TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "encoder.json")

# A base model has no chat format of its own, so a chat reads as the plain text of its messages, one "Role: content"
# paragraph each, and the model continues after "Assistant:". Content given as parts (OpenAI's [{"type": "text",
# ...}]) contributes its text parts.
PLAIN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] | capitalize }}:"
    "{% if message['content'] is string %} {{ message['content'] }}"
    "{% else %}{% for part in message['content'] if part['type'] == 'text' %} {{ part['text'] }}{% endfor %}"
    "{% endif %}{{ '\\n\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


def with_chat_template(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """`tokenizer` itself when it has a chat template, else a copy of it with `PLAIN_CHAT_TEMPLATE`: what every
    model directory the package writes saves, so a chat request to a server of it gets a completion. The caller's
    tokenizer is left as it was."""
    if tokenizer.chat_template is not None:
        return tokenizer
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.chat_template = PLAIN_CHAT_TEMPLATE
    return tokenizer


def save_model_directory(
    model: GPTScratchForCausalLM,
    tokenizer: PreTrainedTokenizerBase | None,
    target: str | os.PathLike,
    overwrite: bool = False,
    max_shard_size: str | int = "2GB",
) -> Path:
    """Writes a complete model directory atomically: config.json (with auto_map), model.safetensors (sharded past
    `max_shard_size`), generation_config.json, modeling_gptscratch.py and, if given, the tokenizer files (with a chat
    template: the tokenizer's own, else `PLAIN_CHAT_TEMPLATE`)."""
    with atomic_directory(target, overwrite=overwrite, what="model directory", size=weights_size(model)) as staging:
        model.save_pretrained(staging, max_shard_size=max_shard_size)
        if tokenizer is not None:
            with_chat_template(tokenizer).save_pretrained(staging)
    return Path(target)


def weights_size(model: torch.nn.Module) -> int:
    """Bytes of the model's parameters and buffers, each storage counted once (a tied head is the embedding): about
    what its safetensors file takes."""
    storages = {}
    for tensor in [*model.parameters(), *model.buffers()]:
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
    return sum(storages.values())


def inference_device() -> torch.device:
    """Where the commands, and the Python functions they call, run a model they load: the GPU when CUDA is
    available, else the CPU. One rule, so a command and its Python equivalent sample the same text for a seed."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def read_model_directory(directory: str | os.PathLike) -> tuple[GPTScratchConfig, PreTrainedTokenizerBase]:
    """The config and tokenizer of a gptscratch model directory (trained or converted), without its weights.

    An InputError names the problem for anything else: a missing directory, a missing or damaged config.json, a
    directory of another model type, no tokenizer. Commands check their input against the config and tokenizer
    before `load_model_weights`, so a refusal comes at once instead of after the weights load.
    """
    from common.model_fields import fits, takes
    from modeling_gptscratch import GPTScratchConfig

    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"model directory {directory} does not exist; pass a directory written by gptscratch")
    fix = "pass a model directory written by gptscratch (save or convert the model again if it is damaged)"
    values = read_json_object(directory / "config.json", "model config", fix)
    model_type = values.get("model_type")
    if model_type != GPTScratchConfig.model_type:
        raise InputError(
            f"{directory} holds a {model_type!r} model, not a gptscratch one; pass a directory written by gptscratch"
        )
    for name, value in values.items():
        if name in GPTScratchConfig.__annotations__ and not fits(name, value):
            raise InputError(
                f"model config {directory / 'config.json'} is invalid ({name} is {json.dumps(value)}; it takes "
                f"{takes(name)}); {fix}"
            )
    try:
        config = GPTScratchConfig.from_dict(values)
    except (ValueError, TypeError) as error:
        raise InputError(f"model config {directory / 'config.json'} is invalid ({first_line(error)}); {fix}") from None
    if not any((directory / name).is_file() for name in _TOKENIZER_FILES):
        raise InputError(
            f"{directory} holds no tokenizer (none of {', '.join(_TOKENIZER_FILES)}); save the model's tokenizer "
            "beside it with tokenizer.save_pretrained"
        )
    tokenizer = load_tokenizer_or_refuse(
        directory,
        f"{directory} holds no loadable tokenizer",
        "save the model's tokenizer beside it with tokenizer.save_pretrained",
    )
    return config, tokenizer


def load_tokenizer_or_refuse(
    source: str | os.PathLike, failure: str, fix: str, error_class: type[InputError] = InputError
) -> PreTrainedTokenizerBase:
    """`load_tokenizer(source)`, or `error_class("FAILURE (first line of the reason); FIX")` when it fails."""
    from common.tokenizer import load_tokenizer

    try:
        return load_tokenizer(source)
    except Exception as error:
        # A damaged file fails wherever its readers first trip: a ValueError (not JSON, not UTF-8), a KeyError (a
        # tokenizer.json without 'added_tokens'), a TypeError (a field of another type), or the Rust tokenizer's bare
        # Exception ("missing field `unk_token`"). Whichever it is, the files cannot make a tokenizer.
        reason = first_line(error) if not isinstance(error, KeyError) else f"no {error}"
        raise error_class(f"{failure} ({reason}); {fix}") from None


def load_model_weights(
    directory: str | os.PathLike,
    config: GPTScratchConfig,
    device: str | torch.device | None = None,
    **from_pretrained_kwargs: Any,
) -> GPTScratchForCausalLM:
    """The model of a directory that `read_model_directory` accepted (which gave `config`), on `device` (by
    default where from_pretrained puts it, the CPU). Missing or damaged weights, or weights whose tensors are not
    the ones config.json describes, are an InputError; so is a damaged generation_config.json, which from_pretrained
    reads too (a TypeError or KeyError for a file of another shape)."""
    from safetensors import SafetensorError

    from modeling_gptscratch import GPTScratchForCausalLM

    fix = "the weights are missing or damaged (or generation_config.json is), save or convert the model again"
    try:
        check_weights_match_config(Path(directory), config)
        model = GPTScratchForCausalLM.from_pretrained(directory, config=config, **from_pretrained_kwargs)
    except (OSError, ValueError, TypeError, KeyError, SafetensorError) as error:
        raise InputError(f"cannot load the model in {directory} ({first_line(error)}); {fix}") from error
    return model if device is None else model.to(device)


def check_weights_match_config(directory: Path, config: GPTScratchConfig) -> None:
    """An InputError naming the weights file and the first tensor that config.json does not describe: one of another
    shape, one it calls for that is missing, one it has no place for. Reads only the files' headers.

    from_pretrained would refuse a shape in a long report, and fill a missing tensor with random values in silence.
    """
    import torch
    from safetensors import safe_open

    from modeling_gptscratch import GPTScratchForCausalLM

    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json_object(index, "weights index", "save or convert the model again").get("weight_map", {})
        files = sorted({directory / name for name in weight_map.values()})
    else:
        files = [directory / "model.safetensors"]
    if not all(path.is_file() for path in files):
        return  # from_pretrained names the missing file
    shapes = {}
    for path in files:
        with safe_open(path, "pt") as weights:
            shapes.update({name: (tuple(weights.get_slice(name).get_shape()), path) for name in weights.keys()})
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        expected = GPTScratchForCausalLM(config)
    # Tensors tied together (the head and the token embedding) are one tensor, stored under either name.
    saved = expected.state_dict()
    tied: dict[int, tuple[tuple[int, ...], list[str]]] = {}
    for name, tensor in [
        *expected.named_parameters(remove_duplicate=False),
        *expected.named_buffers(remove_duplicate=False),
    ]:
        if name in saved:
            tied.setdefault(id(tensor), (tuple(tensor.shape), []))[1].append(name)
    sizes = (
        f"vocab_size {config.vocab_size}, context_length {config.context_length}, emb_dim {config.emb_dim}, "
        f"n_layers {config.n_layers}, tie_word_embeddings {str(config.tie_word_embeddings).lower()}"
    )
    mismatch = f"does not match {directory / 'config.json'} ({sizes})"
    fix = "save or convert the model again, or put back the config.json that came with these weights"
    for want, names in tied.values():
        stored = [name for name in names if name in shapes]
        if not stored:
            raise InputError(f"{files[0]} {mismatch}: it has no tensor {names[0]}; {fix}")
        for name in stored:
            shape, path = shapes[name]
            if shape != want:
                raise InputError(
                    f"{path} {mismatch}: {name} is {_shape(shape)} there, the config makes it {_shape(want)}; {fix}"
                )
    extra = sorted(set(shapes) - set(saved))
    if extra:
        raise InputError(f"{shapes[extra[0]][1]} {mismatch}: the config has no place for its tensor {extra[0]}; {fix}")


def _shape(shape: tuple[int, ...]) -> str:
    return " x ".join(map(str, shape)) or "a scalar"


def load_model_directory(
    directory: str | os.PathLike, device: str | torch.device | None = None, **from_pretrained_kwargs: Any
) -> tuple[GPTScratchForCausalLM, PreTrainedTokenizerBase]:
    """Loads a model directory (trained or converted) and its tokenizer, with a clear error for anything else:
    `read_model_directory` (the cheap checks and the tokenizer), then `load_model_weights`."""
    config, tokenizer = read_model_directory(directory)
    return load_model_weights(directory, config, device, **from_pretrained_kwargs), tokenizer
