"""The run's output directory: the model directory it ends as, and its checkpoints, found and resumed.

Output directory layout (the same for both engines)::

    OUTPUT/                       the model directory: config.json, model.safetensors, generation_config.json,
                                  tokenizer files, modeling_gptscratch.py (written at the end), plus
    OUTPUT/metrics.jsonl          one JSON object per evaluation
    OUTPUT/loss_plot.png|pdf      the book's loss plot
    OUTPUT/README.md              the model card: the model, what it started from and was trained on, its figures
    OUTPUT/training_summary.json  what was trained on, and the final figures
    OUTPUT/checkpoints/           run.json (the options), checkpoint-<step>/ (the newest `save_total_limit`),
                                  best-model/ (unless `early_stopping_patience` 0)
    OUTPUT/tensorboard/           with `report_to` tensorboard
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState

from common.errors import InputError, field
from common.files import atomic_directory, check_writable, publish, recover_interrupted_writes, writing_output
from common.model_dir import save_model_directory, weights_size
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
        self.summary_file = self.root / "training_summary.json"
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
        """The checkpoint `resume` names: "latest" is the newest complete one in this directory."""
        if spec == "latest":
            found = self.checkpoint_dirs()
            if not found:
                raise InputError(
                    f"{field('resume')}: {self.checkpoints} holds no complete checkpoint; start without "
                    f"{field('resume')} "
                    f"(or pass {field('resume')} PATH to a checkpoint directory)"
                )
            return found[-1]
        path = Path(spec).absolute()
        if not path.is_dir():
            raise InputError(
                f"{field('resume')} {spec}: no such checkpoint directory; pass a checkpoints/checkpoint-N one"
            )
        if not is_complete_checkpoint(path) or not (path.parent / RUN_FILE).is_file():
            raise InputError(
                f"{field('resume')} {spec}: not a complete gptscratch checkpoint (no {LOOP_STATE_FILE} or "
                f"{TRAINER_STATE_FILE}, "
                f"or no {RUN_FILE} beside it); pass a checkpoints/checkpoint-N directory of a gptscratch run"
            )
        return path

    def check_fresh(self, overwrite: bool) -> None:
        """Refuses a non-empty output directory unless `overwrite` (a resumable run is pointed at `resume`)."""
        if self.root.exists() and not self.root.is_dir():
            raise InputError(f"{field('output_dir')} {self.root} exists and is not a directory; choose another path")
        if self.root.is_dir() and any(self.root.iterdir()) and not overwrite:
            hint = f" or {field('resume')} to continue its run" if self.checkpoint_dirs() else ""
            raise InputError(
                f"{field('output_dir')} {self.root} exists and is not empty; pass {field('overwrite')} to replace "
                f"it{hint}, "
                "or choose another directory"
            )

    def finished_step(self) -> int | None:
        """The step of the model directory a finished run wrote, or None. training_summary.json is written last,
        after config.json, so a summary with a step marks a complete model directory of that step."""
        if not (self.summary_file.is_file() and (self.root / "config.json").is_file()):
            return None
        try:
            return int(json.loads(self.summary_file.read_text(encoding="utf-8"))["steps"])
        except (ValueError, KeyError, TypeError):
            return None

    def check_writable(self) -> None:
        """Refuses an output directory that cannot be written (a read-only file system, no permission), before the
        run prepares its data."""
        check_writable(self.root, field("output_dir"), "output_dir")

    @contextlib.contextmanager
    def starting(self, overwrite: bool) -> Iterator[None]:
        """Creates the directory (with `overwrite`, first empties it) and removes what writes killed mid-way left,
        for the block to write the run's first files. A block that fails in a directory this created removes it:
        a run that could not start leaves nothing behind."""
        created = not self.root.exists()
        try:
            with writing_output(self.root, "output directory", option="output_dir"):
                if overwrite and self.root.is_dir():
                    for entry in self.root.iterdir():
                        shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
                self.checkpoints.mkdir(parents=True, exist_ok=True)
                self.remove_leftovers()
                yield
        except BaseException:
            if created:
                shutil.rmtree(self.root, ignore_errors=True)
            raise

    def remove_leftovers(self) -> None:
        """Tidies what a run killed while writing left: the temporary files of metrics, summary, plot and run.json
        (`write_atomic`'s hidden siblings), unfinished checkpoints, the model directory's staging folder; and puts
        back a best model caught between its two renames. Only while this run is the directory's one writer."""
        for leftover in [
            *self.root.glob(".*.tmp-*"),
            *self.checkpoints.glob(".*.tmp-*"),
            *self.checkpoints.glob(".tmp-checkpoint-*"),
            *self.root.parent.glob(self._model_staging("*")),
        ]:
            shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
        recover_interrupted_writes(self.best_model)

    def rotate_checkpoints(self, keep: int) -> None:
        """Deletes all but the newest `keep` complete checkpoints."""
        for path in self.checkpoint_dirs()[:-keep] if keep > 0 else []:
            shutil.rmtree(path, ignore_errors=True)

    @contextlib.contextmanager
    def writing_checkpoint(self, step: int, model: torch.nn.Module, keep: int) -> Iterator[Path]:
        """Yields the path every process writes checkpoint-<step> to (not yet there; its parent is). Once the block
        has succeeded on all of them, the checkpoint takes its name by one rename, and all but the newest `keep` are
        deleted. A failure removes the unfinished checkpoint (a full disk is one line naming it and the space it
        needed), so the checkpoints before it are the newest; a kill leaves a hidden `.tmp-checkpoint-<step>`,
        which is never taken for a checkpoint and is removed when the run starts again (`remove_leftovers`).
        """
        state = PartialState()
        final = self.checkpoints / f"checkpoint-{step}"
        holder = self.checkpoints / f".tmp-checkpoint-{step}"
        # The weights and at most two optimizer moments of their size (AdamW's; Muon keeps one for the matrices);
        # the rest (RNG, scheduler, tokenizer) is small. Counted from the parameters' shapes: sharded ones (FSDP2's
        # DTensors) have no single storage to measure.
        weights = sum(parameter.numel() * parameter.element_size() for parameter in model.parameters())
        with writing_output(final, "checkpoint", size=3 * weights, option="output_dir"):
            if state.is_main_process:
                shutil.rmtree(holder, ignore_errors=True)
                holder.mkdir()
            state.wait_for_everyone()
            try:
                yield holder / final.name
                state.wait_for_everyone()
                if state.is_main_process:
                    if final.exists():  # the same step saved again (a stop request right after a scheduled save)
                        shutil.rmtree(final)
                    os.replace(holder / final.name, final)
                    self.rotate_checkpoints(keep)
            finally:
                if state.is_main_process:
                    shutil.rmtree(holder, ignore_errors=True)
            state.wait_for_everyone()

    def _model_staging(self, suffix: str) -> str:
        return f".{self.root.name}.model-tmp-{suffix}"

    def write_model(self, model: GPTScratchForCausalLM, tokenizer: Any) -> None:
        """Writes the model directory's files into the output directory without touching checkpoints or metrics.

        The files are written completely into a temporary sibling (by `save_model_directory`), then renamed in one
        by one; config.json, which makes the directory loadable, is removed first and renamed in last, so a crash
        never leaves a loadable directory whose files belong to different models.
        """
        staging = self.root.parent / self._model_staging(str(os.getpid()))
        shutil.rmtree(staging, ignore_errors=True)
        try:
            with writing_output(self.root, "model directory", option="output_dir"):
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


def budget_spent(path: Path) -> float | None:
    """The `max_time` budget the checkpoint at `path` had spent (None when its run was not stopped by its budget),
    from either engine's state file."""
    if (path / LOOP_STATE_FILE).is_file():
        state = json.loads((path / LOOP_STATE_FILE).read_text(encoding="utf-8"))
    else:
        trainer_state = json.loads((path / TRAINER_STATE_FILE).read_text(encoding="utf-8"))
        state = trainer_state.get("stateful_callbacks", {}).get("RunCallback", {}).get("attributes", {})
    return state.get("budget_spent")


def checkpoint_step(path: Path) -> int:
    match = CHECKPOINT_PATTERN.fullmatch(path.name)
    if not match:
        raise InputError(f"{field('resume')} {path}: the directory name is not checkpoint-<step>")
    return int(match.group(1))


BEST_STEP_FILE = "step.json"  # beside the best model's weights: the step they are from


def save_best_model(model: GPTScratchForCausalLM, directory: Path, step: int) -> None:
    """Keeps the best model so far (weights + config, and the step they are from) in `directory`, replaced
    atomically."""
    with atomic_directory(directory, overwrite=True, what="best model", size=weights_size(model)) as staging:
        model.save_pretrained(staging)
        (staging / BEST_STEP_FILE).write_text(json.dumps({"step": step}), encoding="utf-8")


def best_model_step(directory: Path) -> int | None:
    """The step of the best model kept in `directory`, or None when none is kept."""
    path = directory / BEST_STEP_FILE
    return json.loads(path.read_text(encoding="utf-8"))["step"] if path.is_file() else None
