"""The run's model options as a `GPTScratchConfig`: the preset, the shape fields, `config`'s KEY=VALUE settings typed
by the model's own fields, and the training-time dropout; the one place that turns options into a model config."""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any

from common.errors import InputError, field
from modeling_gptscratch import PRESETS, GPTScratchConfig
from train.options import ModelOptions

# GPTScratchConfig's own fields that `config` may set; the vocabulary and special tokens follow the tokenizer.
MODEL_FIELDS = tuple(
    name
    for name in GPTScratchConfig.__annotations__
    if name not in {"vocab_size", "bos_token_id", "eos_token_id", "pad_token_id", "auto_map"}
)


def build_config(options: ModelOptions, vocab_size: int, eos_token_id: int) -> GPTScratchConfig:
    """The preset with the overrides, sized to the tokenizer, with the options' dropout unless `config` sets
    drop_rate or attention_dropout itself; bad values are InputErrors naming the fields."""
    overrides = {"drop_rate": options.dropout, "attention_dropout": options.attention_dropout, **options.overrides()}
    try:
        return GPTScratchConfig.from_preset(
            options.preset, **overrides, vocab_size=vocab_size, bos_token_id=eos_token_id, eos_token_id=eos_token_id
        )
    except (ValueError, TypeError) as error:
        raise InputError(f"{field('preset')} {options.preset} with overrides {overrides}: {error}") from error


def typed_model_options(options: ModelOptions) -> ModelOptions:
    """The model options with `config`'s values typed by their model fields (`512` an int, `false` a bool); an
    InputError for a key that is no model field one can set, or a value of another type."""
    config = {}
    for key, value in options.config.items():
        if key not in MODEL_FIELDS:
            raise InputError(
                f"{field('config')} {key}: not a model field one can set; choose among {', '.join(MODEL_FIELDS)}"
            )
        config[key] = model_field_value(key, value)
    return dataclasses.replace(options, config=config)


def check_context_length(options: ModelOptions, context_length: int | None) -> None:
    """Refuses windows longer than the model's context."""
    model_context = model_context_length(options)
    if context_length and context_length > model_context:
        raise InputError(
            f"{field('context_length')} {context_length} is longer than the model's context_length {model_context} "
            f"({field('preset')} {options.preset}); lower it, or raise the model's with {field('config')} "
            f"context_length={context_length}"
        )


def model_context_length(options: ModelOptions) -> int:
    """The model's context_length: `config`'s, else the preset's."""
    return int(options.config.get("context_length", PRESETS[options.preset]["context_length"]))


_TYPES = {"int": int, "float": float, "bool": bool, "str": str, "None": type(None)}
_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false (1 or 0)", str: "text", type(None): "null"}
_WORDS = {"true": True, "1": True, "false": False, "0": False, "null": None, "none": None}


def model_field_value(name: str, value: Any) -> Any:
    """`value` for GPTScratchConfig's field `name`, as the field's type: a command-line string is parsed (int, float,
    bool as true/false/1/0, null/None where the field takes None); a Python value is checked. An InputError names
    the field and what it takes."""
    annotation = GPTScratchConfig.__annotations__[name]
    if isinstance(annotation, str):  # the model file's annotations are strings (`from __future__ import annotations`)
        types = [_TYPES[part.strip()] for part in annotation.split("|")]
    else:
        types = list(typing.get_args(annotation)) or [annotation]
    if isinstance(value, str):
        for kind in types:
            try:
                return _parse_as(kind, value)
            except ValueError:
                continue
    elif _has_type(value, types):
        return value
    default = getattr(GPTScratchConfig(), name)
    example = str(default).lower() if isinstance(default, bool) else default
    takes = " or ".join(_TYPE_NAMES[kind] for kind in types)
    raise InputError(f"{field('config')} {name}={value}: {name} takes {takes}, e.g. {name}={example}")


def _has_type(value: Any, types: list[type]) -> bool:
    """Whether a Python value fits: bool only where bool is taken (it is an int too), an int where a float is; a
    number only where it is finite."""
    if isinstance(value, float) and not math.isfinite(value):
        return False
    if isinstance(value, bool):
        return bool in types
    return any(isinstance(value, kind) for kind in types) or (isinstance(value, int) and float in types)


def _parse_as(kind: type, text: str) -> Any:
    """`text` as a value of `kind`; ValueError when it is not one."""
    word = text.strip().lower()
    if kind is bool or kind is type(None):
        if word in _WORDS and isinstance(_WORDS[word], kind):
            return _WORDS[word]
        raise ValueError(text)
    if kind is float:
        number = float(text)
        if not math.isfinite(number):
            raise ValueError(text)
        return number
    return kind(text)
