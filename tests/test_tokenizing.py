"""train.tokenizing: tiktoken gives exactly HF tokenizers' IDs for every byte-level BPE it takes; the others stay with
HF tokenizers, which say why.

The expected IDs are always HF's own (transformers' fast tokenizer, or the `tokenizers` Tokenizer a test builds).
"""

from __future__ import annotations

import json

import pytest
import tiktoken
from conftest import GPT2_PATTERN, shared_file
from data_helpers import EOS, _word_tokenizer
from hypothesis import given
from hypothesis import strategies as st
from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

from train.tokenizing import PieceTokenizer, encoder_source

# Every character Python or Unicode counts as a space, and the invisible ones that neither does.
SPACES = [chr(code) for code in range(0x3100) if chr(code).isspace()] + ["\u200b", "\u180e", "\u2060", "\ufeff"]
UNICODE = (
    "naïve café Ünïcödé ﬁ e\u0301 日本語のテキスト 한국어 Ελληνικά русский עברית العربية ١٢٣ ١ ２０２４ ⅻ ½ 🙂👩‍💻🇫🇷"
)
PUNCTUATION = "'s 'S 'll 'LL ’s don't ... !!! ?! -- __init__ <tag/> $1,000.00 3.14e-10 ((x)) #!@ \\ \" `"


def built_text() -> str:
    """Text built here, with what tokenisers split differently when they disagree: unicode of many scripts, runs of
    every kind of space (between words, before digits and punctuation, at line ends, at the end), `<|endoftext|>`
    written in the text (at the start, twice, inside words, unfinished)."""
    runs = "".join(f"word{s}word {s}{s}x{s}{s}{s}1{s}!{s} {s}\n{s}\t{s}{s}\n\n{s} a{s * 5}b" for s in SPACES)
    eos = f"{EOS}start {EOS}{EOS} in{EOS}side {EOS} \n{EOS}\n <|endoftext|  <|endoftext|>> <|endo"
    return f"{eos}\n{UNICODE}\n{PUNCTUATION}\n{runs}\n{UNICODE} {PUNCTUATION}   \n\t "


def hf_ids(tokenizer, text: str) -> list[int]:
    """HF's IDs: a transformers tokenizer's or a `tokenizers` Tokenizer's, without added special tokens."""
    if isinstance(tokenizer, Tokenizer):
        return tokenizer.encode(text, add_special_tokens=False).ids
    return tokenizer.encode(text, add_special_tokens=False)


def piece_tokenizer(tokenizer) -> tuple[PieceTokenizer, str]:
    """Our PieceTokenizer for a transformers tokenizer or a `tokenizers` Tokenizer, and the library it encodes with."""
    serialised = tokenizer.to_str() if isinstance(tokenizer, Tokenizer) else tokenizer.backend_tokenizer.to_str()
    eos_id = json.loads(serialised)["added_tokens"][0]["id"]
    source, library = encoder_source(serialised)
    return PieceTokenizer(source, eos_id, "uint32"), library


@pytest.fixture(scope="module")
def fitted():
    """A byte-level BPE fitted as `tokenizer train` fits it, on text that gives it merges of spaces and unicode."""
    from pydoc_data.topics import topics

    from train.vocabulary import train_bpe_tokenizer

    return train_bpe_tokenizer([built_text() * 3, *(topics[key] for key in sorted(topics)[:20])], 1000)


@pytest.fixture(scope="module")
def gpt2():
    from common.tokenizer import load_tokenizer

    return load_tokenizer(shared_file("gpt2-bpe"))


@pytest.fixture(scope="module", params=["fitted", "gpt2"])
def byte_level(request):
    """Each byte-level BPE a run uses (a fitted one, and GPT-2's where ../shared/data has it) with our
    PieceTokenizer for it, which must encode with tiktoken."""
    tokenizer = request.getfixturevalue(request.param)
    encode, library = piece_tokenizer(tokenizer)
    assert library == "tiktoken"
    return tokenizer, encode


def test_built_text_and_documents_get_hf_ids_from_tiktoken(byte_level):
    tokenizer, encode = byte_level
    text = built_text()
    assert encode([(text, False)]).tolist() == hf_ids(tokenizer, text)
    # Documents joined by the separator, empty ones among them, as HF tokenises them joined by <|endoftext|>.
    documents = ["", "first doc", "", "", f"{EOS} written", " ", "", "last\n"]
    task = [(document, index > 0) for index, document in enumerate(documents)]
    assert encode(task).tolist() == hf_ids(tokenizer, EOS.join(documents))
    assert encode([("", True)]).tolist() == hf_ids(tokenizer, EOS)


@pytest.mark.parametrize("name", ["the-verdict.txt", "tinyshakespeare.txt"])
@pytest.mark.parametrize("tokenizer_kind", ["gpt2", "fitted on the corpus"])
def test_the_shared_corpora_get_hf_ids_from_tiktoken(name, tokenizer_kind, request):
    from train.vocabulary import train_bpe_tokenizer

    text = shared_file(name).read_text(encoding="utf-8")
    tokenizer = request.getfixturevalue("gpt2") if tokenizer_kind == "gpt2" else train_bpe_tokenizer([text], 2000)
    encode, library = piece_tokenizer(tokenizer)
    assert library == "tiktoken"
    half = len(text) // 2
    assert encode([(text[:half], False), (text[half:], True)]).tolist() == hf_ids(
        tokenizer, text[:half] + EOS + text[half:]
    )


