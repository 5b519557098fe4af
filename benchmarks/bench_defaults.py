"""What gptscratch-train's defaults learn in a time budget: validation bits per byte after `--max-time`.

    python benchmarks/bench_defaults.py [--data ../shared/data/tinyshakespeare.txt] [--max-time 90]
        [--settings old,new | --ladder] [--try='--lr 3e-3' ...] [--repeats 1]

Each setting is one fresh run, as a new user makes it: `gptscratch-train [--data FILE] --max-time T` with a fresh
cache (so the tokenizer is fitted and the text tokenised inside the timed command), then `gptscratch-eval` on the
characters the run held out (the last 1 - 0.9 of the corpus, what the default `--train-ratio` keeps for validation:
for one file, its last 10% of characters; without --data, those of the embedded corpus, one file per document).
The table gives the whole training command's wall time, the steps it made, and the held-out bits per byte
(tokenizer-independent), with each setting's difference from the first.

`--settings` picks from SETTINGS: `old` is the defaults before they were tuned, spelled as flags; `new` is no flag
at all. `--ladder` runs LADDER: from the old defaults, one change at a time, to the new ones, so each row says what
its change bought. `--try FLAGS` adds a row of the new defaults with FLAGS (what would this change buy?). Run it on a
quiet machine: the budget is wall-clock time, so other jobs cost steps.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# The defaults before they were tuned: the book's dropout 0.1 everywhere (attention weights included), AdamW for
# every weight at a constant 4e-4 after 20 warmup steps, batch 4, a 4,096-token BPE that merges even pairs seen
# once, a 6 x 192 tiny preset with 256-token windows, and no early stopping (the last model, however it validates).
# --muon-momentum 0.95 (torch's) only counts from the row that turns Muon on.
OLD = [
    "--optimizer",
    "adamw",
    "--dropout",
    "0.1",
    "--attention-dropout",
    "0.1",
    "--lr",
    "4e-4",
    "--lr-scheduler",
    "constant",
    "--warmup-steps",
    "20",
    "--batch-size",
    "4",
    "--vocab-size",
    "4096",
    "--min-frequency",
    "1",
    "--n-layers",
    "6",
    "--emb-dim",
    "192",
    "--n-heads",
    "6",
    "--context-length",
    "256",
    "--eval-freq",
    "50",
    "--eval-iter",
    "5",
    "--early-stopping-patience",
    "0",
    "--muon-momentum",
    "0.95",
]


def without(flags: list[str], names: list[str]) -> list[str]:
    """`flags` with the flags `names` and their values left out (every flag here takes one value)."""
    kept = []
    for index in range(0, len(flags), 2):
        if flags[index] not in names:
            kept += flags[index : index + 2]
    return kept


# From the old defaults to the new ones, one change per row: each row leaves out the old flags of its change, and
# those of the rows above; the last row has none left, so it is the new defaults.
CHANGES = {
    "old defaults": [],
    "attention dropout off": ["--attention-dropout"],
    "no dropout": ["--dropout"],
    "lr 1.5e-3, cosine to lr/10": ["--lr", "--lr-scheduler"],
    "vocabulary 8,192": ["--vocab-size"],
    "merge pairs seen twice": ["--min-frequency"],
    "4 layers": ["--n-layers", "--context-length", "--batch-size", "--warmup-steps", "--eval-freq", "--eval-iter"],
    "Muon, lr 4e-3": ["--optimizer"],
    "Muon momentum 0.8": ["--muon-momentum"],
    "width 128, 4 heads": ["--emb-dim", "--n-heads"],
    "keep the best model (= new)": ["--early-stopping-patience"],
}
LADDER = {}
for _name, _dropped in CHANGES.items():
    LADDER[_name] = without(OLD if not LADDER else list(LADDER.values())[-1], _dropped)
assert list(LADDER.values())[-1] == [], "the ladder must end at the new defaults"
SETTINGS = {"old": OLD, "new": [], **LADDER}


def write_held_out(data: Path | None, directory: Path, train_ratio: float = 0.9) -> list[Path]:
    """The documents (or parts) the runs validate on, one file each: the package's own split of the corpus."""
    from train.corpus import load_corpus, scan_corpus, split_pieces

    corpus = load_corpus(data=[str(data)] if data else None)
    scan = scan_corpus(corpus, progress=False)
    documents: list[list[str]] = []
    for split, text, starts in split_pieces(corpus.pieces(), int(train_ratio * scan.characters), scan.kept):
        if split == "val":
            if starts or not documents:
                documents.append([])
            documents[-1].append(text)
    paths = []
    for index, pieces in enumerate(documents):
        paths.append(directory / f"held_out_{index:05d}.txt")
        paths[-1].write_text("".join(pieces), encoding="utf-8")
    return paths


def run_setting(data: Path | None, held_out: list[Path], flags: list[str], max_time: str, work: Path) -> dict:
    """One training run with a fresh cache, then gptscratch-eval on the held-out text."""
    shutil.rmtree(work, ignore_errors=True)
    output = work / "run"
    command = [
        sys.executable,
        "-m",
        "train",
        *(["--data", str(data)] if data else []),
        "--max-time",
        max_time,
        "--output-dir",
        str(output),
        "--cache-dir",
        str(work / "cache"),
        *flags,
    ]
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    evaluation = subprocess.run(
        [sys.executable, "-m", "use.evaluate", "--model", str(output), "--data", *map(str, held_out), "--json"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    )
    summary = json.loads((output / "training_summary.json").read_text())
    return {"wall_s": wall, "steps": summary["steps"], **json.loads(evaluation.stdout)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, help="a text file (default: the embedded corpus)")
    parser.add_argument("--max-time", default="90")
    parser.add_argument("--settings", default="old,new", help=f"comma-separated, from: {', '.join(SETTINGS)}")
    parser.add_argument("--ladder", action="store_true", help="run LADDER (old defaults to new, one change a row)")
    parser.add_argument(
        "--try",
        dest="tries",
        action="append",
        default=[],
        metavar="FLAGS",
        help="also run the new defaults with these flags (repeatable), e.g. --try='--lr 3e-3'",
    )
    parser.add_argument("--repeats", type=int, default=1, help="runs per setting (the median is shown)")
    args = parser.parse_args()
    names = list(LADDER) if args.ladder else args.settings.split(",") if args.settings else []
    unknown = [name for name in names if name not in SETTINGS]
    if unknown:
        parser.error(f"unknown settings {unknown}; choose from {list(SETTINGS)}")
    settings = {**{name: SETTINGS[name] for name in names}, **{flags: shlex.split(flags) for flags in args.tries}}

    data = args.data or "the embedded corpus"
    print(f"data: {data}; --max-time {args.max_time}; {os.cpu_count()} CPUs; fresh cache per run")
    print(f"{'setting':30} {'command s':>9} {'steps':>6} {'bits/byte':>9} {'vs first':>8}")
    first = None
    with tempfile.TemporaryDirectory(prefix="bench-defaults-") as scratch:
        (Path(scratch) / "held-out").mkdir()
        held_out = write_held_out(args.data, Path(scratch) / "held-out")
        for name, flags in settings.items():
            runs = sorted(
                (
                    run_setting(args.data, held_out, flags, args.max_time, Path(scratch) / "work")
                    for _ in range(args.repeats)
                ),
                key=lambda run: run["bits_per_byte"],
            )
            result = runs[len(runs) // 2]
            first = first if first is not None else result["bits_per_byte"]
            print(
                f"{name:30} {result['wall_s']:9.1f} {result['steps']:6d} {result['bits_per_byte']:9.3f} "
                f"{result['bits_per_byte'] - first:+8.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
