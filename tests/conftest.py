"""Shared fixtures and helpers: tiny models, tokenizers and model directories, and the optional ../shared/data
files (tests that need them skip without them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

from common.compat import DEEPSPEED_CPU_NOTICE, drop_log_messages  # noqa: E402

drop_log_messages(*DEEPSPEED_CPU_NOTICE)  # as every command does: tests read what commands print
# Tests must never reach the network; transformers and datasets fail at once instead of retrying.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# Hypothesis (tests/test_input_properties.py): in `make test`, a bounded and repeatable draw of examples; with
# HYPOTHESIS_PROFILE=long, many more, drawn anew each run. Each example runs a command in this process, on fixtures it
# never changes, so function-scoped fixtures shared across examples are fine.
settings.register_profile(
    "ci",
    max_examples=30,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.register_profile("long", parent=settings.get_profile("ci"), max_examples=1000, derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
# The tiny test models gain nothing from threads, and lose much to them on a busy 2-core machine.
torch.set_num_threads(1)

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402

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


# --- tiny tokenizers and model directories, for the commands' tests ---------------------------------------------------


PARAGRAPH = (
    "I had always thought Jack Gisburn rather a cheap genius--though a good fellow enough--so it was no great "
    "surprise to me to hear that, in the height of his glory, he had dropped his painting, married a rich widow, "
    "and established himself in a villa on the Riviera. Naïve café talk — « déjà vu » — costs more bytes "
    "than letters: 日本語 too.\n"
)
TEXT = PARAGRAPH * 3
PROMPT = "Every effort moves you"


def byte_level_bpe(text: str, vocab_size: int) -> PreTrainedTokenizerFast:
    """A GPT-2-style byte-level BPE with `<|endoftext|>`, trained on `text`; vocab_size 257 gives bytes only."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator([text], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>", bos_token="<|endoftext|>")


def byte_level_tokenizer(vocab_size: int = 97) -> PreTrainedTokenizerFast:
    """A small byte-level BPE with GPT-2's pre-tokenisation, built offline."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(["the cat sat on the mat"] * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")


def ascii_char_tokenizer() -> PreTrainedTokenizerFast:
    """A character vocabulary of ASCII letters with an unknown token: what it has not seen becomes [UNK]."""
    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    trainer = trainers.BpeTrainer(vocab_size=80, special_tokens=["[UNK]"])
    tokenizer.train_from_iterator(["abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ .,"], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]")


def write_tiny_bpe(directory: Path) -> Path:
    """A valid GPT-2 style encoder.json + vocab.bpe: the 256 byte symbols in GPT-2's order, 4 merges, <|endoftext|>."""
    # GPT-2's byte-to-symbol table: printable bytes other than space stand for themselves, the rest become
    # chr(256 + n) in byte order (so the space byte is "Ġ").
    symbols = [chr(b) for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    symbols += [chr(256 + n) for n in range(256 - len(symbols))]
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n")]
    tokens = symbols + [left + right for left, right in merges] + ["<|endoftext|>"]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "encoder.json").write_text(json.dumps({token: i for i, token in enumerate(tokens)}), encoding="utf-8")
    (directory / "vocab.bpe").write_text(
        "#version: 0.2\n" + "".join(f"{left} {right}\n" for left, right in merges), encoding="utf-8"
    )
    return directory


def tiny_model_for(tokenizer, seed: int = 0, **overrides) -> GPTScratchForCausalLM:
    torch.manual_seed(seed)
    config = tiny_config(vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, **overrides)
    return GPTScratchForCausalLM(config).eval()


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    from common.tokenizer import load_tokenizer

    if (SHARED_DATA / "gpt2-bpe").is_dir():
        return load_tokenizer(SHARED_DATA / "gpt2-bpe")
    return byte_level_bpe(TEXT, vocab_size=320)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer) -> Path:
    """A converted-style model directory: the model files and the tokenizer, no training record."""
    from common.model_dir import save_model_directory

    return save_model_directory(tiny_model_for(tokenizer), tokenizer, tmp_path_factory.mktemp("models") / "converted")


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory) -> Path:
    """OpenAI's encoder.json + vocab.bpe from ../shared/data, or a tiny valid pair where that folder is absent."""
    shared = SHARED_DATA / "gpt2-bpe"
    return shared if shared.is_dir() else write_tiny_bpe(tmp_path_factory.mktemp("tiny-bpe"))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """Token files and fitted tokenizers of this module, out of the user's Hugging Face cache."""
    return tmp_path_factory.mktemp("token-cache")


@pytest.fixture(scope="module")
def small_tokenizer():
    """A 300-token byte-level BPE fitted on part of the embedded corpus."""
    from pydoc_data.topics import topics

    from train import vocabulary as V

    return V.train_bpe_tokenizer([topics[key] for key in sorted(topics)[:20]], 300)
