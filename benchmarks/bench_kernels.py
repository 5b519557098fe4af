"""Which kernels gptscratch-train's training steps run on this machine: the attention kernel behind
`scaled_dot_product_attention` (flash, memory-efficient, cuDNN or the math fallback), the AdamW implementation
(torch's fused kernel, or foreach and per-tensor ops), and, on a GPU, the kernels that take the time.

    python benchmarks/bench_kernels.py [gptscratch-train flags]      # e.g. --mixed-precision bf16 --compile

It runs gptscratch-train itself (`train.run.train`, the flags parsed as the command parses them; by default the
embedded corpus for --max-steps 12, in a scratch directory) and records micro-batches 6 to 10 with torch.profiler:
past torch.compile's first steps and before the final evaluation, so the record holds training steps alone. The
Accelerate engine's steps (the default engine; the Trainer builds the same model and optimizer).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train.loop  # noqa: E402
from train.cli import parse_arguments  # noqa: E402
from train.run import train as run_training  # noqa: E402

FIRST_RECORDED, RECORDED = 6, 5  # micro-batches: the first one recorded (counting from 1) and how many
LAST_RECORDED = FIRST_RECORDED + RECORDED - 1
DEFAULT_STEPS = LAST_RECORDED + 2  # a step after the record, then the final one (its evaluation and checkpoint)


def record_training_steps(flags: list[str], output_dir: Path) -> profile:
    """Runs gptscratch-train with `flags` into `output_dir`; the profile of its recorded micro-batches."""
    if "--max-steps" not in flags:
        flags = [*flags, "--max-steps", str(DEFAULT_STEPS)]
    options = parse_arguments([*flags, "--output-dir", str(output_dir)])
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    profiler = profile(activities=activities)
    micro_batch = train.loop.train_micro_batch
    calls = 0

    def recorded_micro_batch(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == FIRST_RECORDED:
            profiler.start()
        result = micro_batch(*args, **kwargs)
        if calls == LAST_RECORDED:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            profiler.stop()
        return result

    train.loop.train_micro_batch = recorded_micro_batch  # fit() looks the function up at each call
    try:
        run_training(options, log=lambda message: None)
    finally:
        train.loop.train_micro_batch = micro_batch
    if calls < LAST_RECORDED:
        raise SystemExit(f"the run made {calls} micro-batches; give --max-steps {DEFAULT_STEPS} or more")
    return profiler


def kernel_report(profiler: profile) -> dict[str, dict[str, float]]:
    """Per recorded micro-batch, the calls of each attention op (forward and backward), and of each optimizer's step
    and torch's fused AdamW kernel."""
    calls = {event.key.removeprefix("aten::"): event.count / RECORDED for event in profiler.key_averages()}
    attention = {
        name: count
        for name, count in calls.items()
        if "scaled_dot_product" in name and name != "scaled_dot_product_attention"
    }
    optimizer = {
        name: count for name, count in calls.items() if name == "_fused_adamw_" or name.startswith("Optimizer.step")
    }
    return {"attention": attention, "optimizer": optimizer}


def main() -> None:
    flags = sys.argv[1:]
    if flags[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return
    with tempfile.TemporaryDirectory(prefix="bench-kernels-") as scratch:
        profiler = record_training_steps(flags, Path(scratch) / "run")
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(
        f"device: {device}; torch {torch.__version__}; flags: {' '.join(flags) or '(defaults)'}; "
        f"micro-batches {FIRST_RECORDED} to {LAST_RECORDED}, calls per micro-batch:"
    )
    for kind, counts in kernel_report(profiler).items():
        for name, count in sorted(counts.items()):
            print(f"  {kind:<10} {name:<60} {count:g}")
    if torch.cuda.is_available():
        print(profiler.key_averages().table(sort_by="self_device_time_total", row_limit=15, max_name_column_width=90))


if __name__ == "__main__":
    main()
