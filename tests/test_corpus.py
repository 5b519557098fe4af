"""train.corpus: files, directories, globs, the embedded corpus, the hub; read in pieces, checked, deduplicated."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from cli_helpers import assert_one_line_error
from conftest import REPO_ROOT
from data_helpers import expected_streams, quiet_prepare, write_documents
from train_helpers import TINY_MODEL, train_cli

from train import corpus as C
from train import data as D
from train.tokenizing import safe_pieces


def corpus_of(pieces):
    """A Corpus over (text, starts a document) pairs held in memory."""
    return C.Corpus("test pieces", {"pieces": pieces}, lambda: iter(pieces))


def split_rows(pieces, ratio):
    cut = int(ratio * sum(len(text) for text, _ in pieces))
    rows = list(C.split_pieces(pieces, cut))
    return (
        {split: [text for s, text, _ in rows if s == split] for split in ("train", "val")},
        {split: [start for s, _, start in rows if s == split] for split in ("train", "val")},
    )


def tokens_of(pieces, ratio, tokenizer):
    """Each split's token stream as the pipeline builds it (tasks, in this process), as lists."""
    cut = int(ratio * sum(len(text) for text, _ in pieces))
    encoder = (tokenizer.backend_tokenizer.to_str(), tokenizer.eos_token_id, "uint16")
    streams = {"train": [], "val": []}
    for split, _, tokens in D.tokenize_in_order(D.tokenize_tasks(C.split_pieces(pieces, cut)), encoder, 1):
        streams[split] += tokens.tolist()
    return streams


def test_split_cuts_the_text_at_the_ratio_and_joins_documents_with_endoftext(small_tokenizer):
    one = "a" * 7 + "b" * 3
    texts, _ = split_rows([(one, True)], 0.9)
    assert (texts["train"], texts["val"]) == ([one[:9]], [one[9:]])  # the book's text[:split_idx], text[split_idx:]

    texts, starts = split_rows([("first doc.", True), ("second text", True), ("third", True)], 0.5)
    # 26 characters: the cut at 13 falls 3 characters into the second document, which both splits share.
    assert texts["train"] == ["first doc.", "sec"] and starts["train"] == [True, True]
    assert texts["val"] == ["ond text", "third"] and starts["val"] == [False, True]

    eos = small_tokenizer.eos_token_id
    encode = lambda text: small_tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    streams = tokens_of([("first doc.", True), ("second text", True), ("third", True)], 0.5, small_tokenizer)
    assert streams["train"] == encode("first doc.") + [eos] + encode("sec")
    assert streams["val"] == encode("ond text") + [eos] + encode("third")


def test_dedup_drops_exact_duplicate_documents_before_the_split(tmp_path, small_tokenizer):
    texts = ["alpha", "beta", "alpha", "gam", "ma", "gam", "ma", "beta"]
    starts = [True, True, True, True, False, True, False, True]  # "gam"+"ma" is one document in two pieces
    pieces = list(zip(texts, starts))
    scan = C.scan_corpus(corpus_of(pieces), dedup=True, progress=False)
    assert (scan.duplicates_dropped, scan.documents, scan.characters) == (3, 3, len("alphabetagamma"))
    kept = [text for _, text, _ in C.split_pieces(pieces, scan.characters, scan.kept)]
    assert kept == ["alpha", "beta", "gam", "ma"]

    documents = write_documents(tmp_path / "corpus", ["one text.", "two texts.", "one text.", "three texts."])
    small_tokenizer.save_pretrained(tmp_path / "tokenizer")
    prepared = quiet_prepare(
        data=[str(tmp_path / "corpus")],
        tokenizer=str(tmp_path / "tokenizer"),
        dedup=True,
        train_ratio=0.5,
        cache_dir=tmp_path / "cache",
    )
    expected_train, expected_val = expected_streams([documents[0], documents[1], documents[3]], 0.5, small_tokenizer)
    assert prepared.files.tokens("train").tolist() == expected_train
    assert prepared.files.tokens("val").tolist() == expected_val
    assert (prepared.files.meta["documents"], prepared.files.meta["duplicates_dropped"]) == (3, 1)


