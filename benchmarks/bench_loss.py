"""The model's causal-LM loss against transformers' ForCausalLMLoss: same logits, forward + backward, side by side.

    python benchmarks/bench_loss.py           # about 30 seconds on 2 CPU cores

Logits of the benchmark's training shape (batch 2, 256 tokens, GPT-2's 50257-token vocabulary) in fp32 and bf16;
the two losses alternate, and each one's median time over the rounds is printed with the ratio (above 1.0: ours is
faster) and the largest gradient difference.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers.loss.loss_utils import ForCausalLMLoss

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from modeling_gptscratch import GPT2_VOCAB_SIZE  # noqa: E402
from train.loss import causal_lm_loss  # noqa: E402

BATCH, TOKENS = 2, 256


def time_loss(loss_function, logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Seconds for one forward + backward, and the gradient it produced."""
    leaf = logits.detach().requires_grad_()
    start = time.perf_counter()
    loss_function(leaf, labels, vocab_size=GPT2_VOCAB_SIZE).backward()
    return time.perf_counter() - start, leaf.grad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15, help="alternating timed runs of each loss")
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, GPT2_VOCAB_SIZE, (BATCH, TOKENS), generator=generator)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; logits [{BATCH}, {TOKENS}, "
        f"{GPT2_VOCAB_SIZE}]; median of {args.rounds} alternating runs, forward + backward\n"
    )
    print(f"{'dtype':<8} {'ours ms':>9} {'ForCausalLMLoss ms':>19} {'ratio':>6} {'max grad diff':>14}")
    for dtype in (torch.float32, torch.bfloat16):
        logits = torch.randn(BATCH, TOKENS, GPT2_VOCAB_SIZE, generator=generator).to(dtype)
        times: dict[str, list[float]] = {"ours": [], "theirs": []}
        for _ in range(args.rounds + 1):  # the first round warms up and is not kept
            ours, our_grad = time_loss(causal_lm_loss, logits, labels)
            theirs, their_grad = time_loss(ForCausalLMLoss, logits, labels)
            times["ours"].append(ours)
            times["theirs"].append(theirs)
        ours, theirs = (statistics.median(times[k][1:]) * 1000 for k in ("ours", "theirs"))
        difference = (our_grad.float() - their_grad.float()).abs().max().item()
        print(
            f"{str(dtype).removeprefix('torch.'):<8} {ours:>9.1f} {theirs:>19.1f} {theirs / ours:>6.2f} "
            f"{difference:>14.1e}"
        )


if __name__ == "__main__":
    main()
