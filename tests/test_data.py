"""train.data: corpus sources, the book's split and windows, the tokenizer, Arrow-backed tokens, and data errors."""

from __future__ import annotations

import datasets
import pytest
import torch
from conftest import tiktoken_gpt2
from transformers import AutoTokenizer

from train import data as D



@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """Arrow caches and fitted tokenizers of this module, out of the user's Hugging Face cache."""
    return tmp_path_factory.mktemp("datasets-cache")


@pytest.fixture(scope="module")
def small_tokenizer(cache_dir):
    """A 300-token byte-level BPE fitted on part of the embedded corpus."""
    from pydoc_data.topics import topics

    texts = [topics[key] for key in sorted(topics)[:20]]
    documents = datasets.Dataset.from_dict({"text": texts, "doc_start": [True] * len(texts)}, D.DOCUMENT_FEATURES)
    return D.train_bpe_tokenizer(documents, 300, cache_dir)


def documents(texts, starts=None):
    starts = starts or [True] * len(texts)
    return datasets.Dataset.from_dict({"text": texts, "doc_start": starts}, D.DOCUMENT_FEATURES)


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
    our_train, our_val = batches(D.create_dataloader, tokenizer=tokenizer)
    assert (len(our_train), len(our_val)) == (len(book_train), len(book_val)) == (9, 1)
    for ours, theirs in zip(our_train + our_val, book_train + book_val):
        assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])
        assert ours[0].dtype == torch.long


def test_windows_follow_the_books_range_and_shift():
    """Window i = tokens [i*stride, i*stride + L + 1), over row boundaries; count = len(range(0, N - L, stride))."""
    tokens = datasets.Dataset.from_dict({"input_ids": [list(range(10)), list(range(10, 25))]}, D.TOKEN_FEATURES)
    windows = D.TokenWindows(tokens, context_length=4, stride=3)
    starts = list(range(0, 25 - 4, 3))
    assert windows.num_tokens == 25 and len(windows) == len(starts)
    for index, start in enumerate(starts):
        inputs, targets = windows[index]
        assert inputs.tolist() == list(range(start, start + 4))
        assert targets.tolist() == list(range(start + 1, start + 5))
    with pytest.raises(IndexError):
        windows[len(windows)]


def test_split_cuts_the_text_at_the_ratio_and_joins_documents_with_endoftext(small_tokenizer):
    one = "a" * 7 + "b" * 3
    train, val = D.split_documents(documents([one]), 0.9)
    assert (train["text"], val["text"]) == ([one[:9]], [one[9:]])  # the book's text[:split_idx], text[split_idx:]

    train, val = D.split_documents(documents(["first doc.", "second text", "third"]), 0.5)
    # 26 characters: the cut at 13 falls 3 characters into the second document, which both splits share.
    assert train["text"] == ["first doc.", "sec"] and train["doc_start"] == [True, True]
    assert val["text"] == ["ond text", "third"] and val["doc_start"] == [False, True]

    eos = small_tokenizer.eos_token_id
    encode = lambda text: small_tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    train_windows = D.TokenWindows(D.tokenize_documents(train, small_tokenizer), 1, 1)
    val_windows = D.TokenWindows(D.tokenize_documents(val, small_tokenizer), 1, 1)
    assert train_windows.stream.to_pylist() == encode("first doc.") + [eos] + encode("sec")
    assert val_windows.stream.to_pylist() == encode("ond text") + [eos] + encode("third")


def test_local_files_directories_and_globs(tmp_path, cache_dir):
    (tmp_path / "corpus" / "sub").mkdir(parents=True)
    (tmp_path / "corpus" / "a.txt").write_text("alpha text\n", encoding="utf-8")
    (tmp_path / "corpus" / "sub" / "b.md").write_text("beta text\n", encoding="utf-8")
    (tmp_path / "corpus" / ".hidden").write_text("left out\n", encoding="utf-8")
    single = tmp_path / "c.txt"
    single.write_text("gamma text\n", encoding="utf-8")

    corpus = D.local_corpus([str(tmp_path / "corpus"), str(tmp_path / "*.txt")], cache_dir=cache_dir)
    assert corpus.documents["text"] == ["alpha text\n", "beta text\n", "gamma text\n"]
    assert corpus.description.startswith("a.txt, b.md, c.txt")


def test_a_directory_walk_leaves_out_runs_model_directories_and_model_files(tmp_path, cache_dir):
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
    corpus_read = D.local_corpus([str(corpus)], cache_dir=cache_dir, log=logged.append)
    assert corpus_read.documents["text"] == ["beta text\n", "alpha text\n"]
    assert logged == [f"--data {corpus}: left out {model}, {corpus / 'optimizer.bin'}, {run} and 1 more (model "
                      "files and run or model directories are not text)"]
    with pytest.raises(D.DataError, match="optimizer.bin is not text: a NUL byte at byte offset 0"):
        D.local_corpus([str(named)], cache_dir=cache_dir)


