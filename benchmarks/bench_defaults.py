"""What gptscratch-train's defaults learn in a time budget: validation bits per byte after `--max-time`.

    python benchmarks/bench_defaults.py --data ../shared/data/tinyshakespeare.txt [--max-time 90]
        [--settings old,new | --ladder] [--repeats 1]

Each setting is one fresh run, as a new user makes it: `gptscratch-train --data FILE --max-time T` with a fresh
cache (so the tokenizer is fitted and the text tokenised inside the timed command), then `gptscratch-eval` on the
characters the run held out (the last 1 - 0.9 of the file, what the default `--train-ratio` keeps for validation).
The table gives the whole training command's wall time, the steps it made, and the held-out bits per byte
(tokenizer-independent), with each setting's difference from the first.

`--settings` picks from SETTINGS: `old` is the defaults before they were tuned, spelled as flags; `new` is no flag
at all. `--ladder` runs LADDER: from the old defaults, one change at a time, to the new ones, so each row says what
its change bought. Run it on a quiet machine: the budget is wall-clock time, so other jobs cost steps.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# The defaults before they were tuned: the book's dropout 0.1 everywhere (attention weights included), AdamW at a
# constant 4e-4 after 20 warmup steps, batch 4, a 4,096-token BPE and a 6 x 192 tiny preset with 256-token windows.
OLD = ["--dropout", "0.1", "--attention-dropout", "0.1", "--lr", "4e-4", "--lr-scheduler", "constant",
       "--warmup-steps", "20", "--batch-size", "4", "--vocab-size", "4096", "--n-layers", "6", "--emb-dim", "192",
       "--n-heads", "6", "--context-length", "256", "--eval-freq", "50", "--eval-iter", "5"]


def without(flags: list[str], names: list[str]) -> list[str]:
    """`flags` with the flags `names` and their values left out (every flag here takes one value)."""
    kept = []
    for index in range(0, len(flags), 2):
        if flags[index] not in names:
            kept += flags[index: index + 2]
    return kept


# From the old defaults to the new ones, one change per row: each row leaves out the old flags of its change, and
# those of the rows above; the last row has none left, so it is the new defaults.
CHANGES = {
    "old defaults": [],
    "attention dropout off": ["--attention-dropout"],
    "no dropout": ["--dropout"],
    "lr 1.5e-3, cosine to lr/10": ["--lr", "--lr-scheduler"],
    "vocabulary 8,192": ["--vocab-size"],
    "4 layers (the new defaults)": ["--n-layers", "--emb-dim", "--n-heads", "--context-length", "--batch-size",
                                    "--warmup-steps", "--eval-freq", "--eval-iter"],
}
LADDER = {}
for _name, _dropped in CHANGES.items():
    LADDER[_name] = without(OLD if not LADDER else list(LADDER.values())[-1], _dropped)
assert list(LADDER.values())[-1] == [], "the ladder must end at the new defaults"
SETTINGS = {"old": OLD, "new": [], **LADDER}


def held_out_text(data: Path, train_ratio: float = 0.9) -> str:
    text = data.read_text(encoding="utf-8")
    return text[int(train_ratio * len(text)):]


def run_setting(data: Path, held_out: Path, flags: list[str], max_time: str, work: Path) -> dict:
    """One training run with a fresh cache, then gptscratch-eval on the held-out text."""
    shutil.rmtree(work, ignore_errors=True)
    output = work / "run"
    command = [sys.executable, "-m", "train", "--data", str(data), "--max-time", max_time, "--output-dir",
               str(output), "--cache-dir", str(work / "cache"), *flags]
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    evaluation = subprocess.run(
        [sys.executable, "-m", "train.evaluate", "--model", str(output), "--data", str(held_out), "--json"],
        cwd=REPO, check=True, capture_output=True, text=True,
    )
    summary = json.loads((output / "training_summary.json").read_text())
    return {"wall_s": wall, "steps": summary["steps"], **json.loads(evaluation.stdout)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--max-time", default="90")
    parser.add_argument("--settings", default="old,new", help=f"comma-separated, from: {', '.join(SETTINGS)}")
    parser.add_argument("--ladder", action="store_true", help="run LADDER (old defaults to new, one change a row)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per setting (the median is shown)")
    args = parser.parse_args()
    names = list(LADDER) if args.ladder else args.settings.split(",")
    unknown = [name for name in names if name not in SETTINGS]
    if unknown:
        parser.error(f"unknown settings {unknown}; choose from {list(SETTINGS)}")

    print(f"data: {args.data}; --max-time {args.max_time}; {os.cpu_count()} CPUs; fresh cache per run")
    print(f"{'setting':30} {'command s':>9} {'steps':>6} {'bits/byte':>9} {'vs first':>8}")
    first = None
    with tempfile.TemporaryDirectory(prefix="bench-defaults-") as scratch:
        held_out = Path(scratch) / "held_out.txt"
        held_out.write_text(held_out_text(args.data), encoding="utf-8")
        for name in names:
            runs = sorted((run_setting(args.data, held_out, SETTINGS[name], args.max_time, Path(scratch) / "work")
                           for _ in range(args.repeats)), key=lambda run: run["bits_per_byte"])
            result = runs[len(runs) // 2]
            first = first if first is not None else result["bits_per_byte"]
            print(f"{name:30} {result['wall_s']:9.1f} {result['steps']:6d} {result['bits_per_byte']:9.3f} "
                  f"{result['bits_per_byte'] - first:+8.3f}", flush=True)


if __name__ == "__main__":
    main()
