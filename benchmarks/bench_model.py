"""GPTScratchForCausalLM against transformers' GPT2LMHeadModel: same shapes, same precision, side by side.

    python benchmarks/bench_model.py                  # CPU: fp32 and bf16 autocast; about 6 minutes on 2 cores
    python benchmarks/bench_model.py --compile        # add torch.compile (worth it on a GPU)

Prints, for each case, both models' figures and their ratio (ours / GPT2LMHeadModel; above 1.0 means ours is
faster, below 1.0 that ours needs less memory): training-step tokens/s and peak memory (124M shape at context 256,
batch 2, and the tiny preset), greedy generation tokens/s (batch 1, 16-token prompt, 200 new tokens), time per new
token near positions 50 and 900 inside each model's own `generate` (flat with the KV cache), and the model FLOPs
utilisation against this machine's own measured matmul peak. Each measurement runs in a fresh subprocess, so peak
memory is that model's alone (peak RSS growth on CPU, torch.cuda.max_memory_allocated on a GPU). Runs alternate
ours / theirs and keep the best.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SHAPES = {
    "124m": dict(context_length=1024, emb_dim=768, n_heads=12, n_layers=12, vocab_size=50257),
    "tiny": dict(context_length=256, emb_dim=192, n_heads=6, n_layers=6, vocab_size=50257),
}
TRAIN_SEQ, TRAIN_BATCH = 256, 2
PROMPT_TOKENS, NEW_TOKENS = 16, 200
TIMED_STEPS = 20  # decoding steps timed at each position


# --- worker: one model, one measurement, JSON on stdout -------------------------------------------------------------


def build_model(impl: str, shape: str, drop_rate: float):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    sys.path.insert(0, str(REPO_ROOT))
    from modeling_gptscratch import GPTScratchConfig, GPTScratchForCausalLM

    s = SHAPES[shape]
    torch.manual_seed(0)
    if impl == "ours":
        config = GPTScratchConfig(**s, drop_rate=drop_rate, qkv_bias=True, bos_token_id=None, eos_token_id=None)
        return GPTScratchForCausalLM(config)
    config = GPT2Config(
        vocab_size=s["vocab_size"], n_positions=s["context_length"], n_embd=s["emb_dim"], n_layer=s["n_layers"],
        n_head=s["n_heads"], resid_pdrop=drop_rate, embd_pdrop=drop_rate, attn_pdrop=drop_rate,
        bos_token_id=None, eos_token_id=None, attn_implementation="sdpa",
    )
    return GPT2LMHeadModel(config)


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


class TokenClock:
    """A streamer for `generate` that notes the time each put() arrives: the prompt, then one per new token."""

    def __init__(self):
        self.arrivals: list[float] = []

    def put(self, value) -> None:  # generate hands over the tokens on the CPU, so the step has finished here
        self.arrivals.append(time.perf_counter())

    def end(self) -> None:
        pass


def synchronize(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def worker(args: argparse.Namespace) -> dict:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=args.precision == "bf16")
    baseline = current_rss_bytes()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model = build_model(args.impl, args.shape, drop_rate=0.1 if args.worker == "train" else 0.0).to(device)
    if args.compile:
        model.forward = torch.compile(model.forward)
    vocab = SHAPES[args.shape]["vocab_size"]
    generator = torch.Generator().manual_seed(0)
    result: dict = {"impl": args.impl}

    if args.worker == "train":
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
        ids = torch.randint(0, vocab, (TRAIN_BATCH, TRAIN_SEQ), generator=generator).to(device)

        def step():
            with autocast:
                loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        # A tiny step is about 5x shorter than a 124M one: time 5x as many, so both measurements last seconds.
        steps = args.steps * (5 if args.shape == "tiny" else 1)
        for _ in range(args.warmup):
            step()
        synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        synchronize(device)
        seconds = (time.perf_counter() - start) / steps
        result["tokens_per_s"] = TRAIN_BATCH * TRAIN_SEQ / seconds
        with torch.device("meta"):
            params = build_model(args.impl, args.shape, 0.0).num_parameters()
        s = SHAPES[args.shape]
        # nanoGPT's estimate: 6 FLOPs per weight per token (the position table does no matmul), plus attention.
        weights = params - s["context_length"] * s["emb_dim"]
        result["flops_per_token"] = 6 * weights + 12 * s["n_layers"] * s["emb_dim"] * TRAIN_SEQ
    elif args.worker == "generate":
        model.eval()
        prompt = torch.randint(0, vocab, (1, PROMPT_TOKENS), generator=generator).to(device)
        options = dict(max_new_tokens=NEW_TOKENS, do_sample=False)
        if args.impl == "gpt2":
            options["pad_token_id"] = 0
        with torch.no_grad(), autocast:
            model.generate(prompt, **{**options, "max_new_tokens": 8})
            synchronize(device)
            start = time.perf_counter()
            out = model.generate(prompt, **options)
            synchronize(device)
        assert out.shape[1] == PROMPT_TOKENS + NEW_TOKENS, out.shape
        result["tokens_per_s"] = NEW_TOKENS / (time.perf_counter() - start)
    else:  # per-token time at a position: each model's own generate, a streamer noting when each token arrives
        model.eval()
        for position in (50, 900):
            prompt = torch.randint(0, vocab, (1, position), generator=generator).to(device)
            clock = TokenClock()
            options = dict(max_new_tokens=TIMED_STEPS + 1, do_sample=False, streamer=clock)
            if args.impl == "gpt2":
                options["pad_token_id"] = 0
            with torch.no_grad(), autocast:
                model.generate(prompt, **options)
            # arrivals: the prompt, the first new token (after the prompt's forward pass), then one per step
            steps = [later - earlier for earlier, later in zip(clock.arrivals[1:], clock.arrivals[2:])]
            result[f"ms_per_token_at_{position}"] = 1000 * statistics.median(steps)

    if device == "cuda":
        result["peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        result["peak_memory_mb"] = (peak_rss_bytes() - baseline) / 2**20
    return result


def matmul_peak_flops(precision: str) -> float:
    """This machine's own matmul throughput (FLOP/s) at the benchmark's precision: the MFU denominator."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    n = 4096 if device == "cuda" else 2048
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    synchronize(device)
    reps = 50 if device == "cuda" else 5
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    synchronize(device)
    return 2 * n**3 * reps / (time.perf_counter() - start)


