"""The checks of option values, shared by every field that takes such a value and by the commands: each gets the
field's name and its value and raises an InputError naming both, and the fix. Standard library only."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from common.errors import InputError, field

DURATION_UNITS = {"s": 1, "m": 60, "h": 3600}
# The most tokens a sample or a command generates. 100,000 tokens is a novel's length and hours of decoding for
# GPT-2 124M on a CPU, well past any use of a model whose window holds 1,024: a larger number is a typo.
MAX_NEW_TOKENS = 100_000


def positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise InputError(f"{field(name)} {value}: must be a positive integer")


def at_least_two(name: str, value: int) -> None:
    if value < 2:
        raise InputError(f"{field(name)} {value}: must be at least 2 (a spread needs two values)")


def greater_than_zero(name: str, value: float | None) -> None:
    if value is not None and not value > 0:
        raise InputError(f"{field(name)} {value}: must be greater than 0")


def not_negative(name: str, value: float | None) -> None:
    if value is not None and value < 0:
        raise InputError(f"{field(name)} {value}: must not be negative")


def below_one(name: str, value: float | None) -> None:
    if value is not None and not 0 <= value < 1:
        raise InputError(f"{field(name)} {value}: must be in [0, 1)")


def ratio(name: str, value: float) -> None:
    if not 0 < value < 1:
        raise InputError(f"{field(name)} {value}: must be between 0 and 1 (0.9 keeps 10% for validation)")


def fraction(name: str, value: float) -> None:
    if not 0 < value <= 1:
        raise InputError(f"{field(name)} {value}: must be in (0, 1]")


def new_tokens(name: str, value: int) -> None:
    if not 0 <= value <= MAX_NEW_TOKENS:
        raise InputError(
            f"{field(name)} {value}: must be between 0 and {MAX_NEW_TOKENS:,} (a novel's length, hours of decoding); "
            "ask for fewer tokens"
        )


# A byte-level BPE holds the 256 bytes and <|endoftext|> at least. The largest vocabularies in use hold about 262,144
# tokens; fitting one of this many already takes gigabytes, and a larger number is a typo (10^9 asks for 70 GB).
MIN_VOCAB_SIZE, MAX_VOCAB_SIZE = 257, 1 << 20


def vocabulary_size(name: str, value: int) -> None:
    if not MIN_VOCAB_SIZE <= value <= MAX_VOCAB_SIZE:
        raise InputError(
            f"{field(name)} {value}: a byte-level BPE needs at least {MIN_VOCAB_SIZE} (256 bytes + <|endoftext|>) and "
            f"fitting one takes at most {MAX_VOCAB_SIZE:,}; choose a size in between"
        )


def parse_duration(value: str | float) -> float:
    """Seconds from a number of seconds or a duration such as `90s`, `10m`, `1.5h`; ValueError otherwise."""
    text = str(value).strip().lower()
    scale = DURATION_UNITS.get(text[-1:], None)
    seconds = float(text[:-1] if scale else text) * (scale or 1)
    if not 0 < seconds < float("inf"):
        raise ValueError(value)
    return seconds


def duration(name: str, value: str | float | None) -> None:
    if value is None:
        return
    try:
        parse_duration(value)
    except ValueError:
        raise InputError(
            f"{field(name)} {value}: expected a positive duration in seconds (90) or with a unit (90s, 10m, 2h)"
        ) from None


def one_of(choices: Sequence[str], what: str) -> Callable[[str, str], None]:
    def check(name: str, value: str) -> None:
        if value not in choices:
            raise InputError(f"{field(name)} {value}: unknown {what}; choose one of: {', '.join(choices)}")

    return check


def finite(name: str, value: float | None) -> None:
    """Every number field's first check: nan and inf are refused, whatever the field's own check would say."""
    if value is not None and not math.isfinite(value):
        raise InputError(f"{field(name)} {value}: must be a finite number")
