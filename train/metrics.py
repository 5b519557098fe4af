"""What a run measures and keeps: metrics.jsonl, the book's progress line, perplexity, throughput figures."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from common.files import write_text_atomic


class MetricsLog:
    """metrics.jsonl: one JSON object per evaluation, rewritten atomically on every append (it is small)."""

    def __init__(self, path: Path, write: bool):
        self.path = path
        self.write = write
        self.records: list[dict[str, Any]] = []

    def load(self, up_to_step: int) -> None:
        """Reads the records of a resumed run up to its checkpoint's step; later ones are repeated by the resume."""
        if self.path.is_file():
            lines = self.path.read_text(encoding="utf-8").splitlines()
            self.records = [json.loads(line) for line in lines if line.strip()]
            self.records = [record for record in self.records if record["step"] <= up_to_step]
        self._flush()

    def append(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        self._flush()

    def _flush(self) -> None:
        if self.write:
            write_text_atomic(self.path, "".join(json.dumps(record) + "\n" for record in self.records))


# The fields of a record that the clock measures: a rerun of the same steps gives other values (all the others it
# repeats exactly). time_s: seconds of training so far (steps, evaluations, samples, checkpoints; --max-time's
# clock); tokens_per_second and mfu: over the steps since the previous evaluation, None at the first.
# tasks_time_s: the seconds the benchmark tasks took at this evaluation (counted in time_s, not in the throughput).
TIMING_FIELDS = ("time_s", "tokens_per_second", "mfu", "tasks_time_s")


def metrics_record(
    step: int,
    epoch: float,
    tokens_seen: int,
    train_loss: float,
    val_loss: float,
    time_s: float,
    tokens_per_second: float | None,
    mfu: float | None,
    grad_norm: float | None = None,
    skipped_steps: int = 0,
    rollbacks: int = 0,
) -> dict[str, Any]:
    """One evaluation's line in metrics.jsonl; `mfu` is a fraction of the peak FLOP/s, `grad_norm` the last step's
    gradient norm before clipping (None at step 0), `skipped_steps` and `rollbacks` the run's counts so far
    (`train.stability`)."""
    return {
        "step": step,
        "epoch": round(epoch, 6),
        "tokens_seen": tokens_seen,
        "train_loss": train_loss,
        "val_loss": val_loss,
        "train_perplexity": perplexity(train_loss),
        "val_perplexity": perplexity(val_loss),
        "time_s": round(time_s, 3),
        "tokens_per_second": tokens_per_second,
        "mfu": mfu,
        "grad_norm": grad_norm,
        "skipped_steps": skipped_steps,
        "rollbacks": rollbacks,
    }


def task_metrics(record: dict[str, Any]) -> list[str]:
    """The benchmark scores in a record: its TASK/METRIC keys (`eval_tasks`)."""
    return [key for key in record if "/" in key]


def perplexity(loss: float) -> float:
    """exp(cross-entropy): the effective number of equally likely next tokens. Capped where exp overflows."""
    return math.exp(min(loss, 700.0))


def format_evaluation(record: dict[str, Any]) -> str:
    """The book's progress line, with tokens seen and perplexity, then the time and throughput."""
    line = (
        f"Ep {max(1, math.ceil(record['epoch']))} (Step {record['step']:06d}, {record['tokens_seen']:,} tokens): "
        f"Train loss {record['train_loss']:.3f}, Val loss {record['val_loss']:.3f}, "
        f"Val perplexity {record['val_perplexity']:.1f} | {record['time_s']:.1f} s"
    )
    if record["tokens_per_second"] is not None:
        line += f", {record['tokens_per_second']:,.0f} tokens/s, MFU {format_mfu(record['mfu'])}"
    if record.get("grad_norm") is not None:
        line += f", grad norm {record['grad_norm']:.3g}"
    if record.get("skipped_steps") or record.get("rollbacks"):
        line += f" | {record['skipped_steps']} steps skipped, {record['rollbacks']} rollbacks"
    scores = task_metrics(record)
    if scores:
        values = ", ".join(f"{key} {'N/A' if record[key] is None else format(record[key], '.4g')}" for key in scores)
        line += f" | {values} ({record['tasks_time_s']:.1f} s)"
    return line


def format_mfu(mfu: float) -> str:
    """MFU as a percentage, with the digits a small one needs (a tiny model on a GPU runs at 0.075%)."""
    return f"{mfu:.1%}" if mfu >= 0.001 else f"{100 * mfu:.2g}%"


def throughput_postfix(figures: dict[str, float | None]) -> dict[str, str]:
    """tokens/s and MFU for a progress bar (nothing before the first step)."""
    if figures["tokens_per_second"] is None:
        return {}
    return {"tok_s": f"{figures['tokens_per_second']:,.0f}", "mfu": format_mfu(figures["mfu"])}
