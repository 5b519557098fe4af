"""train.data: corpus sources, the book's split and windows, the tokenizer, token files on disk, and data errors."""

from __future__ import annotations

import errno
import json
import os
import pickle
import threading
import time

import numpy as np
import psutil
import pytest
import torch
from conftest import tiktoken_gpt2
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from common.errors import InputError
from train import corpus as C
from train import data as D
from train import token_files as T
from train import vocabulary as V
from train import windows as W
from train.tokenizing import PieceTokenizer, safe_pieces, token_dtype

EOS = "<|endoftext|>"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """Token files and fitted tokenizers of this module, out of the user's Hugging Face cache."""
    return tmp_path_factory.mktemp("token-cache")


@pytest.fixture(scope="module")
def small_tokenizer():
    """A 300-token byte-level BPE fitted on part of the embedded corpus."""
    from pydoc_data.topics import topics

    return V.train_bpe_tokenizer([topics[key] for key in sorted(topics)[:20]], 300)


def corpus_of(pieces):
    """A Corpus over (text, starts a document) pairs held in memory."""
    return C.Corpus("test pieces", {"pieces": pieces}, lambda: iter(pieces))


def quiet_prepare(**kwargs):
    return D.prepare_tokens(progress=False, log=lambda message: None, **kwargs)


@pytest.mark.parametrize("tokenizer_kind", ["transformers", "tiktoken"])
def test_create_dataloader_builds_the_books_loaders(verdict_text, gpt2_bpe_dir, monkeypatch, tokenizer_kind):
    """The book's settings (the-verdict.txt, GPT-2, ratio 0.9, context 256, stride 256, batch 2) give its batches."""
    from llms_from_scratch import ch02

    from common.tokenizer import load_tokenizer

    encoding = tiktoken_gpt2(gpt2_bpe_dir)
    monkeypatch.setattr(ch02.tiktoken, "get_encoding", lambda name: encoding)
    tokenizer = load_tokenizer(gpt2_bpe_dir) if tokenizer_kind == "transformers" else encoding
    split_idx = int(0.90 * len(verdict_text))
    train_text, val_text = verdict_text[:split_idx], verdict_text[split_idx:]

    def batches(create, **extra):
        torch.manual_seed(123)  # as the book does before building its loaders
        train = create(train_text, batch_size=2, max_length=256, stride=256, drop_last=True, shuffle=True, **extra)
        val = create(val_text, batch_size=2, max_length=256, stride=256, drop_last=False, shuffle=False, **extra)
        return list(train), list(val)

    book_train, book_val = batches(ch02.create_dataloader_v1)
    our_train, our_val = batches(W.create_dataloader, tokenizer=tokenizer)
    assert (len(our_train), len(our_val)) == (len(book_train), len(book_val)) == (9, 1)
    for ours, theirs in zip(our_train + our_val, book_train + book_val):
        assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])
        assert ours[0].dtype == torch.long


def test_windows_follow_the_books_range_and_shift():
    """Window i = tokens [i*stride, i*stride + L + 1); count = len(range(0, N - L, stride))."""
    windows = W.TokenWindows(np.arange(25, dtype=np.uint16), context_length=4, stride=3)
    starts = list(range(0, 25 - 4, 3))
    assert windows.num_tokens == 25 and len(windows) == len(starts)
    for index, start in enumerate(starts):
        inputs, targets = windows[index]
        assert inputs.dtype == targets.dtype == torch.int64
        assert inputs.tolist() == list(range(start, start + 4))
        assert targets.tolist() == list(range(start + 1, start + 5))
    with pytest.raises(IndexError):
        windows[len(windows)]


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


def write_documents(root, texts):
    """One file per text under `root`, named so that their order is the list's; returns the texts read back."""
    root.mkdir(parents=True, exist_ok=True)
    for index, text in enumerate(texts):
        (root / f"{index:03d}.txt").write_text(text, encoding="utf-8")
    return [(root / f"{index:03d}.txt").read_text(encoding="utf-8") for index in range(len(texts))]


