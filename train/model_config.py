"""The run's model options as a `GPTScratchConfig`: the preset, the shape fields, `config`'s KEY=VALUE settings typed
by the model's own fields, and the training-time dropout; or, with `init_from`, the source model's config with the
run's dropout, after the options that would contradict it are refused. The one place that turns options into a model
config."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from transformers import PreTrainedTokenizerBase

from common.errors import InputError, field
from common.model_dir import load_tokenizer_or_refuse
from common.model_fields import fits, parse, takes
from modeling_gptscratch import PRESETS, GPTScratchConfig
from train.options import FIELDS, ModelOptions, TrainOptions

# The model fields a run sets over the model it starts from (`init_from`): the training-time ones.
TRAINING_TIME_FIELDS = ("drop_rate", "attention_dropout")
SHAPE_FIELDS = ("n_layers", "n_heads", "emb_dim", "context_length")

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


def source_config(
    options: TrainOptions, config: GPTScratchConfig, tokenizer: PreTrainedTokenizerBase
) -> GPTScratchConfig:
    """The config of a run that starts from `init_from`'s model (of `config` and `tokenizer`): the model's own, with
    the run's dropout. An option that contradicts the model (another shape, tokenizer or vocabulary, a window
    longer than its context) is an InputError naming both; options that only repeat it pass."""
    model, data = options.model, options.data
    source = f"{field('init_from')} {model.init_from}"
    shape = ", ".join(f"{name} {getattr(config, name)}" for name in SHAPE_FIELDS)

    def refuse(setting: str, fix: str) -> None:
        raise InputError(f"{setting} contradicts {source} ({shape}); {fix}")

    if model.preset != FIELDS["preset"].default:
        preset = PRESETS[model.preset]
        if any(preset[name] != getattr(config, name) for name in SHAPE_FIELDS):
            refuse(f"{field('preset')} {model.preset}", f"drop {field('preset')}: the model's shape comes from it")
    for name, value in model.overrides().items():
        if name not in TRAINING_TIME_FIELDS and value != getattr(config, name):
            setting = f"{field(name)} {value}" if name in FIELDS else f"{field('config')} {name}={value}"
            refuse(setting, f"drop it: the model's {name} comes from {field('init_from')}")
    if data.context_length and data.context_length > config.context_length:
        refuse(
            f"{field('context_length')} {data.context_length}",
            f"lower it to at most the model's context_length {config.context_length}",
        )
    vocabulary = f"the model's tokenizer ({len(tokenizer)} tokens)"
    if data.tokenizer != FIELDS["tokenizer"].default:
        given = load_tokenizer_or_refuse(
            data.tokenizer, f"{field('tokenizer')} {data.tokenizer} could not be loaded", f"drop {field('tokenizer')}"
        )
        if given.get_vocab() != tokenizer.get_vocab():
            refuse(f"{field('tokenizer')} {data.tokenizer}", f"drop it: the run tokenises with {vocabulary}")
    if data.vocab_size != FIELDS["vocab_size"].default and data.vocab_size not in (len(tokenizer), config.vocab_size):
        refuse(f"{field('vocab_size')} {data.vocab_size}", f"drop it: the run tokenises with {vocabulary}")
    if data.min_frequency != FIELDS["min_frequency"].default:
        refuse(
            f"{field('min_frequency')} {data.min_frequency}",
            f"drop it: it fits a tokenizer, and the run tokenises with {vocabulary}",
        )
    dropout = {"drop_rate": model.dropout, "attention_dropout": model.attention_dropout, **model.config}
    run_config = copy.deepcopy(config)
    for name in TRAINING_TIME_FIELDS:
        setattr(run_config, name, dropout[name])
    return run_config


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