@given(
    st.lists(
        st.one_of(st.text(max_size=20), st.sampled_from([*SPACES, EOS, "'s", "\n", " ", "  "]), st.just(UNICODE)),
        max_size=30,
    ).map("".join)
)
def test_random_unicode_text_gets_hf_ids_from_tiktoken(byte_level, text):
    tokenizer, encode = byte_level
    assert encode([(text, False)]).tolist() == hf_ids(tokenizer, text)


@pytest.mark.slow
def test_every_code_point_in_every_position_gets_hf_ids_from_tiktoken(fitted):
    """GPT-2's pre-tokenisation as tiktoken's regex engine and HF's each run it: which characters are letters,
    digits or spaces (joined after a letter, before a digit, after a space, in runs, before a newline), and the bytes
    each is written in; for every code point of the planes in use, and a sample of the unassigned and private ones."""
    encode, _ = piece_tokenizer(fitted)
    codes = [*range(0x40000), *range(0xE0000, 0xE1000), *range(0x40000, 0x110000, 97)]
    characters = [chr(code) for code in codes if not 0xD800 <= code < 0xE000]  # no lone surrogates
    for start in range(0, len(characters), 1 << 16):
        text = "".join(f"x{c}1 {c}{c}\n" for c in characters[start : start + (1 << 16)])
        assert encode([(text, False)]).tolist() == hf_ids(fitted, text), hex(ord(characters[start]))


def test_ids_that_do_not_follow_the_merges_order_are_mapped_back(fitted):
    """tiktoken's rank is a merge's priority; a tokenizer whose IDs run the other way still gets its own IDs."""
    serialised = json.loads(fitted.backend_tokenizer.to_str())
    vocab = serialised["model"]["vocab"]
    reverse = {token: len(vocab) - 1 - index for token, index in vocab.items()}
    serialised["model"]["vocab"] = reverse
    for token in serialised["added_tokens"]:
        token["id"] = reverse[token["content"]]
    tokenizer = Tokenizer.from_str(json.dumps(serialised))
    encode, library = piece_tokenizer(tokenizer)
    assert library == "tiktoken"
    text = built_text()
    assert encode([(text, False)]).tolist() == hf_ids(tokenizer, text) != hf_ids(fitted, text)


def byte_level_bpe(merges, added=None, **options) -> Tokenizer:
    """A byte-level BPE with GPT-2's pre-tokenisation: the 256 bytes, then each merge's result; `<|endoftext|>`, or
    the `added` tokens."""
    vocab = {char: index for index, char in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, **options))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.add_special_tokens(added or [AddedToken(EOS, special=True)])
    return tokenizer


def test_a_merged_token_hf_never_makes_from_its_own_bytes_keeps_hf_tokenizers():
    """ "abc" is a token (merged from "ab" and "c"), but "bc" merges first, and HF lists no merge of "a" with "bc":
    HF writes "abc" as a, bc; tiktoken, which joins any two tokens whose bytes make a token, as abc."""
    tokenizer = byte_level_bpe([("b", "c"), ("a", "b"), ("ab", "c")])
    ranks = {bytes([byte]): byte for byte in range(256)} | {b"bc": 256, b"ab": 257, b"abc": 258}
    bare = tiktoken.Encoding("bare", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={})
    assert [len(token) for token in tokenizer.encode("abc").tokens] == [1, 2]
    assert bare.encode("abc") == [258]
    encode, library = piece_tokenizer(tokenizer)
    assert "does not come out whole" in library
    assert encode([("abc xabc", False)]).tolist() == hf_ids(tokenizer, "abc xabc")


def word_level() -> Tokenizer:
    tokenizer = _word_tokenizer(300)
    tokenizer.add_special_tokens([EOS])
    return tokenizer


def metaspace_bpe() -> Tokenizer:
    tokenizer = byte_level_bpe([("a", "b")])
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    return tokenizer


def prefix_space_bpe() -> Tokenizer:
    tokenizer = byte_level_bpe([("Ġ", "a")])
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    return tokenizer


def without_byte(byte: str) -> Tokenizer:
    serialised = json.loads(byte_level_bpe([("a", "b")]).to_str())
    serialised["model"]["vocab"].pop(byte)
    return Tokenizer.from_str(json.dumps(serialised))


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        (word_level, "its model is WordLevel, not a BPE"),
        (metaspace_bpe, "pre-tokeniser is not GPT-2's"),
        (prefix_space_bpe, "pre-tokeniser is not GPT-2's"),
        (lambda: byte_level_bpe([("a", "b")], dropout=1.0), "dropout"),  # 1: never merges, so HF's IDs are fixed
        (lambda: byte_level_bpe([("a", "b")], ignore_merges=True), "whole words"),
        (lambda: without_byte("Ċ"), "lacks some of the 256 bytes"),
        (lambda: byte_level_bpe([("a", "b"), ("b", "c"), ("ab", "c"), ("a", "bc")]), "two of its merges"),
        (lambda: byte_level_bpe([("a", "b")], added=[AddedToken(EOS, lstrip=True, special=True)]), "strips spaces"),
        (lambda: byte_level_bpe([("a", "b")], added=[AddedToken(EOS), AddedToken(EOS + "x")]), "holds another"),
    ],
)
def test_a_tokenizer_tiktoken_cannot_take_keeps_hf_tokenizers_and_says_why(build, reason):
    tokenizer = build()
    encode, library = piece_tokenizer(tokenizer)
    assert library.startswith("HF tokenizers (tiktoken cannot take this tokenizer: ") and reason in library
    text = f"w1 w2 ab abc  {EOS}x {EOS}\n w3"
    assert encode([(text, False), ("ab", True)]).tolist() == hf_ids(tokenizer, f"{text}{EOS}ab")
