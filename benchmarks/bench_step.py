"""Where a training step of the tiny preset spends its time: dropout inside attention or outside it, AdamW or Muon.

    python benchmarks/bench_step.py [--rounds 10] [--settings all|dropout]

The step is gptscratch-train's (the tiny preset at 6 layers with a 4,096-token vocabulary, batch 4 x 256, the package's
loss and optimizer builder), under five settings: no dropout with AdamW; the book's drop_rate 0.1 everywhere, attention
weights included; 0.1 everywhere but on the attention weights (`--dropout 0.1`, which leaves `attention_dropout` at
0), the reference of the ratios; no dropout with Muon (gptscratch-train's default: on a CPU, its Newton-Schulz
iteration in float32); and that with torch's own Muon step, whose Newton-Schulz iteration is bf16, which CPUs
without native bf16 emulate (`--settings dropout` leaves both Muon settings out).

All settings live in one process and take turns: a round times one step of each, in an order that rotates, so the
steps compared are seconds apart and a busy machine slows them alike. The table gives each setting's median step
(and its forward + backward and optimizer parts), the median and range of its per-round ratio to the reference, and
the attention kernel `scaled_dot_product_attention` ran (read from the profiler).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from modeling_gptscratch import GPTScratchConfig, GPTScratchForCausalLM  # noqa: E402
from train.loss import lm_loss, window_logits  # noqa: E402
from train.optimization import build_optimizer  # noqa: E402
from train.options import OptimisationOptions  # noqa: E402

SETTINGS = {  # name: (drop_rate, attention_dropout, optimizer); "muon-bf16": torch's own Muon step
    "no dropout, adamw": (0.0, 0.0, "adamw"),
    "book: 0.1, attention too": (0.1, None, "adamw"),
    "--dropout 0.1 (attention 0)": (0.1, 0.0, "adamw"),
    "no dropout, muon (default)": (0.0, 0.0, "muon"),
    "no dropout, muon in bf16": (0.0, 0.0, "muon-bf16"),
}
REFERENCE = "--dropout 0.1 (attention 0)"
# The shape the README's figures were measured on: the tiny preset before the defaults were tuned (6 x 192).
BATCH, WINDOW, VOCAB, LAYERS, WIDTH, HEADS = 4, 256, 4096, 6, 192, 6


class Setting:
    """One setting's model, optimizer and batch; `step()` trains one step and returns its (forward + backward,
    optimizer) seconds."""

    def __init__(self, name: str):
        drop_rate, attention_dropout, self.optimizer_name = SETTINGS[name]
        torch.manual_seed(0)
        config = GPTScratchConfig.from_preset(
            "tiny",
            n_layers=LAYERS,
            emb_dim=WIDTH,
            n_heads=HEADS,
            vocab_size=VOCAB,
            drop_rate=drop_rate,
            attention_dropout=attention_dropout,
        )
        self.model = GPTScratchForCausalLM(config).train()
        self.optimizer = build_optimizer(
            self.model, OptimisationOptions(optimizer=self.optimizer_name.removesuffix("-bf16"))
        )
        self.ids = torch.randint(0, VOCAB, (BATCH, WINDOW + 1), generator=torch.Generator().manual_seed(0))

    def step(self) -> tuple[float, float]:
        start = time.perf_counter()
        lm_loss(window_logits(self.model, self.ids[:, :-1], None), self.ids[:, 1:]).backward()
        middle = time.perf_counter()
        if self.optimizer_name == "muon-bf16":  # the two optimizers MuonWithAdamW holds, stepped as torch has them
            self.optimizer.adamw.step()
            self.optimizer.muon.step()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return middle - start, time.perf_counter() - middle

    def attention_kernels(self) -> list[str]:
        with profile(activities=[ProfilerActivity.CPU]) as profiler:
            self.step()
        return sorted(
            {
                event.key.removeprefix("aten::")
                for event in profiler.key_averages()
                if "scaled_dot_product" in event.key and "backward" not in event.key
            }
            - {"scaled_dot_product_attention"}
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds: one step of each setting")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps of each setting first")
    parser.add_argument(
        "--settings",
        choices=["all", "dropout"],
        default="all",
        help="dropout: the three dropout settings, without Muon",
    )
    args = parser.parse_args()
    names = [name for name in SETTINGS if args.settings == "all" or SETTINGS[name][2] == "adamw"]
    settings = {name: Setting(name) for name in names}
    for setting in settings.values():
        for _ in range(args.warmup):
            setting.step()
    rounds = []
    for index in range(args.rounds):
        order = names[index % len(names) :] + names[: index % len(names)]
        rounds.append({name: settings[name].step() for name in order})

    print(
        f"tiny preset, batch {BATCH} x {WINDOW}, vocab {VOCAB}; {os.cpu_count()} CPU cores, threads: "
        f"{torch.get_num_threads()}; {args.rounds} rounds, each one step of every setting, the order rotating\n"
    )
    print(f"{'setting':<27} {'s/step':>7} {'fwd+bwd':>8} {'optim':>7} {'x ref':>10} {'rounds':>11}  attention kernel")
    for name in names:
        steps = [sum(r[name]) for r in rounds]
        ratios = [sum(r[name]) / sum(r[REFERENCE]) for r in rounds]
        print(
            f"{name:<27} {statistics.median(steps):>7.3f} {statistics.median(r[name][0] for r in rounds):>8.3f} "
            f"{statistics.median(r[name][1] for r in rounds):>7.3f} {statistics.median(ratios):>10.2f} "
            f"{min(ratios):>5.2f}-{max(ratios):.2f}  {', '.join(settings[name].attention_kernels())}"
        )


if __name__ == "__main__":
    main()