# --- orchestrator ----------------------------------------------------------------------------------------------------


def measure(task: str, shape: str, precision: str, args: argparse.Namespace) -> dict[str, dict]:
    """Runs ours and GPT2LMHeadModel alternately `args.repeats` times; keeps each one's best run."""
    best: dict[str, dict] = {}
    for _ in range(args.repeats):
        for impl in ("ours", "gpt2"):
            command = [sys.executable, __file__, "--worker", task, "--impl", impl, "--shape", shape,
                       "--precision", precision, "--steps", str(args.steps), "--warmup", str(args.warmup)]
            if args.compile:
                command.append("--compile")
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            run = json.loads(output.strip().splitlines()[-1])
            key = "tokens_per_s" if "tokens_per_s" in run else "ms_per_token_at_900"
            better = (lambda a, b: a > b) if key == "tokens_per_s" else (lambda a, b: a < b)
            if impl not in best or better(run[key], best[impl][key]):
                best[impl] = run
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", choices=["train", "generate", "per-token"], help=argparse.SUPPRESS)
    parser.add_argument("--impl", choices=["ours", "gpt2"], help=argparse.SUPPRESS)
    parser.add_argument("--shape", choices=list(SHAPES), help=argparse.SUPPRESS)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per measurement (tiny: 5x)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before timing")
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs per model; the best is kept")
    parser.add_argument("--precisions", default="fp32,bf16", help="comma-separated: fp32, bf16 (autocast)")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return

    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    print(f"device: {device}; torch {torch.__version__}; python {platform.python_version()}; "
          f"compile: {args.compile}; best of {args.repeats} alternating runs\n")
    header = f"{'case':<40} {'ours':>12} {'GPT2LMHead':>12} {'ratio':>7}"
    rows = []

    def row(case: str, ours: float, theirs: float, unit: str, digits: int = 1) -> None:
        line = f"{case:<40} {ours:>10.{digits}f}{unit:>2} {theirs:>10.{digits}f}{unit:>2} {ours / theirs:>7.2f}"
        rows.append(line)
        print(line, flush=True)

    print(header)
    for precision in args.precisions.split(","):
        peak = matmul_peak_flops(precision)
        print(f"-- {precision}: measured matmul peak {peak / 1e9:.1f} GFLOP/s")
        for shape in ("124m", "tiny"):
            best = measure("train", shape, precision, args)
            ours, theirs = best["ours"], best["gpt2"]
            row(f"train {shape} {precision} tokens/s", ours["tokens_per_s"], theirs["tokens_per_s"], "")
            row(f"train {shape} {precision} peak memory MB", ours["peak_memory_mb"], theirs["peak_memory_mb"], "", 0)
            mfu = [r["tokens_per_s"] * r["flops_per_token"] / peak * 100 for r in (ours, theirs)]
            row(f"train {shape} {precision} MFU %", mfu[0], mfu[1], "")
        best = measure("generate", "124m", precision, args)
        row(f"generate 124m {precision} tokens/s", best["ours"]["tokens_per_s"], best["gpt2"]["tokens_per_s"], "")
        best = measure("per-token", "124m", precision, args)
        for position in (50, 900):
            key = f"ms_per_token_at_{position}"
            row(f"124m {precision} ms/token at position {position}", best["ours"][key], best["gpt2"][key], "", 2)
        flat = best["ours"]["ms_per_token_at_900"] / best["ours"]["ms_per_token_at_50"]
        print(f"   ours: time per token at 900 / at 50 = {flat:.2f} (1.0 = flat)")
    print("\nratio = ours / GPT2LMHeadModel (for tokens/s and MFU higher is better; for memory and ms lower is)")


if __name__ == "__main__":
    main()
