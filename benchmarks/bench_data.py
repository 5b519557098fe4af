"""Data preparation at scale: time, throughput and peak memory of preparing corpora of several sizes, and the
training data loader and evaluation against the model's own speed.

    python benchmarks/bench_data.py                      # 100MB, 1GB and 5GB (5GB: 44 minutes on 2 cores)
    python benchmarks/bench_data.py --sizes 20MB,100MB   # quicker

For each size it writes a corpus by repeating ../shared/data/tinyshakespeare.txt (1.1 MB; whole copies, then the
lines of one more that fit), then runs what a user runs, `gptscratch-train --preset tiny --data FILE --tokenizer TOK
--dry-run` (the plan only, after the data is prepared), in a fresh process, sampling the resident memory of that
process and all its children (the tokenising workers) every 50 ms with psutil; then the same command again, which
finds the token files in the cache. Printed: preparation time, MB/s, tokens/s, the peak of the summed resident
memory, the second run's time, and the token files' size.

Then, on the largest corpus's token files: the training loader (the Accelerate loop's shuffled DataLoader over the
memory-mapped windows) against the training step of the tiny preset, both in tokens/s; and evaluation
(`score_token_stream`, no batch's logits) against the training step's forward pass, in alternating rounds. Last,
`gptscratch-eval` on files of --eval-sizes: time, tokens/s and peak resident memory, as for preparation.

    python benchmarks/bench_data.py --versus-tiktoken --sizes 100MB   # the token pass against tiktoken's own

With --versus-tiktoken, for each size and in alternating rounds: tiktoken's bare batch encode of the corpus
(`encode_ordinary_batch` on its text cut into 1 MB pieces, one thread per CPU, GPT-2's encoding as tiktoken builds it
from encoder.json + vocab.bpe; the reading not timed), gptscratch-prepare's token pass (`write_token_files`, after the
first pass, with the workers prepare starts), and the whole `gptscratch-prepare` command with an empty cache. Printed:
each one's median time, and the token pass's and the command's over tiktoken's, pair by pair.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
SOURCE = SHARED_DATA / "tinyshakespeare.txt"


def parse_size(text: str) -> int:
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9}
    for unit, scale in units.items():
        if text.upper().endswith(unit):
            return int(float(text[: -len(unit)]) * scale)
    return int(text)


def write_corpus(path: Path, size: int) -> None:
    """`size` bytes of tinyshakespeare.txt repeated: whole copies, then the lines of one more that fit."""
    source = SOURCE.read_bytes()
    with open(path, "wb") as stream:
        for _ in range(size // len(source)):
            stream.write(source)
        rest = size % len(source)
        stream.write(source[: source.rfind(b"\n", 0, rest) + 1])


def peak_memory_of(command: list[str], env: dict[str, str]) -> tuple[float, int, str]:
    """Runs `command`; returns its wall time, the peak of the resident memory summed over it and its children, and
    its output. Fails on a non-zero exit status."""
    start = time.perf_counter()
    process = psutil.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = 0
    while process.poll() is None:
        total = 0
        try:
            for member in [process, *process.children(recursive=True)]:
                total += member.memory_info().rss
        except psutil.Error:  # a child ended while being read
            pass
        peak = max(peak, total)
        time.sleep(0.05)
    output = process.stdout.read()
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{output[-3000:]}")
    return time.perf_counter() - start, peak, output


def prepare_sizes(sizes: list[int], tokenizer: str, work: Path) -> tuple[Path, Path]:
    """The preparation table; returns the largest corpus's path and its cache."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    print(f"tokenizer {tokenizer}; {os.cpu_count()} CPUs; each size's cache starts empty")
    print(
        f"{'corpus':>8}  {'prepare s':>9}  {'MB/s':>6}  {'tokens/s':>10}  {'peak RSS MB':>11}  "
        f"{'again s':>7}  {'token files':>11}",
        flush=True,
    )
    path = cache = None
    for size in sizes:
        path = work / f"corpus-{size}.txt"
        if not path.exists() or path.stat().st_size > size:
            write_corpus(path, size)
        cache = work / f"cache-{size}"
        shutil.rmtree(cache, ignore_errors=True)
        command = [
            sys.executable,
            "-m",
            "train",
            "--preset",
            "tiny",
            "--data",
            str(path),
            "--tokenizer",
            tokenizer,
            "--cache-dir",
            str(cache),
            "--dry-run",
            "--output-dir",
            str(work / "unused"),
        ]
        seconds, peak, output = peak_memory_of(command, env)
        again, _, _ = peak_memory_of(command, env)
        entry = next((cache / "gptscratch-tokens").iterdir())
        token_bytes = sum(file.stat().st_size for file in entry.glob("*.bin"))
        dtype_size = 2 if "uint16" in (entry / "meta.json").read_text() else 4
        megabytes = path.stat().st_size / 1e6
        print(
            f"{megabytes:>6.0f}MB  {seconds:>9.1f}  {megabytes / seconds:>6.2f}  "
            f"{token_bytes / dtype_size / seconds:>10,.0f}  {peak / 2**20:>11,.0f}  {again:>7.1f}  "
            f"{token_bytes / 1e6:>9.1f}MB",
            flush=True,
        )
    return path, cache


