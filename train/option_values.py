"""Option values from text (a flag's) or from a configuration file, typed by their field's kind (`train.options`).

A configuration file's values are typed as strictly as flags type theirs (`coerce`): a number field takes a number,
or text that reads as one, never a list or a boolean; a switch takes true or false only. Standard library only (and
PyYAML, once a YAML file is read).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common.errors import InputError, field, spelling
from common.files import read_utf8_file
from train.options import (
    DURATION,
    FIELDS,
    INTEGER,
    NUMBER,
    PAIRS,
    SWITCH,
    TEXT,
    TEXTS,
    TOGGLE,
    check_fields,
    not_an_option,
)


def parse_text(name: str, text: str) -> Any:
    """A flag's text as field `name`'s value (a switch's or a toggle's value is the flag itself)."""
    kind = FIELDS[name].metadata["kind"]
    try:
        if kind == INTEGER:
            return int(text)
        if kind == NUMBER:
            return float(text)
    except ValueError:
        what = "an integer" if kind == INTEGER else "a number"
        raise InputError(f"{field(name)} {text}: expected {what}") from None
    return text


def parse_pairs(name: str, pairs: Sequence[str]) -> dict[str, str]:
    """`KEY=VALUE` strings -> dict of strings; each value is typed by its model field once the model's fields are at
    hand (`train.model_config.check_model_options`: this module imports no torch)."""
    values = {}
    for pair in pairs:
        key, separator, value = pair.partition("=")
        if not separator or not key:
            raise InputError(f"{field(name)} {pair}: expected KEY=VALUE, e.g. context_length=512")
        values[key] = value
    return values


_KIND_NAMES = {
    SWITCH: "true or false",
    TOGGLE: "true, false or null",
    INTEGER: "an integer",
    NUMBER: "a number",
    TEXT: "text",
    TEXTS: "text or a list of texts",
    DURATION: "seconds or a duration such as 10m",
    PAIRS: "a mapping of model fields, e.g. {n_layers: 4}",
}


def coerce(name: str, value: Any) -> Any:
    """A configuration file's value as field `name`'s, typed as strictly as its flag types it: a number field
    takes a number or text that reads as one (YAML reads 1e-3 as text), never a list or a boolean; a switch takes
    true or false only ("yes", "false" as text are refused); text fields take text; list fields a list of texts or
    one text. An InputError names the field and what it takes."""
    kind = FIELDS[name].metadata["kind"]
    if value is None and FIELDS[name].default is None:
        return None
    ok = {
        SWITCH: isinstance(value, bool),
        TOGGLE: isinstance(value, bool),
        INTEGER: (isinstance(value, int) and not isinstance(value, bool)) or isinstance(value, str),
        NUMBER: (isinstance(value, (int, float)) and not isinstance(value, bool)) or isinstance(value, str),
        TEXT: isinstance(value, str),
        TEXTS: isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value)),
        DURATION: isinstance(value, str) or (isinstance(value, (int, float)) and not isinstance(value, bool)),
        PAIRS: isinstance(value, dict),
    }[kind]
    if not ok:
        raise InputError(f"{field(name)} {json.dumps(value)}: takes {_KIND_NAMES[kind]}")
    if kind in (INTEGER, NUMBER) and isinstance(value, str):
        return parse_text(name, value)
    if kind == NUMBER:
        return float(value)
    if kind == TEXTS and isinstance(value, str):
        return [value]
    if kind == DURATION:
        return str(value)
    return value


def fields_from_file(config_file: str | Path) -> dict[str, Any]:
    """The field values in a YAML (or, by its .json suffix, JSON) file: a mapping of field names (dashes or
    underscores) to values, each typed by `coerce` and checked by its field's own check. Errors name the file, and
    the fields as its keys spell them."""
    path = Path(config_file)
    source = f"{field('config_file')} {path}"
    fix = "write a mapping of option names to values, e.g. batch_size: 8"
    text = read_utf8_file(path, field("config_file"), fix)
    if path.suffix.lower() == ".json":
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise InputError(f"{source} is not valid JSON ({error}); {fix}") from None
    else:
        import yaml  # PyYAML comes with datasets

        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError as error:
            reason = str(error).splitlines()[0]
            raise InputError(f"{source} is not valid YAML ({reason}); {fix}") from None
    if not isinstance(values, dict):
        raise InputError(f"{source} does not hold a mapping; {fix}")
    fields = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name not in FIELDS:
            raise InputError(f"{source}: {key!r} is {not_an_option(name)}")
        try:
            with spelling(str):  # the file's keys are field names
                fields[name] = coerce(name, value)
                check_fields({name: fields[name]})
        except InputError as error:
            raise InputError(f"{source}: {error}") from None
    return fields
