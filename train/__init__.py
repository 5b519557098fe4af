"""Pretraining: corpus -> tokenizer -> windows -> loaders (`train.data`); the book's chapter 5 functions
(`train.book`); the two engines, the Accelerate loop (`train.loop`) and the Hugging Face Trainer (`train.trainer`);
one run end to end (`train.run`) from its options (`train.options`).

Names are imported on first use, so `import train` stays cheap for the modules and commands that need only part of it.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "create_dataloader": "train.windows",
    "prepare_data": "train.data",
    "TokenWindows": "train.windows",
    "calc_loss_batch": "train.book",
    "calc_loss_loader": "train.book",
    "evaluate_model": "train.book",
    "generate_and_print_sample": "train.book",
    "train_model_simple": "train.book",
    "plot_losses": "train.plot",
    "TrainOptions": "train.options",
    "train": "train.run",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'train' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
