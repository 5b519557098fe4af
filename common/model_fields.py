"""GPTScratchConfig's fields by their declared types: a value checked against its field's type, or parsed from text
as that type. What `--config KEY=VALUE` (train.model_config) and a model directory's config.json (common.model_dir)
are both held to, so a value of another type is refused by name instead of failing deep inside the model."""

from __future__ import annotations

import math
from typing import Any

from modeling_gptscratch import GPTScratchConfig

_SIMPLE = {"int": int, "float": float, "bool": bool, "str": str, "None": type(None)}
_NAMES = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "str": "text",
    "None": "null",
    "list[int]": "a list of integers",
    "dict[str, str]": "a mapping of names to text",
}
_WORDS = {"true": True, "1": True, "false": False, "0": False, "null": None, "none": None}


def field_kinds(name: str) -> list[str]:
    """The kinds field `name` takes, as its annotation spells them ("int", "list[int]", "None", ...)."""
    # The model file's annotations are strings (`from __future__ import annotations`).
    return [part.strip() for part in GPTScratchConfig.__annotations__[name].split("|")]


def takes(name: str) -> str:
    """What field `name` takes, in words: "an integer or null"."""
    return " or ".join(_NAMES[kind] for kind in field_kinds(name))


def fits(name: str, value: Any) -> bool:
    """Whether `value` is a value of field `name`: a bool only where bool is taken (it is an int too), an int where
    a float is, a number only where it is finite."""
    return any(_fits(kind, value) for kind in field_kinds(name))


def _fits(kind: str, value: Any) -> bool:
    if kind == "list[int]":
        return isinstance(value, list) and all(_fits("int", item) for item in value)
    if kind == "dict[str, str]":
        return isinstance(value, dict) and all(isinstance(item, str) for item in [*value, *value.values()])
    if isinstance(value, bool):
        return kind == "bool"
    if isinstance(value, float) and not math.isfinite(value):
        return False
    return isinstance(value, _SIMPLE[kind]) or (kind == "float" and isinstance(value, int))


def parse(name: str, text: str) -> Any:
    """`text` (a command line's) as a value of field `name`: the first of its simple kinds that reads it (an int,
    a finite float, true/false/1/0, null); ValueError when none does."""
    word = text.strip().lower()
    for kind in field_kinds(name):
        if kind in ("bool", "None"):
            if word in _WORDS and _fits(kind, _WORDS[word]):
                return _WORDS[word]
            continue
        if kind not in _SIMPLE:
            continue
        try:
            value = _SIMPLE[kind](text)
        except ValueError:
            continue
        if _fits(kind, value):
            return value
    raise ValueError(text)
