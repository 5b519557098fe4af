"""Write a GPTScratch model as a GGUF file for llama.cpp, through llama.cpp's own writer (`gguf.GGUFWriter`).

GPTScratch is GPT-2's architecture, so the file holds what llama.cpp's `convert_hf_to_gguf.py` writes for a
GPT2LMHeadModel: architecture `gpt2`, GPT-2's hyperparameters, the tensors under the names `gguf.TensorNameMap`
gives GPT-2's (from `convert.gpt2_export.gpt2_state_dict`; projection matrices turned from [in, out] to the
[out, in] llama.cpp multiplies by), and the byte-level BPE tokenizer (tokens, token types, merges, special IDs,
chat template) with llama.cpp's GPT-2 pre-tokenizer, `gpt-2`. The converter names a pre-tokenizer by hashing what a
tokenizer makes of a test text, and refuses a fitted tokenizer, whose hash it has never seen; every tokenizer
gptscratch makes splits text with GPT-2's pattern, so the name is written outright.

Tensor types follow the converter too: 1-D tensors (norms, biases) and the position embedding stay float32 whatever
the file type; the other matrices take it (one whose rows are not whole quantization blocks falls back to f16, as in
the converter). The head is tied to the token embedding (GPT-2's formats have no other), so the file has no
`output.weight`: llama.cpp and transformers both take the embedding. One key is for transformers' GGUF reader
alone (`common.compat.TRANSFORMERS_GGUF_CONTEXT_KEY`): without it, transformers builds a model of 1,024 positions.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import gguf
import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from common.compat import TRANSFORMERS_GGUF_CONTEXT_KEY
from common.model_dir import with_chat_template
from convert.gpt2_export import gpt2_config, gpt2_state_dict
from modeling_gptscratch import GPTScratchForCausalLM

# The dtypes a GGUF file is written in: the file type, and the type its matrices take.
GGUF_DTYPES = {
    "f32": (gguf.LlamaFileType.ALL_F32, gguf.GGMLQuantizationType.F32),
    "f16": (gguf.LlamaFileType.MOSTLY_F16, gguf.GGMLQuantizationType.F16),
    "bf16": (gguf.LlamaFileType.MOSTLY_BF16, gguf.GGMLQuantizationType.BF16),
    "q8_0": (gguf.LlamaFileType.MOSTLY_Q8_0, gguf.GGMLQuantizationType.Q8_0),
}
# llama.cpp's name for GPT-2's pre-tokenizer (its split pattern), which `convert_hf_to_gguf.py` writes for GPT-2.
GPT2_PRE_TOKENIZER = "gpt-2"
# GPT-2's Conv1D matrices, stored [in, out]; GGUF holds them [out, in], as nn.Linear does.
_CONV1D = (".c_attn.weight", ".c_proj.weight", ".c_fc.weight")


def gguf_tensors(
    model: GPTScratchForCausalLM, dtype: str = "f32"
) -> Iterator[tuple[str, np.ndarray, gguf.GGMLQuantizationType]]:
    """(GGUF name, data, type) for each tensor of `model`, data already in that type (quantized blocks as uint8)."""
    names = gguf.TensorNameMap(gguf.MODEL_ARCH.GPT2, model.config.n_layers)
    _, matrix_type = GGUF_DTYPES[dtype]
    for gpt2_name, tensor in gpt2_state_dict(model).items():
        name = names.get_name(gpt2_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise RuntimeError(f"gguf has no GPT-2 tensor name for {gpt2_name}")
        if gpt2_name.endswith(_CONV1D):
            tensor = tensor.T
        data = tensor.to(torch.float32).contiguous().numpy()
        keep_f32 = data.ndim <= 1 or name.startswith(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.POS_EMBD])
        qtype = gguf.GGMLQuantizationType.F32 if keep_f32 else matrix_type
        try:
            stored = gguf.quants.quantize(data, qtype)
        except gguf.QuantError:  # rows that are not a whole number of quantization blocks
            qtype = gguf.GGMLQuantizationType.F16
            stored = gguf.quants.quantize(data, qtype)
        yield name, stored, qtype


def gguf_vocabulary(tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> tuple[list[str], list[int]]:
    """The token list and token types llama.cpp reads, as its converter makes them (`get_vocab_base`): tokens by
    ID in GPT-2's byte alphabet; added tokens CONTROL when special (matched whole in text only when asked),
    USER_DEFINED otherwise; IDs past the tokenizer's (a vocabulary padded for speed) `[PAD<id>]`, UNUSED."""
    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for index in range(vocab_size):
        if index not in by_id:
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        tokens.append(by_id[index])
        if index in added:
            types.append(gguf.TokenType.CONTROL if added[index].special else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def write_gguf(
    model: GPTScratchForCausalLM,
    tokenizer: PreTrainedTokenizerBase,
    path: str | os.PathLike,
    dtype: str = "f32",
    name: str = "gptscratch",
) -> None:
    """Writes `model` (named `name` in the file's metadata) and `tokenizer` as one GGUF file at `path`, its matrices
    in `dtype` (see GGUF_DTYPES). Not atomic: convert.export writes through a temporary file. An InputError when
    GPT-2's architecture cannot express the model (an untied head)."""
    config = gpt2_config(model.config)
    file_type, _ = GGUF_DTYPES[dtype]
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.GPT2])
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_block_count(config.n_layer)
    writer.add_context_length(config.n_positions)
    writer.add_uint32(TRANSFORMERS_GGUF_CONTEXT_KEY, config.n_positions)
    writer.add_embedding_length(config.n_embd)
    writer.add_feed_forward_length(config.n_inner)
    writer.add_head_count(config.n_head)
    writer.add_layer_norm_eps(config.layer_norm_epsilon)
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    tokens, types = gguf_vocabulary(tokenizer, config.vocab_size)
    writer.add_tokenizer_model("gpt2")  # llama.cpp's name for byte-level BPE
    writer.add_tokenizer_pre(GPT2_PRE_TOKENIZER)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    # Merges, special IDs and the chat template as the converter reads them: from the saved tokenizer files.
    with tempfile.TemporaryDirectory() as saved:
        with_chat_template(tokenizer).save_pretrained(saved)
        special = gguf.SpecialVocab(saved, load_merges=True, n_vocab=config.vocab_size)
    # The model directory's tokenizer adds no BOS or EOS to a text; said outright, so llama.cpp adds none either.
    special.add_special_token.setdefault("bos", False)
    special.add_special_token.setdefault("eos", False)
    special.add_to_gguf(writer, quiet=True)

    for tensor_name, data, qtype in gguf_tensors(model, dtype):
        writer.add_tensor(tensor_name, data, raw_dtype=qtype)  # quantized bytes: the writer derives the shape
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()  # on failure too: an open file keeps a full disk busy
