"""The run's output directory: the model directory it ends as, and its checkpoints, found and resumed.

Output directory layout (the same for both engines)::

    OUTPUT/                       the model directory: config.json, model.safetensors, generation_config.json,
                                  tokenizer files, modeling_gptscratch.py (written at the end), plus
    OUTPUT/metrics.jsonl          one JSON object per evaluation
    OUTPUT/loss_plot.png|pdf      the book's loss plot
    OUTPUT/training_summary.json  what was trained on, and the final figures
    OUTPUT/checkpoints/           run.json (the options), checkpoint-<step>/ (the newest --save-total-limit),
                                  best-model/ (with --early-stopping-patience)
    OUTPUT/tensorboard/           with --report-to tensorboard
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

from common.commands import UsageError
from common.files import publish
from common.model_dir import save_model_directory
from modeling_gptscratch import GPTScratchForCausalLM

RUN_FILE = "run.json"  # the options, process count and data description, beside the checkpoints
LOOP_STATE_FILE = "loop_state.json"  # written last into an Accelerate checkpoint: its presence marks it complete
TRAINER_STATE_FILE = "trainer_state.json"  # written last by the Trainer into its checkpoints
CHECKPOINT_PATTERN = re.compile(r"checkpoint-(\d+)")


class RunDirectory:
    """The output directory: model files, metrics, plot, summary, and `checkpoints/`."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).absolute()
        self.checkpoints = self.root / "checkpoints"
        self.metrics_file = self.root / "metrics.jsonl"
        self.best_model = self.checkpoints / "best-model"

    def checkpoint_dirs(self, under: Path | None = None) -> list[Path]:
        """Complete checkpoints (an interrupted write has no state file), oldest first."""
        under = under or self.checkpoints
        if not under.is_dir():
            return []
        found = []
        for path in under.iterdir():
            match = CHECKPOINT_PATTERN.fullmatch(path.name)
            if match and is_complete_checkpoint(path):
                found.append((int(match.group(1)), path))
        return [path for _, path in sorted(found)]

    def resolve_resume(self, spec: str) -> Path:
        """The checkpoint `--resume` names: "latest" is the newest complete one in this directory."""
        if spec == "latest":
            found = self.checkpoint_dirs()
            if not found:
                raise UsageError(
                    f"--resume: {self.checkpoints} holds no complete checkpoint; start without --resume "
                    "(or pass --resume PATH to a checkpoint directory)"
                )
            return found[-1]
        path = Path(spec).absolute()
        if not path.is_dir():
            raise UsageError(f"--resume {spec}: no such checkpoint directory; pass a checkpoints/checkpoint-N one")
        if not is_complete_checkpoint(path) or not (path.parent / RUN_FILE).is_file():
            raise UsageError(
                f"--resume {spec}: not a complete gptscratch checkpoint (no {LOOP_STATE_FILE} or {TRAINER_STATE_FILE}, "
                f"or no {RUN_FILE} beside it); pass a checkpoints/checkpoint-N directory of a gptscratch run"
            )
        return path

    def check_fresh(self, overwrite: bool) -> None:
        """Refuses a non-empty output directory unless `overwrite` (a resumable run is pointed at --resume)."""
        if self.root.exists() and not self.root.is_dir():
            raise UsageError(f"--output-dir {self.root} exists and is not a directory; choose another path")
        if self.root.is_dir() and any(self.root.iterdir()) and not overwrite:
            hint = " or --resume to continue its run" if self.checkpoint_dirs() else ""
            raise UsageError(
                f"--output-dir {self.root} exists and is not empty; pass --overwrite to replace it{hint}, "
                "or choose another directory"
            )

    def start(self, overwrite: bool) -> None:
        """Creates the directory; with `overwrite`, first empties it."""
        if overwrite and self.root.is_dir():
            for entry in self.root.iterdir():
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        self.checkpoints.mkdir(parents=True, exist_ok=True)

    def rotate_checkpoints(self, keep: int) -> None:
        """Deletes all but the newest `keep` complete checkpoints, and leftovers of interrupted writes."""
        for path in self.checkpoint_dirs()[:-keep] if keep > 0 else []:
            shutil.rmtree(path, ignore_errors=True)
        for path in self.checkpoints.glob(".tmp-checkpoint-*"):
            shutil.rmtree(path, ignore_errors=True)

    def write_model(self, model: GPTScratchForCausalLM, tokenizer: Any) -> None:
        """Writes the model directory's files into the output directory without touching checkpoints or metrics.

        The files are written completely into a temporary sibling (by `save_model_directory`), then renamed in one
        by one; config.json, which makes the directory loadable, is removed first and renamed in last, so a crash
        never leaves a loadable directory whose files belong to different models.
        """
        staging = self.root.parent / f".{self.root.name}.model-tmp-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            save_model_directory(model, tokenizer, staging)
            (self.root / "config.json").unlink(missing_ok=True)
            for stale in self.root.glob("model*.safetensors*"):  # shards of an earlier save
                if not (staging / stale.name).exists():
                    stale.unlink()
            names = sorted(path.name for path in staging.iterdir() if path.name != "config.json")
            for name in [*names, "config.json"]:
                publish(staging / name, self.root / name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def is_complete_checkpoint(path: Path) -> bool:
    return (path / LOOP_STATE_FILE).is_file() or (path / TRAINER_STATE_FILE).is_file()


def checkpoint_step(path: Path) -> int:
    match = CHECKPOINT_PATTERN.fullmatch(path.name)
    if not match:
        raise UsageError(f"--resume {path}: the directory name is not checkpoint-<step>")
    return int(match.group(1))


def save_best_model(model: GPTScratchForCausalLM, directory: Path) -> None:
    """Keeps the best model so far (weights + config) in `directory`, replaced atomically."""
    staging = directory.parent / f".tmp-{directory.name}"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    if directory.exists():
        retired = directory.parent / f".old-{directory.name}"
        shutil.rmtree(retired, ignore_errors=True)
        os.replace(directory, retired)
        os.replace(staging, directory)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staging, directory)
