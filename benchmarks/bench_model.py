"""GPTScratchForCausalLM against transformers' GPT2LMHeadModel: same shapes, same precision, side by side.

    python benchmarks/bench_model.py                  # CPU: fp32 and bf16 autocast; about 13 minutes on 2 cores
    python benchmarks/bench_model.py --compile        # add torch.compile (worth it on a GPU)
    python benchmarks/bench_model.py --compile --precisions bf16 --tasks train --batch-size 16 --seq-len 1024
                                                      # training at a size that fills a GPU

Prints, for each case, both models' figures and their ratio (ours / GPT2LMHeadModel; above 1.0 means ours is
faster, below 1.0 that ours needs less memory): training-step tokens/s and peak memory (124M shape and the old
6 x 192 tiny preset, by default at batch 2 x 256 tokens: `--batch-size`, `--seq-len`), greedy generation tokens/s
(batch 1, 16-token prompt, 200 new tokens), time per new token near positions 50 and 900 inside each model's own
`generate` (flat with the KV cache), and the model FLOPs utilisation against this machine's own measured matmul peak.
`--tasks` picks among train, generate and per-token.

Each run is one model alone in a fresh process, as a user runs it (so peak memory is that model's own: peak RSS
growth on CPU, torch.cuda.max_memory_allocated on a GPU). A round runs both models, ours first in one round and
theirs first in the next; each figure is a model's median over the rounds (a training run's figure is its median
step), and the last column gives the range of the per-round ratios, this machine's noise.
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
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
SHAPES = {
    "124m": dict(context_length=1024, emb_dim=768, n_heads=12, n_layers=12, vocab_size=50257),
    "tiny": dict(context_length=256, emb_dim=192, n_heads=6, n_layers=6, vocab_size=50257),
}
IMPLS = ("ours", "gpt2")
TASKS = ("train", "generate", "per-token")
PROMPT_TOKENS, NEW_TOKENS = 16, 200
TIMED_STEPS = 20  # decoding steps timed at each position


# --- worker: one measurement in a fresh process, JSON on stdout -----------------------------------------------------


def shape_config(shape: str, seq_len: int) -> dict:
    """The shape's sizes, its context stretched to `seq_len` where that is longer."""
    return {**SHAPES[shape], "context_length": max(SHAPES[shape]["context_length"], seq_len)}


def build_model(impl: str, shape: str, drop_rate: float, seq_len: int):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from modeling_gptscratch import GPTScratchConfig, GPTScratchForCausalLM

    s = shape_config(shape, seq_len)
    torch.manual_seed(0)
    if impl == "ours":
        config = GPTScratchConfig(**s, drop_rate=drop_rate, qkv_bias=True, bos_token_id=None, eos_token_id=None)
        return GPTScratchForCausalLM(config)
    config = GPT2Config(
        vocab_size=s["vocab_size"],
        n_positions=s["context_length"],
        n_embd=s["emb_dim"],
        n_layer=s["n_layers"],
        n_head=s["n_heads"],
        resid_pdrop=drop_rate,
        embd_pdrop=drop_rate,
        attn_pdrop=drop_rate,
        bos_token_id=None,
        eos_token_id=None,
        attn_implementation="sdpa",
    )
    return GPT2LMHeadModel(config)


class TokenClock:
    """A streamer for `generate` that notes the time each put() arrives: the prompt, then one per new token."""

    def __init__(self):
        self.arrivals: list[float] = []

    def put(self, value) -> None:  # generate hands over the tokens on the CPU, so the step has finished here
        self.arrivals.append(time.perf_counter())

    def end(self) -> None:
        pass


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def synchronize(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def training_step(model, device: str, autocast, batch_size: int, seq_len: int) -> Callable[[], None]:
    """One AdamW step (dropout on) on a fixed random batch of `batch_size` x `seq_len` tokens."""
    import torch

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (batch_size, seq_len), generator=torch.Generator().manual_seed(0)).to(device)

    def step() -> None:
        with autocast:
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def generation_options(impl: str, **options) -> dict:
    if impl == "gpt2":
        options["pad_token_id"] = 0  # GPT-2's config has none; without it generate warns on every call
    return {"do_sample": False, **options}


