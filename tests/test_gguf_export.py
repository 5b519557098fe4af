"""convert.gguf_export: a model directory as a GGUF file, read back by gguf's reader, transformers and llama.cpp.

Each check runs for a fitted byte-level BPE (conftest's `byte_level_bpe`, whose `<|endoftext|>` is ID 0) and for
GPT-2's own tokenizer (../shared/data/gpt2-bpe; skipped cleanly without it).
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from conftest import TEXT, byte_level_bpe, shared_file, tiny_model_for
from transformers import AutoModelForCausalLM, AutoTokenizer

from common.model_dir import save_model_directory
from common.tokenizer import load_tokenizer
from convert.export import export_model

TEXTS = [
    "Every effort moves you",
    "  leading, trailing   and   inner runs of spaces  \t\ttabs\n\n\nnew lines \r\n",
    "Naïve café — « déjà vu », 日本語, emoji 🙂 and 12345.67",
    "one<|endoftext|>two <|endoftext|> three<|endoftext|>",
    TEXT,
]
# Relative to the largest |logit|, how far transformers' logits from each file type may lie from the model's, and why:
# the file's matrices are rounded and the error of a logit grows with the number of products summed into it.
# f32: the same numbers, summed in another order (conftest.assert_same_logits' 1e-5). f16 keeps 11 bits
# (rounding error 2^-12, 2.4e-4 of each weight), bf16 8 bits (2e-3), q8_0 integers of 8 bits per block of 32 scaled
# by the block's largest (up to 1/254 = 4e-3 of it): measured 2.6e-4, 2.3e-3 and 6.7e-3 of the largest logit here,
# the bounds 4 times that; a wrong tensor moves logits by about their whole range.
TOLERANCES = {"f32": 1e-5, "f16": 1e-3, "bf16": 1e-2, "q8_0": 3e-2}


def model_directory(kind: str, folder: Path) -> tuple[Path, object, object]:
    """A model directory (2 layers, context 32) with a fitted tokenizer or GPT-2's, its model and its tokenizer."""
    tokenizer = load_tokenizer(shared_file("gpt2-bpe")) if kind == "gpt2" else byte_level_bpe(TEXT, vocab_size=320)
    model = tiny_model_for(tokenizer)
    return save_model_directory(model, tokenizer, folder / f"{kind}-model"), model, tokenizer


@pytest.fixture(scope="module", params=["fitted", "gpt2"])
def source(request, tmp_path_factory) -> tuple[Path, object, object, Path]:
    """Each tokenizer's model directory, model, tokenizer, and the directory exported as an f32 GGUF file."""
    folder = tmp_path_factory.mktemp("gguf")
    directory, model, tokenizer = model_directory(request.param, folder)
    return directory, model, tokenizer, export_model(directory, "gguf", folder / "model.gguf")


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> tuple[object, dict[str, Path]]:
    """The fitted tokenizer's model, and its directory exported in each dtype (GPT-2's 50,257 tokens would only make
    each file slower to read)."""
    folder = tmp_path_factory.mktemp("gguf-dtypes")
    directory, model, _ = model_directory("fitted", folder)
    return model, {
        dtype: export_model(directory, "gguf", folder / f"model-{dtype}.gguf", dtype) for dtype in TOLERANCES
    }


def value(reader: gguf.GGUFReader, key: str):
    return reader.fields[key].contents()


def test_the_file_holds_gpt2s_architecture_context_and_tokenizer(source):
    _, model, tokenizer, path = source
    reader = gguf.GGUFReader(path)
    config = model.config
    assert value(reader, "general.architecture") == "gpt2"
    assert value(reader, "gpt2.context_length") == config.context_length == 32
    assert value(reader, "gpt2.block_count") == config.n_layers
    assert value(reader, "gpt2.embedding_length") == config.emb_dim
    assert value(reader, "gpt2.feed_forward_length") == 4 * config.emb_dim
    assert value(reader, "gpt2.attention.head_count") == config.n_heads
    assert value(reader, "gpt2.attention.layer_norm_epsilon") == pytest.approx(config.layer_norm_eps)
    assert value(reader, "tokenizer.ggml.model") == "gpt2" and value(reader, "tokenizer.ggml.pre") == "gpt-2"
    assert value(reader, "tokenizer.ggml.tokens") == tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    end = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    types = value(reader, "tokenizer.ggml.token_type")
    assert types[end] == gguf.TokenType.CONTROL and set(types[:end] + types[end + 1 :]) == {gguf.TokenType.NORMAL}
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    assert value(reader, "tokenizer.ggml.merges") == [" ".join(pair) for pair in merges]
    assert value(reader, "tokenizer.ggml.eos_token_id") == tokenizer.eos_token_id == end
    assert value(reader, "tokenizer.ggml.add_bos_token") is False
    assert "output.weight" not in {tensor.name for tensor in reader.tensors}  # tied: the embedding is the head


