"""Shared fixtures: tiny models, and the optional ../shared/data files (tests that need them skip without them)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

# Tests must never reach the network; transformers and datasets fail at once instead of retrying.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# The tiny test models gain nothing from threads, and lose much to them on a busy 2-core machine.
torch.set_num_threads(1)

from modeling_gptscratch import GPTScratchConfig, GPTScratchForCausalLM  # noqa: E402

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def tiktoken_gpt2(bpe_dir: Path):
    """GPT-2's encoding rebuilt offline by tiktoken from OpenAI's encoder.json + vocab.bpe: an implementation
    independent of ours, and what the book's loaders use (tiktoken would otherwise download it)."""
    tiktoken = pytest.importorskip("tiktoken")
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    ranks = data_gym_to_mergeable_bpe_ranks(str(bpe_dir / "vocab.bpe"), str(bpe_dir / "encoder.json"))
    return tiktoken.Encoding(
        "gpt2-offline", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": len(ranks)}
    )


def shared_file(relative: str) -> Path:
    """A file under ../shared/data, or a clean skip where that folder is absent."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"{path} is absent (tests that need ../shared/data skip without it)")
    return path


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """Token files and fitted tokenizers, shared by a test module's runs and kept out of the user's cache."""
    return tmp_path_factory.mktemp("datasets-cache")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """About 40 KB of English from the embedded corpus, as a local file: ~90 training steps per epoch below."""
    from pydoc_data.topics import topics

    path = tmp_path_factory.mktemp("corpus") / "topics.txt"
    path.write_text("\n".join(topics[key] for key in sorted(topics)[:12])[:40_000], encoding="utf-8")
    return path


@pytest.fixture
def gpt2_bpe_dir() -> Path:
    """OpenAI's encoder.json + vocab.bpe."""
    return shared_file("gpt2-bpe")


@pytest.fixture
def verdict_text() -> str:
    """The book's corpus, "The Verdict"."""
    return shared_file("the-verdict.txt").read_text(encoding="utf-8")


def assert_same_logits(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    """Two fp32 implementations of the same network agree to rounding: within 1e-5 of the largest |logit|.

    fp32 keeps 24 bits (6e-8 relative). Two correct implementations that add the same products in another order
    (other kernels, other thread counts) differ by a few units in the last place of the largest partial sums, which
    are of the order of the largest logit: 5e-7 of it was measured. 1e-5 of it is 20 times that, far below what a
    wrong mapping does (it moves logits by about their spread). A fixed atol, by contrast, is crossed by large
    logits' rounding alone.
    """
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5 * theirs.abs().max().item())


def tiny_config(**overrides) -> GPTScratchConfig:
    """A config small enough for many forward passes per test: 2 layers, 32 dims, vocab 97."""
    values = dict(
        vocab_size=97,
        context_length=32,
        emb_dim=32,
        n_heads=4,
        n_layers=2,
        drop_rate=0.0,
        qkv_bias=True,
        bos_token_id=None,
        eos_token_id=None,
    )
    values.update(overrides)
    return GPTScratchConfig(**values)


@pytest.fixture
def tiny_model() -> GPTScratchForCausalLM:
    torch.manual_seed(0)
    return GPTScratchForCausalLM(tiny_config()).eval()


def run_without_project(code: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """Runs Python code in a fresh interpreter that cannot import this project (not installed, not on sys.path)."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    # -I: isolated mode, so neither the working directory nor user site-packages lands on sys.path; the editable
    # install's finder is hidden by dropping every sys.path entry that resolves into this repository.
    prelude = (
        "import os, sys\n"
        f"repo = {str(REPO_ROOT)!r}\n"
        "sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.curdir) != repo]\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if '__editable__' not in getattr(f, '__module__', '')]\n"
        "for name in ('modeling_gptscratch', 'train', 'convert'):\n"
        "    try:\n"
        "        __import__(name)\n"
        "    except ImportError:\n"
        "        pass\n"
        "    else:\n"
        "        raise SystemExit(f'project module {name} is importable; the test would prove nothing')\n"
    )
    return subprocess.run(
        [sys.executable, "-I", "-c", prelude + code], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
