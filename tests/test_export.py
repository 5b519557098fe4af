"""convert.export: `gptscratch-export` writes each format from a model directory on disk, thin over export_model;
a failed write leaves nothing behind."""

from __future__ import annotations

import gguf
import onnxruntime
import pytest
import torch
from cli_helpers import file_listing, run_main
from conftest import PROMPT, TEXT, assert_same_logits, byte_level_bpe, tiny_model_for
from safetensors import safe_open
from transformers import AutoModelForCausalLM, GPT2LMHeadModel

import convert.export
from common.errors import InputError
from common.model_dir import load_model_directory, save_model_directory
from convert.export import DTYPES, export_model
from convert.gguf_export import GGUF_DTYPES


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A model directory with a fitted tokenizer of 320 tokens: GPT-2's 50,257 would only slow each GGUF read."""
    tokenizer = byte_level_bpe(TEXT, vocab_size=320)
    return save_model_directory(tiny_model_for(tokenizer), tokenizer, tmp_path_factory.mktemp("export") / "model")


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def test_gpt2_and_gguf_from_the_command_load_in_transformers_with_the_models_logits(model_dir, tmp_path, capsys):
    model, tokenizer = load_model_directory(model_dir)
    ids = torch.tensor([tokenizer(PROMPT)["input_ids"]])
    gpt2 = run_main(convert.export.main, ["--model", model_dir, "--format", "gpt2", "--output", tmp_path / "g"], capsys)
    assert gpt2.returncode == 0 and f"wrote GPT-2 directory {tmp_path / 'g'}" in gpt2.stdout, gpt2.stderr
    assert_same_logits(logits(GPT2LMHeadModel.from_pretrained(tmp_path / "g"), ids), logits(model, ids))

    argv = ["--model", model_dir, "--format", "gguf", "--output", tmp_path / "model.gguf", "--dtype", "f16"]
    result = run_main(convert.export.main, argv, capsys)
    assert result.returncode == 0 and f"wrote GGUF file {tmp_path / 'model.gguf'}" in result.stdout, result.stderr
    reader = gguf.GGUFReader(tmp_path / "model.gguf")
    assert reader.fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_F16
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="model.gguf")
    ours = logits(model, ids)
    torch.testing.assert_close(logits(loaded, ids), ours, rtol=0, atol=1e-3 * ours.abs().max().item())


@pytest.mark.slow
def test_onnx_from_the_command_runs_in_onnx_runtime(model_dir, tmp_path, capfd):
    output = tmp_path / "onnx"
    result = run_main(convert.export.main, ["--model", model_dir, "--format", "onnx", "--output", output], capfd)
    assert result.returncode == 0 and f"wrote ONNX directory {output}" in result.stdout, result.stderr
    assert result.stderr == ""  # none of the exporter's warnings about what does not concern this graph
    model, tokenizer = load_model_directory(model_dir)
    ids = tokenizer(PROMPT, return_tensors="np")["input_ids"]
    config = model.config
    empty = torch.zeros(1, config.n_heads, 0, config.emb_dim // config.n_heads).numpy()
    session = onnxruntime.InferenceSession(str(output / "model.onnx"))
    feed = {"input_ids": ids, "attention_mask": ids * 0 + 1, "position_ids": torch.arange(ids.shape[1])[None].numpy()}
    feed |= {spec.name: empty for spec in session.get_inputs()[3:]}
    theirs = session.run(["logits"], feed)[0]
    torch.testing.assert_close(torch.from_numpy(theirs), logits(model, torch.from_numpy(ids)), rtol=0, atol=1e-4)


def test_overwrite_replaces_a_gguf_file_and_a_failed_write_leaves_the_old_one(model_dir, tmp_path, monkeypatch):
    path = export_model(model_dir, "gguf", tmp_path / "model.gguf", "q8_0")
    with pytest.raises(InputError, match="exists; pass overwrite"):
        export_model(model_dir, "gguf", path)
    export_model(model_dir, "gguf", path, "f32", overwrite=True)
    assert gguf.GGUFReader(path).fields["general.file_type"].contents() == gguf.LlamaFileType.ALL_F32
    before = file_listing(tmp_path)

    def fail_half_way(self, *args, **kwargs):
        self.fout[0].write(b"half a tensor")
        raise RuntimeError("the writer failed")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", fail_half_way)
    with pytest.raises(RuntimeError, match="the writer failed"):
        export_model(model_dir, "gguf", path, "f16", overwrite=True)
    assert file_listing(tmp_path) == before  # the old file as it was, no temporary file left


def test_gguf_writes_every_dtype_the_command_offers_and_each_format_has_its_default():
    assert set(DTYPES["gguf"]) == set(GGUF_DTYPES)
    assert [convert.export.check_export(format, None) for format in ("gpt2", "gguf", "onnx")] == [None, "f32", "f32"]


def test_gpt2_export_in_f16_holds_half_precision_weights_close_to_the_model(model_dir, tmp_path):
    model, tokenizer = load_model_directory(model_dir)
    output = export_model(model_dir, "gpt2", tmp_path / "gpt2-f16", "f16")
    with safe_open(output / "model.safetensors", "pt") as weights:
        assert {weights.get_slice(name).get_dtype() for name in weights.keys()} == {"F16"}
    loaded = GPT2LMHeadModel.from_pretrained(output, dtype=torch.float32)
    ids = torch.tensor([tokenizer(PROMPT)["input_ids"]])
    ours = logits(model, ids)
    # f16 weights keep 11 bits (2^-12 of each): 1e-3 of the largest logit, as for a GGUF file in f16.
    torch.testing.assert_close(logits(loaded, ids), ours, rtol=0, atol=1e-3 * ours.abs().max().item())
