"""The run's model options as a `GPTScratchConfig`: the preset, the shape fields, `config`'s KEY=VALUE settings typed
by the model's own fields, and the training-time dropout; the one place that turns options into a model config."""

from __future__ import annotations

import dataclasses
from typing import Any

from common.errors import InputError, field
from common.model_fields import fits, parse, takes
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
        raise InputError(f"{field('preset')} {options.preset} with {describe_overrides(options)}: {error}") from error


def describe_overrides(options: ModelOptions) -> str:
    """The model settings the options make, named by their fields: `n_layers 4, config n_heads=3`."""
    shape = {name: getattr(options, name) for name in ("n_layers", "n_heads", "emb_dim", "qkv_bias")}
    dropout = {name: getattr(options, name) for name in ("dropout", "attention_dropout")}
    settings = [f"{field(name)} {value}" for name, value in shape.items() if value is not None]
    settings += [f"{field(name)} {value}" for name, value in dropout.items() if value]
    settings += [f"{field('config')} {key}={value}" for key, value in options.config.items()]
    return ", ".join(settings) or "its own settings"


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


def model_field_value(name: str, value: Any) -> Any:
    """`value` for GPTScratchConfig's field `name`, as the field's type: a command-line string is parsed (int, float,
    bool as true/false/1/0, null/None where the field takes None); a Python value is checked. An InputError names
    the field and what it takes."""
    if isinstance(value, str):
        try:
            return parse(name, value)
        except ValueError:
            pass
    elif fits(name, value):
        return value
    default = getattr(GPTScratchConfig(), name)
    example = str(default).lower() if isinstance(default, bool) else default
    raise InputError(f"{field('config')} {name}={value}: {name} takes {takes(name)}, e.g. {name}={example}")