def worker(args: argparse.Namespace) -> dict:
    """One model alone in this fresh process: warm-up, then the timed task; peak memory for training."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=args.precision == "bf16")
    baseline = current_rss_bytes()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model = build_model(args.impl, args.shape, 0.1 if args.task == "train" else 0.0, args.seq_len).to(device)
    if args.compile:
        model.forward = torch.compile(model.forward)
    vocab = SHAPES[args.shape]["vocab_size"]
    generator = torch.Generator().manual_seed(0)

    if args.task == "train":
        step = training_step(model, device, autocast, args.batch_size, args.seq_len)
        for _ in range(args.warmup):
            step()
        # A tiny step is about 6x shorter than a 124M one: time 5x as many, so both runs last seconds.
        seconds = []
        for _ in range(args.steps * (5 if args.shape == "tiny" else 1)):
            synchronize(device)
            start = time.perf_counter()
            step()
            synchronize(device)
            seconds.append(time.perf_counter() - start)
        result = {"tokens_per_s": args.batch_size * args.seq_len / statistics.median(seconds)}
        if device == "cuda":
            result["peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
        else:
            result["peak_memory_mb"] = (peak_rss_bytes() - baseline) / 2**20
        return result

    model.eval()
    if args.task == "generate":
        prompt = torch.randint(0, vocab, (1, PROMPT_TOKENS), generator=generator).to(device)
        with torch.no_grad(), autocast:
            model.generate(prompt, **generation_options(args.impl, max_new_tokens=8))
            synchronize(device)
            start = time.perf_counter()
            out = model.generate(prompt, **generation_options(args.impl, max_new_tokens=NEW_TOKENS))
            synchronize(device)
        assert out.shape[1] == PROMPT_TOKENS + NEW_TOKENS, out.shape
        return {"tokens_per_s": NEW_TOKENS / (time.perf_counter() - start)}

    result = {}  # per-token: a streamer notes when each new token arrives
    for position in (50, 900):
        prompt = torch.randint(0, vocab, (1, position), generator=generator).to(device)
        with torch.no_grad(), autocast:
            model.generate(prompt, **generation_options(args.impl, max_new_tokens=2))  # warm-up at this length
            clock = TokenClock()
            model.generate(prompt, **generation_options(args.impl, max_new_tokens=TIMED_STEPS + 1, streamer=clock))
        # arrivals: the prompt, the first new token (after the prompt's forward pass), then one per step
        steps = [later - earlier for earlier, later in zip(clock.arrivals[1:], clock.arrivals[2:])]
        result[f"ms_per_token_at_{position}"] = 1000 * statistics.median(steps)
    return result


def training_flops_per_token(shape: str, seq_len: int) -> float:
    """The training runs' count (train.plan): 6 FLOPs per weight that multiplies per token, plus attention."""
    from modeling_gptscratch import GPTScratchConfig
    from train.plan import training_flops_per_token as flops_per_token

    return flops_per_token(GPTScratchConfig(**shape_config(shape, seq_len)), seq_len)


def matmul_peak_flops(precision: str) -> float:
    """This machine's own matmul throughput (FLOP/s) at the benchmark's precision, as training runs measure it."""
    import torch

    from train.plan import measure_matmul_flops

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return measure_matmul_flops(device, torch.bfloat16 if precision == "bf16" else torch.float32, seconds=0.5)


# --- orchestrator ----------------------------------------------------------------------------------------------------


