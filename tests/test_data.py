"""train.data and gptscratch-prepare: the token pass into cached, memory-mapped token files, in bounded memory."""

from __future__ import annotations

import json
import os
import threading
import time

import numpy as np
import psutil
import pytest
import torch
from data_helpers import EOS, _word_tokenizer, expected_streams, quiet_prepare, write_documents
from train_helpers import TINY_MODEL, train_cli
from transformers import PreTrainedTokenizerFast

from train import corpus as C
from train import data as D


@pytest.mark.parametrize("num_proc", [1, 2])
def test_token_files_hold_each_split_tokenised_whole(tmp_path, small_tokenizer, monkeypatch, num_proc):
    """The token files of a multi-document corpus (a large file read in many pieces and tokenised in many tasks,
    an empty file, `<|endoftext|>` written in a text) are each split's text tokenised whole, bit for bit; also
    with tokenising worker processes."""
    from pydoc_data.topics import topics

    monkeypatch.setattr(C, "READ_BLOCK_BYTES", 4096)
    monkeypatch.setattr(D, "TASK_CHARS", 3000)
    keys = sorted(topics)[20:32]
    texts = [topics[key] for key in keys] + ["", f"one{EOS}two\n", "\n".join(topics[key] for key in keys[:6])]
    documents = write_documents(tmp_path / "corpus", texts)
    small_tokenizer.save_pretrained(tmp_path / "tokenizer")
    prepared = quiet_prepare(
        data=[str(tmp_path / "corpus")],
        tokenizer=str(tmp_path / "tokenizer"),
        train_ratio=0.7,
        num_proc=num_proc,
        cache_dir=tmp_path / "cache",
    )
    expected_train, expected_val = expected_streams(documents, 0.7, small_tokenizer)
    files = prepared.files
    assert files.tokens("train").dtype == np.uint16
    assert files.tokens("train").tolist() == expected_train
    assert files.tokens("val").tolist() == expected_val
    assert files.meta["documents"] == len(texts) - 1


def test_prepared_tokens_are_memory_mapped_token_files_reused_by_the_next_run(tmp_path, cache_dir, monkeypatch):
    """Tokens go to flat uint16 files, memory-mapped by the windows; the next run finds them without reading the
    corpus again."""
    from pydoc_data.topics import topics

    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(topics[key] for key in sorted(topics)[:10]), encoding="utf-8")
    prepare = lambda: D.prepare_data(  # noqa: E731
        context_length=32,
        data=[str(path)],
        vocab_size=300,
        cache_dir=cache_dir,
        progress=False,
        log=lambda message: None,
    )
    first = prepare()
    tokens = first.train.tokens
    assert isinstance(tokens, np.memmap) and tokens.dtype == np.uint16
    assert os.path.samefile(tokens.filename, first.token_files.directory / "train.bin")
    assert (first.token_files.directory / "train.bin").stat().st_size == 2 * first.train.num_tokens

    def no_second_reading(*args, **kwargs):
        raise AssertionError("the corpus was read again")

    monkeypatch.setattr(D, "scan_corpus", no_second_reading)
    monkeypatch.setattr(D, "write_token_files", no_second_reading)
    second = prepare()
    assert second.token_files.directory == first.token_files.directory and not second.token_files.made
    assert second.train.num_tokens == first.train.num_tokens > 0
    assert torch.equal(second.train[3][0], first.train[3][0])

    path.write_text(path.read_text(encoding="utf-8") + "\nMore.", encoding="utf-8")  # an edit is a new corpus
    monkeypatch.undo()
    third = prepare()
    assert third.token_files.directory != first.token_files.directory


def test_a_file_that_stops_being_utf8_late_in_a_large_corpus_is_refused_before_any_token_is_written(
    tmp_path, small_tokenizer, monkeypatch
):
    monkeypatch.setattr(C, "READ_BLOCK_BYTES", 1000)
    good = "Plain text line.\n" * 4000  # 68,000 bytes: the bad byte comes 68 blocks in
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.txt").write_text(good, encoding="utf-8")
    (tmp_path / "corpus" / "b.txt").write_bytes(good.encode() + b"caf\xe9\n" + good.encode())
    small_tokenizer.save_pretrained(tmp_path / "tokenizer")
    with pytest.raises(C.DataError, match=rf"b.txt is not UTF-8 text: byte 0xe9 at byte offset {len(good) + 3};"):
        quiet_prepare(
            data=[str(tmp_path / "corpus")], tokenizer=str(tmp_path / "tokenizer"), cache_dir=tmp_path / "cache"
        )
    assert not (tmp_path / "cache" / "gptscratch-tokens").exists() or not list(
        (tmp_path / "cache" / "gptscratch-tokens").iterdir()
    )


