"""Pretraining: corpus -> tokenizer -> windows -> loaders (`train.data`); the book's chapter 5 functions and the
Accelerate loop (`train.loop`); the Hugging Face Trainer engine (`train.trainer`); one run end to end (`train.run`).

Names are imported on first use, so `import train` stays cheap for the modules and commands that need only part of it.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "create_dataloader": "train.data",
    "prepare_data": "train.data",
    "TokenWindows": "train.data",
    "calc_loss_batch": "train.loop",
    "calc_loss_loader": "train.loop",
    "evaluate_model": "train.loop",
    "generate_and_print_sample": "train.loop",
    "train_model_simple": "train.loop",
    "plot_losses": "train.plot",
    "TrainOptions": "train.run",
    "train": "train.run",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'train' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