def expected_streams(documents, ratio, tokenizer):
    """The book's way, computed here apart from the pipeline: the documents' text cut at character
    int(ratio * total), each split's documents joined with <|endoftext|> and tokenised whole."""
    documents = [text for text in documents if text]  # an empty file is no document
    cut = int(ratio * sum(map(len, documents)))
    train, val, seen = [], [], 0
    for text in documents:
        if seen + len(text) <= cut:
            train.append(text)
        elif seen >= cut:
            val.append(text)
        else:
            train.append(text[: cut - seen])
            val.append(text[cut - seen :])
        seen += len(text)
    encode = lambda texts: tokenizer.encode(EOS.join(texts), add_special_tokens=False)  # noqa: E731
    return encode(train), encode(val)


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


def test_trained_tokenizer_is_saved_for_autotokenizer(tmp_path, small_tokenizer):
    assert len(small_tokenizer) == 300
    assert small_tokenizer.eos_token == "<|endoftext|>"
    sample = "def f(x):\n    return x<|endoftext|>The for statement"
    ids = small_tokenizer.encode(sample, add_special_tokens=False)
    assert ids.count(small_tokenizer.eos_token_id) == 1  # the special token is one token, not its characters
    small_tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded.encode(sample, add_special_tokens=False) == ids
    assert reloaded.decode(ids) == sample


def test_the_fitted_tokenizer_merges_only_pairs_seen_min_frequency_times(tmp_path):
    """At --min-frequency 2 a pair the text holds once stays unmerged, so a small text gets fewer tokens than
    --vocab-size; at 1 every pair may merge. The cache keeps the two apart."""
    text = "the cat the cat the cat zq"  # " cat": each of its pairs 3 times; " zq": each of its pairs once
    fit = lambda min_frequency: V.fit_tokenizer(  # noqa: E731
        lambda: ([text], len(text)), 400, min_frequency, {"corpus": "test"}, tmp_path, progress=False
    )
    pairs_twice, every_pair = fit(2), fit(1)
    assert len(pairs_twice.encode(" cat")) == len(every_pair.encode(" cat")) == 1
    assert len(pairs_twice.encode(" zq")) == 3 and len(every_pair.encode(" zq")) == 1
    assert len(pairs_twice) < len(every_pair) < 400
    assert len(list((tmp_path / "gptscratch-tokenizers").iterdir())) == 2


def test_the_tokenizer_of_a_large_corpus_is_fitted_on_an_even_sample():
    """Past the cap, every text gives the same leading share, so the sample spans the corpus and holds about the
    cap; below it, the texts go in whole."""
    texts = ["a" * 1000, "b" * 10, "c" * 4000]
    assert list(V.tokenizer_sample(texts, 5010, limit=10_000)) == texts
    sample = list(V.tokenizer_sample(texts, 5010, limit=501))
    assert sample == ["a" * 100, "b", "c" * 400]
    assert 501 <= sum(map(len, sample)) <= 501 + len(texts)


def test_too_little_text_for_one_window_gives_the_token_counts(small_tokenizer):
    with pytest.raises(C.DataError, match=r"has \d+ tokens, too few for one window of 256 tokens \(which needs 257\)"):
        W.windows_from_text("A short text.", small_tokenizer, context_length=256, stride=256)


def test_hub_dataset_offline_names_the_local_file_alternative(cache_dir):
    with pytest.raises(C.DataError, match=r"dataset someone/no-such-dataset: .*with data PATH"):
        C.hub_corpus("someone/no-such-dataset", cache_dir=cache_dir)


def test_embedded_corpus_ships_with_python():
    corpus = C.embedded_corpus("pydoc")
    assert "pydoc_data" in corpus.description
    assert sum(1 for _ in corpus.pieces()) > 50
    assert C.scan_corpus(corpus, progress=False).characters > 400_000


# ---------------------------------------------------------------------------------------------------------------------
# Token files: memory-mapped, cached, reused, never trusted half-written


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


def test_windows_travel_to_dataloader_workers_without_a_copy_of_the_stream(tmp_path):
    tokens = np.arange(5000, dtype=np.uint16)
    tokens.tofile(tmp_path / "train.bin")
    windows = W.TokenWindows(np.memmap(tmp_path / "train.bin", dtype=np.uint16, mode="r"), 16, 16)
    pickled = pickle.dumps(windows)
    assert len(pickled) < 1000  # the file name, not the 10 KB stream
    again = pickle.loads(pickled)
    assert isinstance(again.tokens, np.memmap) and len(again) == len(windows)
    assert torch.equal(again[7][1], windows[7][1])
    loader = torch.utils.data.DataLoader(windows, batch_size=8, num_workers=2)
    assert torch.equal(torch.cat([inputs for inputs, _ in loader]), torch.stack([windows[i][0] for i in range(312)]))