def loader_against_model(path: Path, cache: Path, tokenizer: str, rounds: int) -> None:
    """Tokens/s of the training loader and of the tiny preset's training step; of evaluation and of the step's
    forward pass."""
    import torch
    from torch.utils.data import DataLoader

    sys.path.insert(0, str(REPO_ROOT))
    from modeling_gptscratch import GPTScratchConfig, GPTScratchForCausalLM
    from train.data import prepare_data
    from train.loss import lm_loss, window_logits
    from use.scoring import score_token_stream

    data = prepare_data(
        context_length=256,
        data=[str(path)],
        tokenizer=tokenizer,
        cache_dir=cache,
        progress=False,
        log=lambda message: None,
    )
    batch_size, context = 4, 256  # the tiny preset's defaults
    loader = DataLoader(
        data.train, batch_size=batch_size, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(0)
    )
    torch.manual_seed(0)
    model = GPTScratchForCausalLM(GPTScratchConfig.from_preset("tiny", vocab_size=len(data.tokenizer)))
    optimizer = torch.optim.AdamW(model.parameters())
    batches = iter(loader)

    def loader_rate(count: int = 2000) -> float:
        start = time.perf_counter()
        for _ in range(count):
            next(batches)
        return count * batch_size * context / (time.perf_counter() - start)

    def step_rate(count: int = 5) -> float:
        start = time.perf_counter()
        for _ in range(count):
            inputs, targets = next(batches)
            lm_loss(window_logits(model, inputs, None), targets).backward()
            optimizer.step()
            optimizer.zero_grad()
        return count * batch_size * context / (time.perf_counter() - start)

    def forward_rate(count: int = 5) -> float:
        start = time.perf_counter()
        for _ in range(count):
            inputs, targets = next(batches)
            lm_loss(window_logits(model, inputs, None), targets).item()  # the step's forward pass, gradients on
        return count * batch_size * context / (time.perf_counter() - start)

    def evaluation_rate(count: int = 5) -> float:
        tokens = torch.from_numpy(data.val.tokens[: count * batch_size * context + 1].astype("int64"))
        start = time.perf_counter()
        score_token_stream(model.eval(), [tokens], context, context, batch_size)
        model.train()
        return count * batch_size * context / (time.perf_counter() - start)

    step_rate(2), forward_rate(2), evaluation_rate(1)  # warm-up
    rates: dict[str, list[float]] = {"loader": [], "step": [], "forward": [], "evaluation": []}
    for _ in range(rounds):
        for name, measure in (
            ("loader", loader_rate),
            ("step", step_rate),
            ("evaluation", evaluation_rate),
            ("forward", forward_rate),
        ):
            rates[name].append(measure())
    median = {name: statistics.median(values) for name, values in rates.items()}
    print(
        f"\ntiny preset (vocab {len(data.tokenizer)}), batch {batch_size} x {context}, on {path.name}'s token "
        f"files; median of {rounds} alternating rounds"
    )
    print(f"training loader      {median['loader']:>12,.0f} tokens/s")
    print(f"training step        {median['step']:>12,.0f} tokens/s  (forward, backward, AdamW)")
    print(f"  loader / step      {median['loader'] / median['step']:>12,.0f}x")
    print(f"evaluation           {median['evaluation']:>12,.0f} tokens/s  (score_token_stream, no batch's logits)")
    print(f"training forward     {median['forward']:>12,.0f} tokens/s  (the step's forward pass and loss)")
    ratios = [e / f for e, f in zip(rates["evaluation"], rates["forward"])]
    print(f"  evaluation / forward {statistics.median(ratios):>10.2f}x  (rounds {min(ratios):.2f}-{max(ratios):.2f})")


