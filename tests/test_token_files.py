"""train.token_files: IDs in 16 bits while they fit, cache entries never trusted half-written, a disk that fills."""

from __future__ import annotations

import errno
import os

import numpy as np
import psutil
import pytest
from data_helpers import _word_tokenizer, quiet_prepare
from transformers import PreTrainedTokenizerFast

from common.errors import InputError
from train import data as D
from train import token_files as T
from train.tokenizing import PieceTokenizer, token_dtype


def test_token_ids_are_stored_in_16_bits_while_the_vocabulary_fits():
    assert token_dtype(50257) == np.uint16 and token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32 and token_dtype(200_000) == np.uint32
    encode = PieceTokenizer(
        PreTrainedTokenizerFast(tokenizer_object=_word_tokenizer(70000)).backend_tokenizer.to_str(), 69999, "uint32"
    )
    assert encode([("w69998 w3", False), ("w5", True)]).tolist() == [69998, 3, 69999, 5]
    with pytest.raises(ValueError, match="does not fit uint16"):
        PieceTokenizer(encode.tokenizer.to_str(), 69999, "uint16")([("w69998", False)])


def test_a_damaged_or_unfinished_cache_entry_is_never_trusted(tmp_path):
    root = tmp_path / "gptscratch-tokens"
    with T.EntryBuilder(root, "k", np.dtype(np.uint16)) as build:
        build.writers["train"].append(np.arange(10, dtype=np.uint16))
        build.writers["val"].append(np.arange(3, dtype=np.uint16))
        entry = build.finish({"documents": 1})
    assert entry.tokens("train").tolist() == list(range(10)) and T.open_entry(root / "k") is not None
    with open(root / "k" / "train.bin", "r+b") as stream:  # a file that lost its end
        stream.truncate(8)
    assert T.open_entry(root / "k") is None
    (root / "k" / "meta.json").unlink()
    assert T.open_entry(root / "k") is None

    # A builder killed mid-way leaves its temporary entry: the next build removes it once its process is gone.
    dead = psutil.Popen(["true"])
    dead.wait()
    abandoned = root / f".tmp-k2-{os.uname().nodename}.{dead.pid}-abcd1234"
    alive = root / f".tmp-k2-{os.uname().nodename}.{os.getpid()}-abcd1234"
    abandoned.mkdir()
    alive.mkdir()
    with T.EntryBuilder(root, "k2", np.dtype(np.uint16)) as build:
        build.finish({})
    assert not abandoned.exists() and alive.exists()


def test_a_disk_that_fills_while_writing_token_files_is_one_error_and_leaves_nothing(
    tmp_path, small_tokenizer, monkeypatch
):
    from pydoc_data.topics import topics

    monkeypatch.setattr(D, "TASK_CHARS", 2000)
    (tmp_path / "corpus.txt").write_text("\n".join(topics[key] for key in sorted(topics)[:8]), encoding="utf-8")
    small_tokenizer.save_pretrained(tmp_path / "tokenizer")
    append = T.TokenFileWriter.append
    calls = []

    def fill_up(self, tokens):
        calls.append(len(tokens))
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        append(self, tokens)

    monkeypatch.setattr(T.TokenFileWriter, "append", fill_up)
    prepare = lambda: quiet_prepare(  # noqa: E731
        data=[str(tmp_path / "corpus.txt")], tokenizer=str(tmp_path / "tokenizer"), cache_dir=tmp_path / "cache"
    )
    with pytest.raises(
        InputError,
        match=r"cannot write token files under .*gptscratch-tokens \(No space left on "
        r"device, after [\d.]+ MB\); free space there or pass cache_dir",
    ) as error:
        prepare()
    assert "\n" not in str(error.value)
    assert list((tmp_path / "cache" / "gptscratch-tokens").iterdir()) == []  # no entry, no temporary files
    monkeypatch.setattr(T.TokenFileWriter, "append", append)
    assert prepare().files.made