def test_token_ids_are_stored_in_16_bits_while_the_vocabulary_fits():
    assert token_dtype(50257) == np.uint16 and token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32 and token_dtype(200_000) == np.uint32
    encode = PieceTokenizer(
        PreTrainedTokenizerFast(tokenizer_object=_word_tokenizer(70000)).backend_tokenizer.to_str(), 69999, "uint32"
    )
    assert encode([("w69998 w3", False), ("w5", True)]).tolist() == [69998, 3, 69999, 5]
    with pytest.raises(ValueError, match="does not fit uint16"):
        PieceTokenizer(encode.tokenizer.to_str(), 69999, "uint16")([("w69998", False)])


def _word_tokenizer(size: int):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({f"w{i}": i for i in range(size)}, unk_token="w0"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tokenizer


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


# ---------------------------------------------------------------------------------------------------------------------
# Streamed datasets


@pytest.fixture(scope="module")
def stream_documents(tmp_path_factory):
    """Documents in a local JSON-lines file, which datasets streams offline, and their texts."""
    from pydoc_data.topics import topics

    texts = [topics[key][:700] for key in sorted(topics)[:40]] + [""]  # an empty document too
    path = tmp_path_factory.mktemp("stream") / "documents.jsonl"
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts), encoding="utf-8")
    return path, texts


def open_json_stream(path):
    import datasets

    return datasets.load_dataset("json", data_files=str(path), split="train", streaming=True)


def test_a_stream_is_cut_into_the_windows_token_files_hold_and_resumes_where_it_stopped(
    stream_documents, small_tokenizer
):
    from train.streaming import DocumentTokens, StreamedWindows

    path, texts = stream_documents
    context, stride = 16, 11
    stream = StreamedWindows(DocumentTokens(open_json_stream(path), "text", small_tokenizer), context, stride, 1, 0)
    whole = np.array(small_tokenizer.encode(EOS.join(texts), add_special_tokens=False))
    expected = W.TokenWindows(whole, context, stride)
    in_order = [stream.next_window() for _ in range(len(expected))]  # a buffer of 1 draws in order
    assert [window.tolist() for window in in_order] == [
        torch.cat([expected[i][0], expected[i][1][-1:]]).tolist() for i in range(len(expected))
    ]

    def shuffled():
        return StreamedWindows(DocumentTokens(open_json_stream(path), "text", small_tokenizer), context, stride, 20, 7)

    first = shuffled()
    before = [first.next_window() for _ in range(30)]
    state = first.state_dict()
    after = [first.next_window() for _ in range(len(expected) + 40)]  # past the end: the next epoch
    # Drawn from the stream's windows, out of order.
    assert set(map(tuple, before)) <= set(map(tuple, in_order)) and len(set(map(tuple, before))) == 30
    assert [window.tolist() for window in before] != [window.tolist() for window in in_order[:30]]
    resumed = shuffled()
    resumed.load_state_dict(state)
    assert [window.tolist() for window in (resumed.next_window() for _ in after)] == [w.tolist() for w in after]


def test_a_stream_position_survives_a_checkpoint_file(tmp_path, stream_documents, small_tokenizer):
    from train.streaming import DocumentTokens, StreamedWindows

    path, _ = stream_documents
    make = lambda: StreamedWindows(DocumentTokens(open_json_stream(path), "text", small_tokenizer), 8, 8, 5, 3)  # noqa: E731
    first = make()
    batches = first.batches(2)
    next(batches)
    first.save(tmp_path)
    expected = [next(batches) for _ in range(3)]
    resumed = make()
    resumed.load(tmp_path)
    for (inputs, targets), (expected_inputs, expected_targets) in zip(resumed.batches(2), expected):
        assert torch.equal(inputs, expected_inputs) and torch.equal(targets, expected_targets)
        assert inputs.shape == (2, 8) and torch.equal(inputs[:, 1:], targets[:, :-1])
    with pytest.raises(C.DataError, match="has no stream position for process 0"):
        make().load(tmp_path / "elsewhere")