@pytest.mark.parametrize(
    "content, offset, message",
    [
        (b"hello\xffworld", 5, "byte 0xff at byte offset 5"),
        ("h\u00e9llo\u20ac".encode() + b"\x00rest", 9, "NUL byte at byte offset 9"),
    ],
)
def test_a_file_that_is_not_text_is_named_with_the_byte_offset(tmp_path, cache_dir, content, offset, message):
    path = tmp_path / "data.bin"
    path.write_bytes(content)
    with pytest.raises(D.DataError, match=message) as error:
        D.local_corpus([str(path)], cache_dir=cache_dir)
    assert str(path) in str(error.value)


def test_large_files_are_read_in_pieces_that_tokenize_like_the_whole(tmp_path, small_tokenizer):
    """Pieces cut at a newline between words: their tokens, concatenated, are the whole file's tokens."""
    text = "".join(f"Line {i}: caf\u00e9 na\u00efve  spaced\n\nword{i}\n" for i in range(300))
    path = tmp_path / "big.txt"
    path.write_text(text, encoding="utf-8")
    pieces = list(D.read_text_pieces(path, block_bytes=100))
    assert len(pieces) > 10 and "".join(pieces) == text
    encode = lambda piece: small_tokenizer.encode(piece, add_special_tokens=False)  # noqa: E731
    assert [token for piece in pieces for token in encode(piece)] == encode(text)

    bad = tmp_path / "late.txt"
    bad.write_bytes(("\u00e9" * 300).encode() + b"\xfe")  # the bad byte lies in a later block
    with pytest.raises(D.DataError, match="byte offset 600"):
        list(D.read_text_pieces(bad, block_bytes=7))  # odd blocks also split the 2-byte characters


def test_dedup_drops_exact_duplicate_documents():
    texts = ["alpha", "beta", "alpha", "gam", "ma", "gam", "ma", "beta"]
    starts = [True, True, True, True, False, True, False, True]  # "gam"+"ma" is one document in two rows
    kept, dropped = D.deduplicate(documents(texts, starts))
    assert dropped == 3
    assert kept["text"] == ["alpha", "beta", "gam", "ma"]
    assert D.count_documents(kept) == 3


def test_trained_tokenizer_is_saved_for_autotokenizer(tmp_path, small_tokenizer, cache_dir):
    assert len(small_tokenizer) == 300
    assert small_tokenizer.eos_token == "<|endoftext|>"
    sample = "def f(x):\n    return x<|endoftext|>The for statement"
    ids = small_tokenizer.encode(sample, add_special_tokens=False)
    assert ids.count(small_tokenizer.eos_token_id) == 1  # the special token is one token, not its characters
    small_tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded.encode(sample, add_special_tokens=False) == ids
    assert reloaded.decode(ids) == sample


def test_too_little_text_for_one_window_gives_the_token_counts(small_tokenizer):
    with pytest.raises(D.DataError, match=r"has \d+ tokens, too few for one window of 256 tokens \(which needs 257\)"):
        D.windows_from_text("A short text.", small_tokenizer, context_length=256, stride=256)


def test_hub_dataset_offline_names_the_local_file_alternative(cache_dir):
    with pytest.raises(D.DataError, match=r"--dataset someone/no-such-dataset: .*--data PATH"):
        D.hub_corpus("someone/no-such-dataset", cache_dir=cache_dir)


def test_embedded_corpus_ships_with_python(cache_dir):
    corpus = D.embedded_corpus("pydoc", cache_dir=cache_dir)
    assert "pydoc_data" in corpus.description
    assert len(corpus.documents) > 50
    assert D.document_lengths(corpus.documents).sum() > 400_000


def test_prepared_tokens_are_memory_mapped_arrow_caches(tmp_path, cache_dir):
    """Tokens go to Arrow files (memory-mapped, reused by the next run), not to Python lists."""
    from datasets.table import ConcatenationTable, MemoryMappedTable

    from pydoc_data.topics import topics

    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(topics[key] for key in sorted(topics)[:10]), encoding="utf-8")
    prepare = lambda: D.prepare_data(  # noqa: E731
        context_length=32, data=[str(path)], vocab_size=300, cache_dir=cache_dir, log=lambda message: None
    )
    first = prepare()
    tokens = first.train.tokens_dataset
    assert tokens.cache_files and isinstance(tokens.data, (MemoryMappedTable, ConcatenationTable))
    second = prepare()
    assert second.train.tokens_dataset.cache_files == tokens.cache_files
    assert second.train.num_tokens == first.train.num_tokens > 0
