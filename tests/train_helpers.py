"""Running gptscratch-train in the tests: the tiny model's flags and shape, the command in-process, its metrics."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT

from train import cli
from train.metrics import TIMING_FIELDS

# A 2-layer, 32-dimension model with a 300-token tokenizer: hundreds of steps per second on a CPU.
TINY_MODEL = [
    "--n-layers",
    "2",
    "--emb-dim",
    "32",
    "--n-heads",
    "2",
    "--config",
    "context_length=32",
    "--vocab-size",
    "300",
    "--dropout",
    "0",
]

# The shape of TINY_MODEL, which its model FLOPs are counted from by hand (test_clock.py, test_plan.py).
VOCAB, EMB, LAYERS, WINDOW, BATCH = 300, 32, 2, 32, 4
LR, MIN_LR = 3e-3, 3e-4


def common(corpus: Path, cache: Path) -> list[str]:
    return ["--data", str(corpus), "--cache-dir", str(cache), *TINY_MODEL, "--batch-size", "4", "--eval-iter", "2"]


def train_cli(argv: list[str]) -> int:
    """gptscratch-train in this process; returns its exit status."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    return exit_info.value.code


def read_metrics(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]


def without_timing(records: list[dict]) -> list[dict]:
    """metrics.jsonl records without the fields a wall clock measures."""
    return [{key: value for key, value in record.items() if key not in TIMING_FIELDS} for record in records]


def subprocess_env() -> dict[str, str]:
    """A child with this process's thread count: float results then match an in-process run bit for bit."""
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()), PYTHONPATH=str(REPO_ROOT))
    return env