@pytest.mark.parametrize("dtype", list(TOLERANCES))
def test_tensor_shapes_and_types(fitted, dtype):
    """1-D tensors and the position embedding stay float32 (as llama.cpp's converter keeps them); the matrices take
    the file's type. Shapes are GGML's, fastest dimension first: [in, out] for a matrix multiplying [.., in]."""
    model, exports = fitted
    config = model.config
    tensors = {tensor.name: tensor for tensor in gguf.GGUFReader(exports[dtype]).tensors}
    assert len(tensors) == 4 + 12 * config.n_layers
    matrix_type = gguf.GGMLQuantizationType[dtype.upper()]
    expected = {
        "token_embd.weight": ([config.emb_dim, config.vocab_size], matrix_type),
        "position_embd.weight": ([config.emb_dim, config.context_length], gguf.GGMLQuantizationType.F32),
        "output_norm.bias": ([config.emb_dim], gguf.GGMLQuantizationType.F32),
        "blk.1.attn_qkv.weight": ([config.emb_dim, 3 * config.emb_dim], matrix_type),
        "blk.1.attn_qkv.bias": ([3 * config.emb_dim], gguf.GGMLQuantizationType.F32),
        "blk.0.ffn_up.weight": ([config.emb_dim, 4 * config.emb_dim], matrix_type),
        "blk.0.ffn_down.weight": ([4 * config.emb_dim, config.emb_dim], matrix_type),
    }
    for name, (shape, tensor_type) in expected.items():
        assert (list(tensors[name].shape), tensors[name].tensor_type) == (shape, tensor_type), name


def logits_of(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("dtype", list(TOLERANCES))
def test_transformers_reads_the_file_back_into_the_same_model(fitted, dtype):
    model, exports = fitted
    path = exports[dtype]
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name).eval()
    assert type(loaded).__name__ == "GPT2LMHeadModel"
    assert loaded.config.n_positions == model.config.context_length  # not GPT2Config's default 1024
    config = model.config
    ids = torch.randint(0, config.vocab_size, (2, config.context_length), generator=torch.Generator().manual_seed(0))
    ours, theirs = logits_of(model, ids), logits_of(loaded, ids)
    largest = ours.abs().max().item()
    torch.testing.assert_close(theirs, ours, rtol=0, atol=TOLERANCES[dtype] * largest)


def test_transformers_tokenizer_from_the_file_tokenizes_like_the_model_directory(source):
    directory, _, _, path = source
    from_gguf = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    from_directory = AutoTokenizer.from_pretrained(directory)
    for text in TEXTS:
        ids = from_directory(text)["input_ids"]
        assert from_gguf(text)["input_ids"] == ids, text
        assert from_gguf.decode(ids) == from_directory.decode(ids)
    assert from_gguf.eos_token == "<|endoftext|>"


def test_matrices_whose_rows_are_not_whole_q8_0_blocks_fall_back_to_f16(tmp_path):
    """llama.cpp's converter does the same: a q8_0 block is 32 numbers, and a row of 48 is not whole blocks."""
    tokenizer = byte_level_bpe(TEXT, vocab_size=300)
    model = tiny_model_for(tokenizer, emb_dim=48)
    path = export_model(save_model_directory(model, tokenizer, tmp_path / "model"), "gguf", tmp_path / "m.gguf", "q8_0")
    tensors = {tensor.name: tensor.tensor_type for tensor in gguf.GGUFReader(path).tensors}
    assert tensors["blk.0.attn_qkv.weight"] == gguf.GGMLQuantizationType.F16
    assert tensors["blk.0.ffn_down.weight"] == gguf.GGMLQuantizationType.Q8_0  # rows of 4 x 48 = 192 = 6 blocks
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf").eval()
    ids = torch.randint(0, len(tokenizer), (1, 16), generator=torch.Generator().manual_seed(1))
    ours = logits_of(model, ids)
    torch.testing.assert_close(logits_of(loaded, ids), ours, rtol=0, atol=TOLERANCES["q8_0"] * ours.abs().max().item())


# ---------------------------------------------------------------------------------------------------------------------
# llama.cpp itself (llama-cpp-python builds it from source: see the dev extra)


@pytest.mark.slow
def test_llama_cpp_tokenizes_like_the_model_directory_and_computes_the_same_logits(source):
    llama_cpp = pytest.importorskip("llama_cpp")
    _, model, tokenizer, path = source
    llm = llama_cpp.Llama(str(path), n_ctx=model.config.context_length, logits_all=True, n_threads=1, verbose=False)
    try:
        for text in TEXTS:
            ids = tokenizer(text)["input_ids"]
            # special=True: `<|endoftext|>` in the text is the token, as the model directory's tokenizer reads it.
            assert llm.tokenize(text.encode("utf-8"), special=True) == ids, text
        ids = tokenizer(TEXT)["input_ids"][: model.config.context_length]
        llm.eval(ids)
        theirs = np.asarray(llm.scores[: len(ids)])
        ours = logits_of(model, torch.tensor([ids]))[0].numpy()
    finally:
        llm.close()
    assert np.abs(theirs - ours).max() < 5e-3
    assert (theirs.argmax(-1) == ours.argmax(-1)).all()
