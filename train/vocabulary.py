"""The run's tokenizer: fitted on the training text (a byte-level BPE, cached), GPT-2's, or one from a directory.

`resolve_tokenizer` gives the tokenizer the `tokenizer` option names with a one-line description; `fit_tokenizer`
fits and caches a byte-level BPE with GPT-2's pre-tokenisation on a sample of the training split (all of it up to
TOKENIZER_SAMPLE_CHARS), so reruns and the other processes of a run load the same one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm
from transformers import GPT2Tokenizer, PreTrainedTokenizerBase

from common.errors import field
from common.model_dir import load_tokenizer_or_refuse
from common.tokenizer import load_tokenizer
from train.corpus import Corpus, CorpusScan, DataError, training_text
from train.options import DEFAULT_MIN_FREQUENCY
from train.token_files import cache_key
from train.tokenizing import EOS_TOKEN, safe_pieces

# `tokenizer` "train" fits the BPE on at most this many characters of the training text: all of it below, else the
# same share of every piece, so that the sample spans the whole corpus.
TOKENIZER_SAMPLE_CHARS = 64 << 20


def train_bpe_tokenizer(
    texts: Iterable[str], vocab_size: int, min_frequency: int = DEFAULT_MIN_FREQUENCY
) -> PreTrainedTokenizerBase:
    """A byte-level BPE of at most `vocab_size` tokens fitted on `texts` (GPT-2's pre-tokenisation,
    `<|endoftext|>`), merging only pairs that occur at least `min_frequency` times in them.

    Returned as transformers' GPT-2 tokenizer class, so `save_pretrained` writes files that `AutoTokenizer` loads.
    The trainer sees the texts in pieces cut at safe places (the same words: 8 MB of text in one piece would take
    it 1.7 GB); its memory still grows with the distinct words, so a large corpus gives it a sample
    (`fit_tokenizer`).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    check_vocab_size(vocab_size)
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator((piece for text in texts for piece in safe_pieces(text)), trainer=trainer)
    model = json.loads(backend.to_str())["model"]
    return GPT2Tokenizer(vocab=model["vocab"], merges=[tuple(merge) for merge in model["merges"]])


def tokenizer_sample(texts: Iterable[str], characters: int, limit: int = TOKENIZER_SAMPLE_CHARS) -> Iterator[str]:
    """The texts whole while they hold at most `limit` characters in all, else the same leading share of each
    (about `limit` characters, spread over the whole corpus)."""
    share = min(1.0, limit / max(characters, 1))
    for text in texts:
        yield text if share == 1.0 else text[: math.ceil(share * len(text))]


def fit_tokenizer(
    sample: Callable[[], tuple[Iterable[str], int | None]],
    vocab_size: int,
    min_frequency: int,
    key: dict[str, Any],
    cache_root: Path,
    progress: bool = True,
) -> PreTrainedTokenizerBase:
    """`tokenizer train`: a byte-level BPE fitted on the texts `sample()` gives (with their number of characters,
    when known), or the one fitted before for the same `key`.

    Cached under `cache_root` by `key`, the vocabulary size and the minimum frequency: reruns and the other
    processes of a multi-process run load the same tokenizer instead of fitting it again (and `sample` is not
    called).
    """
    check_vocab_size(vocab_size)
    name = cache_key(
        {**key, "vocab_size": vocab_size, "min_frequency": min_frequency, "sample": TOKENIZER_SAMPLE_CHARS}
    )
    cached = cache_root / "gptscratch-tokenizers" / f"bpe-{vocab_size}-{name}"
    if not (cached / "tokenizer.json").is_file():
        texts, characters = sample()
        with tqdm(
            total=characters,
            desc="Fitting the tokenizer",
            unit="char",
            unit_scale=True,
            disable=None if progress else True,
        ) as bar:
            tokenizer = train_bpe_tokenizer(_counted(texts, bar), vocab_size, min_frequency)
        cached.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{cached.name}.tmp-", dir=cached.parent))
        try:
            tokenizer.save_pretrained(staging)
            os.replace(staging, cached)
        except OSError:  # another process finished the same tokenizer first; theirs is identical
            if not (cached / "tokenizer.json").is_file():
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    # Loaded back, so a first and a cached call return the same object state (and the same token cache key).
    return load_tokenizer(cached)


def training_sample(corpus: Corpus, scan: CorpusScan, train_ratio: float) -> tuple[Iterator[str], int]:
    """What `tokenizer train` fits on: the training split, sampled down to about TOKENIZER_SAMPLE_CHARS characters
    (`tokenizer_sample`), read lazily; and how many characters that is."""
    characters = int(train_ratio * scan.characters)
    texts = tokenizer_sample(training_text(corpus, scan, train_ratio), characters)
    return texts, min(characters, TOKENIZER_SAMPLE_CHARS)


def _counted(texts: Iterable[str], bar: tqdm) -> Iterator[str]:
    for text in texts:
        bar.update(len(text))
        yield text


def check_vocab_size(vocab_size: int) -> None:
    if vocab_size < 257:
        raise DataError(
            f"{field('vocab_size')} {vocab_size}: a byte-level BPE needs at least 257 (256 bytes + <|endoftext|>)"
        )


def resolve_tokenizer(
    spec: str, fit: Callable[[], PreTrainedTokenizerBase], fitted_on: str = "the training split"
) -> tuple[PreTrainedTokenizerBase, str]:
    """The tokenizer `tokenizer` names and a one-line description of it.

    `train`: `fit()`, a byte-level BPE fitted on `fitted_on` (`fit_tokenizer`); `gpt2`: GPT-2's from the Hugging
    Face Hub (or its cache); a path: a directory with OpenAI's encoder.json + vocab.bpe or a saved transformers
    tokenizer. Every one needs an end-of-text token and a fast (Rust) backend.
    """
    if spec == "train":
        tokenizer = fit()
        return tokenizer, f"byte-level BPE fitted on {fitted_on} ({len(tokenizer)} tokens)"
    tokenizer = load_tokenizer_or_refuse(
        spec,
        f"{field('tokenizer')} {spec} could not be loaded",
        f"pass a directory with encoder.json + vocab.bpe or a saved tokenizer, or {field('tokenizer')} train",
        error_class=DataError,
    )
    if tokenizer.eos_token_id is None:
        raise DataError(
            f"{field('tokenizer')} {spec} has no end-of-text token; documents are joined with one, choose another"
        )
    if getattr(tokenizer, "backend_tokenizer", None) is None:
        raise DataError(
            f"{field('tokenizer')} {spec} is not a fast (Rust) tokenizer, which tokenising at scale needs; save "
            "it with tokenizer.save_pretrained from a fast tokenizer, or choose another"
        )
    if spec == "gpt2":
        return tokenizer, f"GPT-2 BPE ({len(tokenizer)} tokens)"
    return tokenizer, f"tokenizer from {spec} ({len(tokenizer)} tokens)"


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A hash of what decides a fast tokenizer's IDs: its serialised vocabulary, merges, special tokens, normaliser
    and pre-tokeniser (not its truncation and padding settings, which transformers changes between calls)."""
    serialised = json.loads(tokenizer.backend_tokenizer.to_str())
    serialised.pop("truncation", None)
    serialised.pop("padding", None)
    text = json.dumps([serialised, tokenizer.eos_token_id], sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