def test_local_files_directories_and_globs(tmp_path):
    (tmp_path / "corpus" / "sub").mkdir(parents=True)
    (tmp_path / "corpus" / "a.txt").write_text("alpha text\n", encoding="utf-8")
    (tmp_path / "corpus" / "sub" / "b.md").write_text("beta text\n", encoding="utf-8")
    (tmp_path / "corpus" / ".hidden").write_text("left out\n", encoding="utf-8")
    single = tmp_path / "c.txt"
    single.write_text("gamma text\n", encoding="utf-8")

    corpus = C.local_corpus([str(tmp_path / "corpus"), str(tmp_path / "*.txt")])
    assert [text for text, _ in corpus.pieces()] == ["alpha text\n", "beta text\n", "gamma text\n"]
    assert corpus.description.startswith("a.txt, b.md, c.txt")


def test_a_directory_walk_leaves_out_runs_model_directories_and_model_files(tmp_path):
    corpus = tmp_path / "corpus"
    (corpus / "notes").mkdir(parents=True)
    (corpus / "notes" / "a.txt").write_text("alpha text\n", encoding="utf-8")
    (corpus / "weights.safetensors").write_bytes(b"\x89binary")
    (corpus / "optimizer.bin").write_bytes(b"\x00\x01")
    run = corpus / "run"  # a training run's output (checkpoints/run.json is its first file)
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "run.json").write_text("{}", encoding="utf-8")
    (run / "metrics.jsonl").write_text('{"step": 0}\n', encoding="utf-8")
    model = corpus / "exported"  # any model directory: config.json beside safetensors weights
    model.mkdir()
    (model / "config.json").write_text("{}", encoding="utf-8")
    (model / "model.safetensors").write_bytes(b"\x00")
    (model / "README.md").write_text("a model card\n", encoding="utf-8")
    (corpus / "b.txt").write_text("beta text\n", encoding="utf-8")
    named = corpus / "optimizer.bin"  # a file named on its own is read as given, and refused if it is not text

    logged = []
    corpus_read = C.local_corpus([str(corpus)], log=logged.append)
    assert [text for text, _ in corpus_read.pieces()] == ["beta text\n", "alpha text\n"]
    assert logged == [
        f"data {corpus}: left out {model}, {corpus / 'optimizer.bin'}, {run} and 1 more (model "
        "files and run or model directories are not text)"
    ]
    with pytest.raises(C.DataError, match="optimizer.bin is not text: a NUL byte at byte offset 0"):
        C.scan_corpus(C.local_corpus([str(named)]), progress=False)


@pytest.mark.parametrize(
    "content, offset, message",
    [
        (b"hello\xffworld", 5, "byte 0xff at byte offset 5"),
        ("h\u00e9llo\u20ac".encode() + b"\x00rest", 9, "NUL byte at byte offset 9"),
    ],
)
def test_a_file_that_is_not_text_is_named_with_the_byte_offset(tmp_path, content, offset, message):
    path = tmp_path / "data.bin"
    path.write_bytes(content)
    with pytest.raises(C.DataError, match=message) as error:
        C.scan_corpus(C.local_corpus([str(path)]), progress=False)
    assert str(path) in str(error.value)
    assert (error.value.path, error.value.offset) == (path, offset)