def evaluation_memory(work: Path, sizes: list[int]) -> None:
    """gptscratch-eval on files of `sizes` bytes: time, tokens/s and the peak of the summed resident memory, with a
    2-layer, 64-dimension model, a 512-token BPE and context 64, batch 16."""
    sys.path.insert(0, str(REPO_ROOT))
    import json

    from common.model_dir import save_model_directory
    from modeling_gptscratch import GPTScratchConfig, GPTScratchForCausalLM
    from train.vocabulary import train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer([SOURCE.read_text(encoding="utf-8")], 512)
    config = GPTScratchConfig(
        vocab_size=len(tokenizer),
        context_length=64,
        emb_dim=64,
        n_heads=4,
        n_layers=2,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )
    model_dir = save_model_directory(GPTScratchForCausalLM(config), tokenizer, work / "eval-model", overwrite=True)
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    print("\ngptscratch-eval --batch-size 16, a 2-layer 64-dimension model, 512-token vocabulary, context 64")
    print(f"{'file':>8}  {'seconds':>7}  {'tokens/s':>9}  {'peak RSS MB':>11}")
    for size in sizes:
        path = work / f"eval-{size}.txt"
        write_corpus(path, size)
        seconds, peak, output = peak_memory_of(
            [
                sys.executable,
                "-m",
                "use.evaluate",
                "--model",
                str(model_dir),
                "--data",
                str(path),
                "--batch-size",
                "16",
                "--json",
            ],
            env,
        )
        tokens = json.loads(output.strip().splitlines()[-1])["tokens"]
        print(f"{size / 1e6:>6.0f}MB  {seconds:>7.1f}  {tokens / seconds:>9,.0f}  {peak / 2**20:>11,.0f}", flush=True)


