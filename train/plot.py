"""The book's loss plot: training and validation loss against epochs, tokens seen on a second x-axis; with benchmark
scores in the metrics (`eval_tasks`), a second panel of them against tokens seen."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from common.files import write_atomic
from train.metrics import task_metrics


def plot_losses(
    epochs_seen: Sequence[float],
    tokens_seen: Sequence[int],
    train_losses: Sequence[float],
    val_losses: Sequence[float],
    output_stem: str | os.PathLike = "loss_plot",
    task_scores: Mapping[str, tuple[Sequence[int], Sequence[float]]] | None = None,
) -> list[Path]:
    """Draws the book's `plot_losses` figure and writes it as `<output_stem>.png` and `<output_stem>.pdf`; with
    `task_scores` ({"TASK/METRIC": (tokens seen, values)}), a second panel beside it plots them.

    Each file is written atomically (a temporary sibling, then a rename). Uses
    matplotlib's object API (no pyplot), which needs no display and leaves no global state behind.
    """
    figure = Figure(figsize=(10, 3) if task_scores else (5, 3))
    axis = figure.add_subplot(1, 2 if task_scores else 1, 1)
    axis.plot(epochs_seen, train_losses, label="Training loss")
    axis.plot(epochs_seen, val_losses, linestyle="-.", label="Validation loss")
    axis.set_xlabel("Epochs")
    axis.set_ylabel("Loss")
    axis.legend(loc="upper right")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    tokens_axis = axis.twiny()  # a second x-axis sharing the y-axis
    tokens_axis.plot(tokens_seen, train_losses, alpha=0)  # invisible: only aligns the tokens axis' ticks
    tokens_axis.set_xlabel("Tokens seen")
    if task_scores:
        scores_axis = figure.add_subplot(1, 2, 2)
        for name, (tokens, values) in task_scores.items():
            scores_axis.plot(tokens, values, marker="o", label=name)
        scores_axis.set_xlabel("Tokens seen")
        scores_axis.set_ylabel("Score")
        scores_axis.legend(loc="best", fontsize="small")
    figure.tight_layout()

    stem = Path(output_stem)
    written = []
    for suffix in (".png", ".pdf"):
        target = stem.with_suffix(suffix)
        # The temporary keeps the suffix: matplotlib picks the format from it.
        write_atomic(target, lambda path: figure.savefig(path, dpi=150), suffix=suffix)
        written.append(target)
    return written


def plot_metrics_file(metrics_path: str | os.PathLike, output_stem: str | os.PathLike | None = None) -> list[Path]:
    """Plots a run's metrics.jsonl (records with epoch, tokens_seen, train_loss, val_loss, and TASK/METRIC scores
    where the tasks ran) beside it."""
    metrics_path = Path(metrics_path)
    records = [json.loads(line) for line in metrics_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if output_stem is None:
        output_stem = metrics_path.parent / "loss_plot"
    task_scores = {}
    for name in dict.fromkeys(name for record in records for name in task_metrics(record)):
        scored = [record for record in records if record.get(name) is not None]
        task_scores[name] = ([record["tokens_seen"] for record in scored], [record[name] for record in scored])
    return plot_losses(
        [record["epoch"] for record in records],
        [record["tokens_seen"] for record in records],
        [record["train_loss"] for record in records],
        [record["val_loss"] for record in records],
        output_stem,
        task_scores=task_scores,
    )
