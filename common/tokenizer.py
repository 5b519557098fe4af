"""GPT-2's byte-level BPE tokenizer from wherever a user keeps it: OpenAI's files, a saved directory, or the Hub.

The Hub is probed (`common.hub`) before it is asked: offline, transformers' hub client would otherwise retry for about a
minute before failing.
"""

from __future__ import annotations

import os
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from common.hub import HF_ENDPOINT, can_reach, is_hub_name
from modeling_gptscratch import gpt2_tokenizer_from_openai_files


def load_tokenizer(source: str | os.PathLike = "gpt2") -> PreTrainedTokenizerBase:
    """GPT-2's byte-level BPE tokenizer from a directory of OpenAI's files, a saved tokenizer directory, or a hub name.

    Offline, a hub name fails with an error that says to pass a local directory instead.
    """
    path = Path(source)
    if (path / "encoder.json").is_file() and (path / "vocab.bpe").is_file():
        return gpt2_tokenizer_from_openai_files(path)
    if path.is_dir():
        return AutoTokenizer.from_pretrained(path)
    if not is_hub_name(source):
        raise FileNotFoundError(
            f"tokenizer {str(source)!r} is not a directory holding encoder.json + vocab.bpe or a saved tokenizer"
        )
    reachable = can_reach(HF_ENDPOINT)
    try:
        # Offline, use only the local cache: the hub client would otherwise retry for about a minute.
        return AutoTokenizer.from_pretrained(str(source), local_files_only=not reachable)
    except OSError as error:
        reason = str(error).splitlines()[0] if reachable else "the Hugging Face Hub is unreachable (offline?)"
        raise OSError(
            f"could not load tokenizer {str(source)!r}: {reason}. Pass a local directory instead: one holding "
            "OpenAI's encoder.json and vocab.bpe, or one written by tokenizer.save_pretrained"
        ) from error
