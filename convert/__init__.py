"""Formats: OpenAI's GPT-2 TensorFlow checkpoints, the book's checkpoints and transformers' GPT-2 into model
directories, and out again.

The converters load on first use, so `import convert` stays cheap (no TensorFlow, torch or transformers):

    from convert import convert_openai_checkpoint, download_and_convert_openai_checkpoint, convert_book_checkpoint
    from convert import convert_transformers_gpt2, export_model
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "convert_openai_checkpoint": "convert.openai_checkpoint",
    "download_openai_checkpoint": "convert.openai_checkpoint",
    "download_and_convert_openai_checkpoint": "convert.openai_checkpoint",
    "convert_book_checkpoint": "convert.book_checkpoint",
    "convert_transformers_gpt2": "convert.from_transformers",
    "export_model": "convert.export",
}
__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'convert' has no attribute {name!r}")
