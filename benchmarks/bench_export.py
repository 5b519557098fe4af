"""What each export of a model costs and how closely its program computes the model: gptscratch-export's formats
run by their own clients on held-out text.

    python benchmarks/bench_export.py --model runs/demo          # a trained model directory (make demo)
    python benchmarks/bench_export.py --preset gpt2-124m --tokenizer ../shared/data/gpt2-bpe   # sizes and times
                                                                  # of GPT-2's shape (random weights)

For each format and dtype: the export's time and size, then, against the model's own logits on windows of text
(`--windows` of the model's whole context, from Python's documentation, pydoc's topics, what `make demo` trains on):
transformers' GGUF loader, llama.cpp (llama-cpp-python; skipped where it is not installed) and ONNX Runtime (a
prefill of half the window, then the rest one token at a time through the KV cache). Each row gives the largest
|logit difference|, that difference relative to the largest |logit|, and the share of positions whose top token
agrees. Last, llama.cpp's tokenization against the model directory's on every text (`<|endoftext|>` included).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common.files import format_size  # noqa: E402
from common.model_dir import load_model_directory, save_model_directory  # noqa: E402
from common.tokenizer import load_tokenizer  # noqa: E402
from convert.export import DTYPES, export_model, output_size  # noqa: E402
from modeling_gptscratch import GPTScratchConfig, GPTScratchForCausalLM  # noqa: E402


def texts() -> list[str]:
    """Python's documentation of its statements and operators (pydoc's topics), in the order pydoc keeps them."""
    from pydoc_data.topics import topics

    return [topics[key] for key in sorted(topics)]


def windows(tokenizer, count: int, length: int) -> torch.Tensor:
    """`count` windows of `length` token IDs from the texts, joined by `<|endoftext|>`: [count, length]."""
    ids = tokenizer(tokenizer.eos_token.join(texts()))["input_ids"]
    step = max(length, (len(ids) - length) // max(count, 1))
    return torch.tensor([ids[start : start + length] for start in range(0, step * count, step)])


def agreement(name: str, theirs: np.ndarray, ours: np.ndarray) -> None:
    difference = np.abs(theirs - ours).max()
    top = (theirs.argmax(-1) == ours.argmax(-1)).mean()
    print(f"  {name:<32} {difference:>10.2e} {difference / np.abs(ours).max():>10.2e} {top:>9.2%}")


def llama_logits(path: Path, ids: torch.Tensor, context: int) -> np.ndarray | None:
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    llm = Llama(str(path), n_ctx=context, logits_all=True, n_threads=torch.get_num_threads(), verbose=False)
    rows = []
    try:
        for window in ids.tolist():
            llm.reset()
            llm.eval(window)
            rows.append(np.array(llm.scores[: len(window)]))  # a copy: the next eval overwrites them
    finally:
        llm.close()
    return np.stack(rows)


def onnx_logits(directory: Path, ids: torch.Tensor) -> np.ndarray:
    """A prefill of the first half of each window, then one token at a time with the cache: [windows, tokens, vocab]."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(directory / "model.onnx"), providers=["CPUExecutionProvider"])
    inputs = session.get_inputs()
    dtype = np.float16 if inputs[3].type == "tensor(float16)" else np.float32
    rows = []
    for window in ids.numpy():
        half = len(window) // 2
        past = [np.zeros((1, spec.shape[1], 0, spec.shape[3]), dtype) for spec in inputs[3:]]
        pieces = [window[None, :half]] + [window[None, i : i + 1] for i in range(half, len(window))]
        start, outputs = 0, []
        for piece in pieces:
            end = start + piece.shape[1]
            feed = [piece, np.ones((1, end), np.int64), np.arange(start, end)[None], *past]
            logits, *past = session.run(None, {spec.name: value for spec, value in zip(inputs, feed)})
            outputs.append(logits[0].astype(np.float32))
            start = end
        rows.append(np.concatenate(outputs))
    return np.stack(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=Path, help="a gptscratch model directory")
    source.add_argument("--preset", help="a preset of random weights instead (sizes and times)")
    parser.add_argument("--tokenizer", type=Path, help="the tokenizer of --preset (a directory)")
    parser.add_argument("--windows", type=int, default=4, help="windows of text the logits are compared on")
    parser.add_argument("--skip-agreement", action="store_true", help="sizes and times only")
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        model_dir = args.model
        if model_dir is None:
            tokenizer = load_tokenizer(args.tokenizer)
            config = GPTScratchConfig.from_preset(args.preset, vocab_size=len(tokenizer))
            model_dir = save_model_directory(GPTScratchForCausalLM(config), tokenizer, work / args.preset)
        model, tokenizer = load_model_directory(model_dir)
        model.eval()
        config = model.config
        print(
            f"{model_dir}: {model.num_parameters():,} parameters, {config.n_layers} layers, context "
            f"{config.context_length}, vocabulary {config.vocab_size:,}; torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads\n"
        )
        print(f"  {'export':<14} {'seconds':>8} {'size':>10}")
        outputs = {}
        for format, dtypes in DTYPES.items():
            for dtype in dtypes if format != "gpt2" else ("f32",):
                name = f"{format} {dtype}"
                path = work / f"{format}-{dtype}" / ("model.gguf" if format == "gguf" else "out")
                start = time.perf_counter()
                outputs[name] = export_model(model_dir, format, path, dtype)
                seconds = time.perf_counter() - start
                print(f"  {name:<14} {seconds:>8.1f} {format_size(output_size(outputs[name])):>10}")
        if args.skip_agreement:
            return
        ids = windows(tokenizer, args.windows, config.context_length)
        with torch.no_grad():
            ours = model(ids).logits.numpy()
        print(
            f"\n{ids.shape[0]} windows of {ids.shape[1]} tokens, largest |logit| {np.abs(ours).max():.1f}; against the "
            "model's own logits:"
        )
        print(f"  {'program':<32} {'max |diff|':>10} {'relative':>10} {'same top':>9}")
        for dtype in DTYPES["gguf"]:
            path = outputs[f"gguf {dtype}"]
            loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name).eval()
            with torch.no_grad():
                agreement(f"transformers GGUF {dtype}", loaded(ids).logits.numpy(), ours)
        for dtype in DTYPES["gguf"]:
            theirs = llama_logits(outputs[f"gguf {dtype}"], ids, config.context_length)
            if theirs is None:
                print("  llama.cpp: llama-cpp-python is not installed")
                break
            agreement(f"llama.cpp {dtype}", theirs, ours)
        for dtype in DTYPES["onnx"]:
            agreement(f"ONNX Runtime {dtype}, cached steps", onnx_logits(outputs[f"onnx {dtype}"], ids), ours)
        try:
            from llama_cpp import Llama
        except ImportError:
            return
        llm = Llama(str(outputs["gguf f32"]), n_ctx=config.context_length, vocab_only=True, verbose=False)
        samples = [*texts(), "Naïve café — « déjà vu », 日本語 🙂", "a<|endoftext|>b <|endoftext|>", "  \t\n\n  x  "]
        same = sum(llm.tokenize(text.encode(), special=True) == tokenizer(text)["input_ids"] for text in samples)
        llm.close()
        print(f"\nllama.cpp tokenizes {same} of {len(samples)} texts exactly as the model directory does")


if __name__ == "__main__":
    main()
