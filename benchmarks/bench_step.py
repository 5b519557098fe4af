"""Where a training step of the tiny preset spends its time: dropout inside attention or outside it, AdamW or Muon.

    python benchmarks/bench_step.py [--rounds 6] [--steps 5]

The step is gptscratch-train's (the tiny preset with its 4,096-token tokenizer, batch 4 x 256, the package's loss
and optimizer builder), under four settings: no dropout; the book's drop_rate 0.1 everywhere, attention weights
included; 0.1 everywhere but on the attention weights (`attention_dropout=0`, what gptscratch-train trains with);
that default with `--optimizer muon`. Each run is one setting alone in a fresh process: warm-up steps, then the
medians of the timed steps (the whole step, and its forward + backward and optimizer parts), and the attention
kernel `scaled_dot_product_attention` ran (read from the profiler). A round runs every setting, the order rotating
between rounds; the table gives each setting's median over the rounds and the range of its per-round ratio to the
training default, this machine's noise.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
SETTINGS = {  # name: (drop_rate, attention_dropout, optimizer)
    "no dropout": (0.0, 0.0, "adamw"),
    "book: 0.1, attention too": (0.1, None, "adamw"),
    "0.1, attention 0 (default)": (0.1, 0.0, "adamw"),
    "default, --optimizer muon": (0.1, 0.0, "muon"),
}
DEFAULT = "0.1, attention 0 (default)"
BATCH, WINDOW, VOCAB = 4, 256, 4096


def worker(setting: str, steps: int, warmup: int) -> dict:
    """One setting in this fresh process: seconds per step and per part (medians), the attention kernels seen."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from modeling_gptscratch import GPTScratchConfig, GPTScratchForCausalLM
    from train.book import lm_loss, window_logits
    from train.optimization import build_optimizer
    from train.options import TrainOptions

    drop_rate, attention_dropout, optimizer_name = SETTINGS[setting]
    torch.manual_seed(0)
    config = GPTScratchConfig.from_preset("tiny", vocab_size=VOCAB, drop_rate=drop_rate,
                                          attention_dropout=attention_dropout)
    model = GPTScratchForCausalLM(config).train()
    optimizer = build_optimizer(model, TrainOptions(output_dir="unused", optimizer=optimizer_name))
    ids = torch.randint(0, VOCAB, (BATCH, WINDOW + 1), generator=torch.Generator().manual_seed(0))

    def step() -> tuple[float, float]:
        start = time.perf_counter()
        lm_loss(window_logits(model, ids[:, :-1], None), ids[:, 1:]).backward()
        middle = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return middle - start, time.perf_counter() - middle

    for _ in range(warmup):
        step()
    parts = [step() for _ in range(steps)]
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        step()
    kernels = sorted({event.key for event in profiler.key_averages()
                      if "scaled_dot_product" in event.key and "backward" not in event.key} - {
        "aten::scaled_dot_product_attention"})
    return {"seconds_per_step": statistics.median(forward + update for forward, update in parts),
            "forward_backward": statistics.median(forward for forward, _ in parts),
            "optimizer": statistics.median(update for _, update in parts), "kernels": kernels}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", choices=list(SETTINGS), help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=6, help="rounds of one run per setting, the order rotating")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before timing")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.steps, args.warmup)))
        return

    names = list(SETTINGS)
    rounds = []
    for index in range(args.rounds):
        order = names[index % len(names):] + names[:index % len(names)]
        results = {}
        for name in order:
            command = [sys.executable, __file__, "--worker", name, "--steps", str(args.steps),
                       "--warmup", str(args.warmup)]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            results[name] = json.loads(output.strip().splitlines()[-1])
        rounds.append(results)
        print(f"round {index + 1}: " + ", ".join(f"{name} {results[name]['seconds_per_step']:.3f} s"
                                                 for name in names), flush=True)

    print(f"\ntiny preset, batch {BATCH} x {WINDOW}, vocab {VOCAB}; {os.cpu_count()} CPU cores, "
          f"threads: {torch_threads()}; median of {args.rounds} rounds, one fresh process per setting per round\n")
    print(f"{'setting':<27} {'s/step':>7} {'fwd+bwd':>8} {'optim':>7} {'x default':>10} {'rounds':>11}  "
          "attention kernel")
    for name in names:
        medians = {key: statistics.median(r[name][key] for r in rounds)
                   for key in ("seconds_per_step", "forward_backward", "optimizer")}
        ratios = [r[name]["seconds_per_step"] / r[DEFAULT]["seconds_per_step"] for r in rounds]
        kernel = ", ".join(rounds[0][name]["kernels"]).replace("aten::", "")
        print(f"{name:<27} {medians['seconds_per_step']:>7.3f} {medians['forward_backward']:>8.3f} "
              f"{medians['optimizer']:>7.3f} {statistics.median(ratios):>10.2f} "
              f"{min(ratios):>5.2f}-{max(ratios):.2f}  {kernel}")


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    main()