def measure(args: argparse.Namespace, task: str, shape: str, precision: str) -> list[dict[str, dict]]:
    """`args.rounds` rounds, each one fresh process per model, the order alternating; [{impl: result}] per round."""
    rounds = []
    for index in range(args.rounds):
        results = {}
        for impl in IMPLS if index % 2 == 0 else IMPLS[::-1]:
            command = [
                sys.executable,
                __file__,
                "--worker",
                "--task",
                task,
                "--impl",
                impl,
                "--shape",
                shape,
                "--precision",
                precision,
                "--steps",
                str(args.steps),
                "--warmup",
                str(args.warmup),
                "--batch-size",
                str(args.batch_size),
                "--seq-len",
                str(args.seq_len),
            ]
            if args.compile:
                command.append("--compile")
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            results[impl] = json.loads(output.strip().splitlines()[-1])
        rounds.append(results)
    return rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--task", choices=["train", "generate", "per-token"], help=argparse.SUPPRESS)
    parser.add_argument("--impl", choices=IMPLS, help=argparse.SUPPRESS)
    parser.add_argument("--shape", choices=list(SHAPES), help=argparse.SUPPRESS)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=4, help="rounds of one run per model, the order alternating")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per run (tiny: 5x)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed training steps before timing")
    parser.add_argument("--precisions", default="fp32,bf16", help="comma-separated: fp32, bf16 (autocast)")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated: {', '.join(TASKS)}")
    parser.add_argument("--batch-size", type=int, default=2, help="training batch size")
    parser.add_argument("--seq-len", type=int, default=256, help="training tokens per sequence")
    args = parser.parse_args()
    tasks = args.tasks.split(",")
    if not set(tasks) <= set(TASKS):
        parser.error(f"--tasks {args.tasks}: choose from {', '.join(TASKS)}")
    if args.worker:
        print(json.dumps(worker(args)))
        return

    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    print(
        f"device: {device}; torch {torch.__version__}; python {platform.python_version()}; "
        f"compile: {args.compile}; training batch {args.batch_size} x {args.seq_len}; median of {args.rounds} "
        "rounds, one fresh process per model per round\n"
    )
    print(f"{'case':<40} {'ours':>12} {'GPT2LMHead':>12} {'ratio':>7}  {'rounds':>11}")

    def row(case: str, ours: float, theirs: float, digits: int = 1, spread: list[float] | None = None) -> None:
        line = f"{case:<40} {ours:>12.{digits}f} {theirs:>12.{digits}f} {ours / theirs:>7.2f}"
        if spread:
            line += f"  {min(spread):>5.2f}-{max(spread):.2f}"
        print(line, flush=True)

    def speed_rows(case: str, rounds: list[dict], key: str, digits: int = 1) -> dict[str, float]:
        medians = {impl: statistics.median(r[impl][key] for r in rounds) for impl in IMPLS}
        row(case, medians["ours"], medians["gpt2"], digits, [r["ours"][key] / r["gpt2"][key] for r in rounds])
        return medians

    for precision in args.precisions.split(","):
        peak = matmul_peak_flops(precision)
        print(f"-- {precision}: measured matmul peak {peak / 1e9:.1f} GFLOP/s")
        for shape in ("124m", "tiny") if "train" in tasks else ():
            rounds = measure(args, "train", shape, precision)
            medians = speed_rows(f"train {shape} {precision} tokens/s", rounds, "tokens_per_s")
            memory = {impl: statistics.median(r[impl]["peak_memory_mb"] for r in rounds) for impl in IMPLS}
            row(f"train {shape} {precision} peak memory MB", memory["ours"], memory["gpt2"], 0)
            mfu = [medians[impl] * training_flops_per_token(shape, args.seq_len) / peak * 100 for impl in IMPLS]
            row(f"train {shape} {precision} MFU %", mfu[0], mfu[1])
        if "generate" in tasks:
            rounds = measure(args, "generate", "124m", precision)
            speed_rows(f"generate 124m {precision} tokens/s", rounds, "tokens_per_s")
        if "per-token" in tasks:
            rounds = measure(args, "per-token", "124m", precision)
            at = {
                p: speed_rows(f"124m {precision} ms/token at position {p}", rounds, f"ms_per_token_at_{p}", 2)
                for p in (50, 900)
            }
            print(f"   ours: time per token at 900 / at 50 = {at[900]['ours'] / at[50]['ours']:.2f} (1.0 = flat)")
    print(
        "\nratio = ours / GPT2LMHeadModel (for tokens/s and MFU higher is better; for memory and ms lower is);"
        "\nrounds = the lowest and highest per-round ratio"
    )


if __name__ == "__main__":
    main()
