"""convert.from_transformers: a transformers GPT-2 brought in as a GPTScratch model, logits equal to the source's, and
the plain GPT-2 export's way back, bit for bit."""

from __future__ import annotations

import json

import pytest
import torch
from cli_helpers import assert_one_line_error, run_main
from conftest import TEXT, assert_same_logits, byte_level_bpe, tiny_model_for
from safetensors.torch import load_file
from transformers import GPT2Config, GPT2LMHeadModel

import convert.cli
from common.errors import InputError
from common.model_dir import load_model_directory, save_model_directory
from convert.from_transformers import convert_transformers_gpt2, import_gpt2
from convert.gpt2_export import export_gpt2


@pytest.fixture(scope="module")
def tokenizer():
    return byte_level_bpe(TEXT, vocab_size=300)


def gpt2_directory(path, tokenizer, **overrides) -> GPT2LMHeadModel:
    """A small GPT2LMHeadModel of random weights (biases too), saved with the tokenizer at `path`."""
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=32,
        n_embd=32,
        n_layer=2,
        n_head=4,
        **overrides,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    gpt2 = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for parameter in gpt2.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))  # no bias left at its zero initialisation
    gpt2.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return gpt2


@pytest.mark.parametrize("tied", [True, False])
def test_a_gpt2_directory_comes_in_with_logits_equal_to_the_sources(tmp_path, tokenizer, tied):
    gpt2 = gpt2_directory(tmp_path / "gpt2", tokenizer, tie_word_embeddings=tied)
    model, loaded_tokenizer = import_gpt2(tmp_path / "gpt2")
    assert model.config.tie_word_embeddings is tied and model.config.qkv_bias is True
    assert loaded_tokenizer.encode(TEXT[:200]) == tokenizer.encode(TEXT[:200])
    ids = torch.randint(0, len(tokenizer), (3, 20), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[0, :5] = 0  # a left-padded row
    # Positions counted from the first real token, as GPTScratch counts them from the mask and GPT-2's generate passes
    # them; what a padding position predicts is nobody's business.
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ours = model(ids, attention_mask=mask).logits
        theirs = gpt2(ids, attention_mask=mask, position_ids=positions).logits
    real = mask.bool()
    assert_same_logits(ours[real], theirs[real])


@pytest.mark.parametrize("qkv_bias", [True, False])
def test_the_export_and_the_import_round_trip_bit_for_bit(tmp_path, tokenizer, qkv_bias):
    torch.manual_seed(0)
    model = tiny_model_for(tokenizer, qkv_bias=qkv_bias)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    original = save_model_directory(model, tokenizer, tmp_path / "original")
    export_gpt2(original, tmp_path / "gpt2")
    back = convert_transformers_gpt2(tmp_path / "gpt2", tmp_path / "back")
    before, after = load_file(original / "model.safetensors"), load_file(back / "model.safetensors")
    assert sorted(before) == sorted(after)
    assert all(torch.equal(before[name], after[name]) for name in before)
    config = json.loads((back / "config.json").read_text())
    assert config["qkv_bias"] is qkv_bias and config["context_length"] == 32 and config["n_layers"] == 2


def test_gptscratch_convert_from_transformers_writes_a_model_directory(tmp_path, tokenizer, capsys):
    gpt2 = gpt2_directory(tmp_path / "gpt2", tokenizer)
    argv = ["--from-transformers", tmp_path / "gpt2", "--output-dir", tmp_path / "model"]
    assert run_main(convert.cli.main, argv, capsys).returncode == 0
    model, _ = load_model_directory(tmp_path / "model")
    ids = torch.randint(0, len(tokenizer), (2, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert_same_logits(model(ids).logits, gpt2(ids).logits)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(activation_function="relu"), "GPTScratch has no relu activation"),
        (dict(n_inner=48), "a feed-forward width other than 4 x n_embd (n_inner=48)"),
        (dict(scale_attn_by_inverse_layer_idx=True), "attention scaled by the layer's index"),
    ],
)
def test_what_gptscratch_cannot_express_is_refused_by_name(tmp_path, tokenizer, overrides, message):
    gpt2_directory(tmp_path / "gpt2", tokenizer, **overrides)
    with pytest.raises(InputError, match=rf"from_transformers {tmp_path / 'gpt2'} cannot be brought in: .*"):
        import_gpt2(tmp_path / "gpt2")
    with pytest.raises(InputError) as error:
        import_gpt2(tmp_path / "gpt2")
    assert message in str(error.value)


def test_another_architecture_a_missing_path_and_an_uncached_hub_name_are_one_line_each(tmp_path, capsys):
    other = tmp_path / "llama"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "llama"}))
    cases = {
        str(other): f"--from-transformers {other} holds a 'llama' model; only GPT-2's architecture maps",
        str(tmp_path / "missing"): "is neither a model directory nor a hub name",
        # Offline in the tests (HF_HUB_OFFLINE): a name not in the local cache.
        "someone/no-such-model": "--from-transformers someone/no-such-model could not be read from",
    }
    for source, message in cases.items():
        result = run_main(convert.cli.main, ["--from-transformers", source, "--output-dir", tmp_path / "out"], capsys)
        assert_one_line_error(result, convert.cli.PROG, message)
    assert not (tmp_path / "out").exists()