def versus_tiktoken(sizes: list[int], tokenizer: str, work: Path, rounds: int) -> None:
    """The token pass and gptscratch-prepare against tiktoken's bare batch encode of the same text, in rounds."""
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str

    sys.path.insert(0, str(REPO_ROOT))
    from common.tokenizer import load_tokenizer
    from train.corpus import local_corpus, scan_corpus
    from train.data import PARALLEL_TOKENIZE_MIN_CHARS, write_token_files
    from train.token_files import EntryBuilder
    from train.tokenizing import safe_pieces, token_dtype

    bpe = Path(tokenizer)
    if not (bpe / "encoder.json").is_file():
        raise SystemExit(f"--versus-tiktoken needs --tokenizer DIR with encoder.json + vocab.bpe, not {tokenizer}")
    ranks = data_gym_to_mergeable_bpe_ranks(str(bpe / "vocab.bpe"), str(bpe / "encoder.json"))
    encoding = tiktoken.Encoding("gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks, special_tokens={})
    hf_tokenizer = load_tokenizer(bpe)
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    cpus = os.cpu_count()
    print(f"GPT-2's BPE; {cpus} CPUs; median of {rounds} alternating rounds; ratios pair by pair")
    print(
        f"{'corpus':>8}  {'tiktoken s':>10}  {'token pass s':>12}  {'pass/tiktoken':>13}  {'prepare s':>9}  "
        f"{'prepare/tiktoken':>16}  {'tokenised by':<12}",
        flush=True,
    )
    for size in sizes:
        path = work / f"corpus-{size}.txt"
        if not path.exists() or path.stat().st_size > size:
            write_corpus(path, size)
        corpus = local_corpus([str(path)])
        scan = scan_corpus(corpus, progress=False)
        pieces = list(safe_pieces(path.read_text(encoding="utf-8"), 1 << 20))
        num_proc = cpus if scan.characters >= PARALLEL_TOKENIZE_MIN_CHARS else 1
        times: dict[str, list[float]] = {"tiktoken": [], "pass": [], "prepare": []}
        for round_index in range(rounds):
            start = time.perf_counter()
            bare_tokens = sum(map(len, encoding.encode_ordinary_batch(pieces, num_threads=cpus)))
            times["tiktoken"].append(time.perf_counter() - start)

            cache = work / f"pass-{size}-{round_index}"
            start = time.perf_counter()
            with EntryBuilder(cache, "entry", token_dtype(len(hf_tokenizer))) as builder:
                library = write_token_files(corpus, scan, hf_tokenizer, 0.9, num_proc, builder, progress=False)
                entry = builder.finish({})
            times["pass"].append(time.perf_counter() - start)
            if abs(sum(entry.meta["tokens"].values()) - bare_tokens) > 2:  # the split may cut a word in two
                raise SystemExit(f"the token pass gave {entry.meta['tokens']} tokens, tiktoken {bare_tokens}")
            shutil.rmtree(cache)

            command = [sys.executable, "-m", "train.prepare", "--data", str(path), "--tokenizer", tokenizer]
            command += ["--cache-dir", str(work / f"prepare-{size}")]
            times["prepare"].append(peak_memory_of(command, env)[0])
            shutil.rmtree(work / f"prepare-{size}")
        median = {name: statistics.median(values) for name, values in times.items()}
        ratio = {name: statistics.median(a / b for a, b in zip(times[name], times["tiktoken"])) for name in times}
        print(
            f"{size / 1e6:>6.0f}MB  {median['tiktoken']:>10.2f}  {median['pass']:>12.2f}  {ratio['pass']:>12.2f}x  "
            f"{median['prepare']:>9.2f}  {ratio['prepare']:>15.2f}x  {library:<12}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100MB,1GB,5GB", help="corpus sizes, comma-separated (e.g. 20MB,1GB)")
    default_tokenizer = str(SHARED_DATA / "gpt2-bpe") if (SHARED_DATA / "gpt2-bpe").is_dir() else "train"
    parser.add_argument("--tokenizer", default=default_tokenizer, help="as gptscratch-train's --tokenizer")
    parser.add_argument(
        "--work-dir",
        default=None,
        help="where corpora and caches go (default: a temporary directory, removed at the end)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the loader and evaluation measurements")
    parser.add_argument(
        "--eval-sizes", default="2MB,10MB", help="file sizes for gptscratch-eval's memory ('' for none)"
    )
    parser.add_argument(
        "--versus-tiktoken",
        action="store_true",
        help="only time the token pass and gptscratch-prepare against tiktoken's bare batch encode (--sizes, --rounds)",
    )
    args = parser.parse_args()
    if not SOURCE.is_file():
        raise SystemExit(f"{SOURCE} is absent: the corpora are made by repeating it")
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="gptscratch-bench-data-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if args.versus_tiktoken:
            versus_tiktoken([parse_size(size) for size in args.sizes.split(",")], args.tokenizer, work, args.rounds)
            return
        largest, cache = prepare_sizes([parse_size(size) for size in args.sizes.split(",")], args.tokenizer, work)
        loader_against_model(largest, cache, args.tokenizer, args.rounds)
        if args.eval_sizes:
            evaluation_memory(work, [parse_size(size) for size in args.eval_sizes.split(",")])
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