def test_large_files_are_read_in_pieces_that_tokenize_like_the_whole(tmp_path, small_tokenizer):
    """Pieces cut at a newline between words: their tokens, concatenated, are the whole file's tokens."""
    text = "".join(f"Line {i}: caf\u00e9 na\u00efve  spaced\n\nword{i}\n" for i in range(300))
    path = tmp_path / "big.txt"
    path.write_text(text, encoding="utf-8")
    pieces = list(C.read_text_pieces(path, block_bytes=100))
    assert len(pieces) > 10 and "".join(pieces) == text
    encode = lambda piece: small_tokenizer.encode(piece, add_special_tokens=False)  # noqa: E731
    assert [token for piece in pieces for token in encode(piece)] == encode(text)
    parts = list(safe_pieces(text, 150))  # the same cuts where tokenising splits a long piece
    assert len(parts) > 10 and "".join(parts) == text
    assert [token for part in parts for token in encode(part)] == encode(text)

    bad = tmp_path / "late.txt"
    bad.write_bytes(("\u00e9" * 300).encode() + b"\xfe")  # the bad byte lies in a later block
    with pytest.raises(C.DataError, match="byte offset 600"):
        list(C.read_text_pieces(bad, block_bytes=7))  # odd blocks also split the 2-byte characters


def test_hub_dataset_offline_names_the_local_file_alternative(cache_dir):
    with pytest.raises(C.DataError, match=r"dataset someone/no-such-dataset: .*with data PATH"):
        C.hub_corpus("someone/no-such-dataset", cache_dir=cache_dir)


@pytest.mark.slow
def test_an_unreachable_hub_refuses_a_dataset_in_one_line_at_once(tmp_path):
    """Not told it is offline, datasets' hub client would retry for half a minute, a warning at every try, before
    the refusal; the Hub is probed first (common.hub), and the local cache, empty here, answers at once."""
    env = {key: value for key, value in os.environ.items() if key not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    env.update(HF_ENDPOINT="https://hub.invalid", HF_HOME=str(tmp_path / "hf-home"), PYTHONPATH=str(REPO_ROOT))
    argv = ["--dataset", "someone/no-such-dataset", "--output-dir", tmp_path / "out", "--cache-dir", tmp_path / "cache"]
    result = subprocess.run(
        [sys.executable, "-m", "train", *map(str, argv)], env=env, capture_output=True, text=True, timeout=300
    )
    assert_one_line_error(result, "gptscratch-train", "--dataset someone/no-such-dataset: could not load it", "--data")
    assert not (tmp_path / "out").exists()


def test_embedded_corpus_ships_with_python():
    corpus = C.embedded_corpus("pydoc")
    assert "pydoc_data" in corpus.description
    assert sum(1 for _ in corpus.pieces()) > 50
    assert C.scan_corpus(corpus, progress=False).characters > 400_000


def test_an_output_directory_inside_the_data_directory_is_refused_and_a_run_put_there_is_left_out(
    tmp_path, corpus, cache, capsys
):
    """A run cannot write into its own data (it would read its weights and metrics as text next time, and an
    overwrite would delete the text); a run directory a user moves there is left out of the data."""
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(corpus, data / "topics.txt")
    args = [
        "--data",
        str(data),
        "--cache-dir",
        str(cache),
        *TINY_MODEL,
        "--batch-size",
        "4",
        "--eval-iter",
        "1",
        "--max-steps",
        "2",
        "--eval-freq",
        "2",
    ]
    assert train_cli([*args, "--output-dir", str(data / "run")]) == 2
    assert f"--output-dir {data / 'run'} lies inside --data {data}" in capsys.readouterr().err
    assert sorted(path.name for path in data.iterdir()) == ["topics.txt"]
    assert train_cli([*args, "--output-dir", str(tmp_path / "first")]) == 0
    first = capsys.readouterr().out
    shutil.copytree(tmp_path / "first", data / "run")  # weights, checkpoints, metrics and plots among the text
    assert train_cli([*args, "--output-dir", str(tmp_path / "second"), "--dry-run"]) == 0
    second = capsys.readouterr().out
    assert f"--data {data}: left out {data / 'run'} (model files and run or model directories are not text)" in second
    plan = lambda printed: [line for line in printed.splitlines() if line.startswith(("  data", "  split"))]  # noqa
    assert plan(second) == plan(first) and len(plan(first)) == 2