def test_a_dataset_with_no_text_is_refused_in_one_line(tmp_path, cache_dir):
    (tmp_path / "dataset").mkdir()
    (tmp_path / "dataset" / "rows.jsonl").write_text("".join(json.dumps({"text": ""}) + "\n" for _ in range(5)))
    with pytest.raises(C.DataError, match="the corpus holds no text") as error:
        quiet_prepare(dataset=str(tmp_path / "dataset"), tokenizer="train", vocab_size=300, cache_dir=cache_dir)
    assert "\n" not in str(error.value)


@pytest.mark.slow
@pytest.mark.parametrize("file_bytes", [None, 1600], ids=["one file", "many small files"])
def test_preparing_a_corpus_far_larger_than_memory_allows_stays_within_a_few_megabytes(
    tmp_path, monkeypatch, file_bytes
):
    """Resident memory of this process and its children while preparing a 32 MB corpus grows by less than 8 MB
    (a quarter of the corpus), and no more than while preparing 1 MB: it does not grow with the corpus's bytes.
    Given as a directory of 1.6 KB files (20,000 of them at 32 MB), it grows with their number alone, by less than
    1.5 KB a file (each file's name, size and modification time: the cache key; 18 MB measured at 20,000). The
    reading and task sizes are set small so that the working set is far below a corpus this test can afford to
    tokenise; the benchmark (benchmarks/bench_data.py) measures the default sizes on gigabytes. The datasets-based
    pipeline before token files held about 76 bytes per byte of text: 2.4 GB here."""
    monkeypatch.setattr(C, "READ_BLOCK_BYTES", 256 << 10)
    monkeypatch.setattr(D, "TASK_CHARS", 64 << 10)
    words = [f"w{i}" for i in range(5000)]
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=_word_tokenizer(5000), eos_token="w4999")
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    rng = np.random.default_rng(0)
    line = " ".join(rng.choice(words, 2000)) + "\n"  # 11 KB
    for name, size in (("small", 1 << 20), ("large", 32 << 20)):  # a file, or a directory of files
        if file_bytes is None:
            with open(tmp_path / name, "w", encoding="utf-8") as stream:
                for _ in range(size // len(line)):
                    stream.write(line)
        else:
            (tmp_path / name).mkdir()
            for index in range(size // file_bytes):
                (tmp_path / name / f"{index:05d}.txt").write_text(line[:file_bytes], encoding="utf-8")

    runs = []

    def growth(name: str) -> float:
        baseline, peak, done = tree_rss(), [0], threading.Event()
        runs.append(name)

        def watch() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], tree_rss())
                time.sleep(0.005)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            quiet_prepare(
                data=[str(tmp_path / name)],
                tokenizer=str(tmp_path / "tokenizer"),
                num_proc=1,
                cache_dir=tmp_path / f"cache-{len(runs)}",
            )
        finally:
            done.set()
            watcher.join()
        return (peak[0] - baseline) / 2**20

    growth("small")  # the first call loads what every call uses (the tokenizer library's code, its threads)
    small, large = growth("small"), growth("large")
    files = 0 if file_bytes is None else (32 << 20) // file_bytes
    assert large < 8 + files * 1.5 / 1024, (small, large)
    assert large < small + 4 + files * 1.5 / 1024, (small, large)


def tree_rss() -> int:
    """Resident bytes of this process and every process below it."""
    total = 0
    for process in [psutil.Process(), *psutil.Process().children(recursive=True)]:
        try:
            total += process.memory_info().rss
        except psutil.Error:  # it ended meanwhile
            pass
    return total


def test_gptscratch_prepare_makes_the_token_files_a_run_then_maps(tmp_path, corpus, capsys, monkeypatch):
    from train import prepare

    data_flags = ["--data", str(corpus), "--cache-dir", str(tmp_path / "cache"), "--vocab-size", "300"]
    with pytest.raises(SystemExit) as exit_info:
        prepare.main(data_flags)
    printed = capsys.readouterr().out
    assert exit_info.value.code == 0
    entry = next((tmp_path / "cache" / "gptscratch-tokens").iterdir())
    assert printed.startswith("tokenised by tiktoken\nprepared in ") and f"token files  {entry} (" in printed
    assert "uint16" in printed

    def no_reading(*args, **kwargs):
        raise AssertionError("the run read the corpus again")

    monkeypatch.setattr(D, "scan_corpus", no_reading)
    assert train_cli([*data_flags, *TINY_MODEL, "--output-dir", str(tmp_path / "run"), "--dry-run"]) == 0
    assert f"token files {entry} (" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        prepare.main([*data_flags, "--train-ratio", "2"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "gptscratch-prepare: error: --train-ratio 2.0: must be between 0 and 1 (0.9 keeps 10% for validation)"
    )
