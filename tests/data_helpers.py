"""Shared by the data tests: token files prepared quietly, documents written, the split's expected tokens."""

from __future__ import annotations

from train import data as D

EOS = "<|endoftext|>"


def quiet_prepare(**kwargs):
    return D.prepare_tokens(progress=False, log=lambda message: None, **kwargs)


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


def _word_tokenizer(size: int):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({f"w{i}": i for i in range(size)}, unk_token="w0"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tokenizer
