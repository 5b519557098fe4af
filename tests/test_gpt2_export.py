"""convert.gpt2_export: a model directory exported as plain GPT-2, the same logits without remote code."""

from __future__ import annotations

import json

import pytest
import torch
from cli_helpers import run_main
from conftest import PROMPT, assert_same_logits, tiny_model_for
from safetensors import safe_open
from transformers import GPT2LMHeadModel

import convert.gpt2_export
from common.errors import InputError
from common.model_dir import load_model_directory, save_model_directory
from common.tokenizer import load_tokenizer
from convert.gpt2_export import export_gpt2, to_gpt2


@pytest.mark.parametrize("qkv_bias", [True, False])
def test_gpt2_export_gives_the_same_logits_without_remote_code(tokenizer, tmp_path, qkv_bias):
    model = tiny_model_for(tokenizer, qkv_bias=qkv_bias, layer_norm_eps=1e-3)
    source = save_model_directory(model, tokenizer, tmp_path / "model")
    output = export_gpt2(source, tmp_path / "gpt2")
    config = json.loads((output / "config.json").read_text())
    assert config["model_type"] == "gpt2" and "auto_map" not in config
    assert config["layer_norm_epsilon"] == 1e-3
    assert config["n_ctx"] == config["n_positions"] == 32  # llama.cpp's convert_hf_to_gguf.py reads n_ctx
    assert not (output / "modeling_gptscratch.py").exists()
    with safe_open(output / "model.safetensors", "pt") as weights:
        assert weights.get_slice("transformer.h.0.attn.c_attn.weight").get_shape() == [32, 96]  # Conv1D: [in, out]
        assert weights.get_slice("transformer.h.1.mlp.c_fc.weight").get_shape() == [32, 128]
    gpt2 = GPT2LMHeadModel.from_pretrained(output).eval()
    ids = torch.randint(0, len(tokenizer), (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert_same_logits(gpt2(ids).logits, model(ids).logits)
    assert load_tokenizer(output)(PROMPT)["input_ids"] == tokenizer(PROMPT)["input_ids"]


@pytest.mark.parametrize("attention_dropout, attn_pdrop", [(None, 0.1), (0.0, 0.0), (0.2, 0.2)])
def test_gpt2_export_maps_the_attention_dropout_to_attn_pdrop(tokenizer, attention_dropout, attn_pdrop):
    model = tiny_model_for(tokenizer, drop_rate=0.1, attention_dropout=attention_dropout)
    config = to_gpt2(model).config
    assert (config.attn_pdrop, config.resid_pdrop, config.embd_pdrop) == (attn_pdrop, 0.1, 0.1)


def test_gpt2_export_command_writes_the_directory_and_shares_untransposed_weights(model_dir, tmp_path, capsys):
    output = tmp_path / "gpt2"
    result = run_main(convert.gpt2_export.main, ["--model", model_dir, "--output-dir", output], capsys)
    assert result.returncode == 0 and f"wrote GPT-2 directory {output}" in result.stdout, result.stderr
    model, _ = load_model_directory(model_dir)
    gpt2 = GPT2LMHeadModel.from_pretrained(output).eval()
    ids = torch.randint(0, model.config.vocab_size, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert_same_logits(gpt2(ids).logits, model(ids).logits)
    # Built on the meta device: the export holds the model's own embedding, not a random one it then overwrote.
    exported = to_gpt2(model)
    assert exported.transformer.wte.weight.data_ptr() == model.model.tok_emb.weight.data_ptr()
    assert exported.lm_head.weight is exported.transformer.wte.weight and not exported.training


def test_gpt2_export_refuses_an_untied_head_with_the_reason(tokenizer, tmp_path):
    model = tiny_model_for(tokenizer, tie_word_embeddings=False)
    with pytest.raises(InputError, match=r"GPT-2 cannot express.*tie_word_embeddings=false"):
        to_gpt2(model)
    source = save_model_directory(model, tokenizer, tmp_path / "model")
    with pytest.raises(InputError, match="GPT-2 cannot express"):
        export_gpt2(source, tmp_path / "gpt2")
    assert not (tmp_path / "gpt2").exists()
