"""Shared by the converter tests: random IDs, converted directories loaded and read, the command run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM


def random_ids(vocab_size: int, tokens: int, batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab_size, (batch, tokens), generator=torch.Generator().manual_seed(seed))


def load_converted(directory: Path):
    return AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=True).eval()


def safetensors_tensors(directory: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for file in sorted(directory.glob("*.safetensors")):
        with safe_open(file, framework="pt") as f:
            tensors |= {name: f.get_tensor(name) for name in f.keys()}
    return tensors


def run_cli(*args, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "convert", *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


def entries(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir()) if directory.exists() else []
