"""gptscratch-train that kills itself with SIGKILL at a chosen point: `python tests/kill_at.py POINT STEP ARGS...`.

A kill -9 at a moment chosen by the clock may or may not hit the writes that matter; these points hit them every
time, in both engines:

- `evaluation`: right after the evaluation of step STEP is appended to metrics.jsonl, before that step's checkpoint.
- `checkpoint`: inside the writing of checkpoint-STEP, with its optimizer state file half written.
- `model-directory`: after the last checkpoint, as the model directory is about to be written.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import torch

from train import cli
from train.checkpoints import RunDirectory
from train.context import RunContext


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main(point: str, step: int, argv: list[str]) -> None:
    if point == "evaluation":
        record_evaluation = RunContext.record_evaluation

        def record_then_die(self: RunContext, at: int, *args: object, **kwargs: object) -> dict:
            record = record_evaluation(self, at, *args, **kwargs)
            if at == step:
                die()
            return record

        RunContext.record_evaluation = record_then_die
    elif point == "checkpoint":
        save = torch.save

        def save_half_then_die(obj: object, f: object, *args: object, **kwargs: object) -> None:
            save(obj, f, *args, **kwargs)
            if isinstance(f, (str, os.PathLike)) and f".tmp-checkpoint-{step}" in str(f):
                size = Path(f).stat().st_size
                os.truncate(f, size // 2)  # what a kill in the middle of the write leaves
                die()

        torch.save = save_half_then_die
    elif point == "model-directory":
        RunDirectory.write_model = lambda self, *args, **kwargs: die()
    else:
        raise SystemExit(f"unknown kill point {point!r}")
    cli.main(argv)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3:])
