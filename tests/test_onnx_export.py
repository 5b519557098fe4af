"""convert.onnx_export: a model directory as ONNX with its KV cache, run by a plain ONNX Runtime session.

ONNX Runtime's logits are checked against the model's on a left-padded batch and on cached decoding steps, and a
greedy loop over the session (what a program running the export writes) against `gptscratch-generate`'s text.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from conftest import PROMPT, TEXT, byte_level_bpe, tiny_model_for
from transformers import AutoTokenizer, DynamicCache

from common.model_dir import save_model_directory
from convert.export import export_model
from modeling_gptscratch import CACHE_NAME
from use.generate import generate_text

pytestmark = pytest.mark.slow  # an export traces the model through torch.export: seconds each
ATOL = 1e-4


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[object, object, Path]:
    """A model (2 layers, context 32, a fitted tokenizer), its tokenizer and its directory exported to ONNX (f32)."""
    folder = tmp_path_factory.mktemp("onnx")
    tokenizer = byte_level_bpe(TEXT, vocab_size=320)
    model = tiny_model_for(tokenizer)
    directory = save_model_directory(model, tokenizer, folder / "model")
    return model, tokenizer, export_model(directory, "onnx", folder / "onnx")


class Session:
    """A plain ONNX Runtime session of an export, fed by input name; the past's shape read from the graph."""

    def __init__(self, path: Path):
        self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.inputs = self.session.get_inputs()
        _, heads, _, head_dim = self.inputs[3].shape  # past_key_values.0.key: [batch, heads, past, head_dim]
        self.past_shape = (heads, head_dim)
        self.dtype = np.float16 if self.inputs[3].type == "tensor(float16)" else np.float32

    def empty_past(self, batch: int) -> list[np.ndarray]:
        heads, head_dim = self.past_shape
        return [np.zeros((batch, heads, 0, head_dim), self.dtype) for _ in self.inputs[3:]]

    def __call__(self, input_ids, attention_mask, position_ids, past) -> tuple[np.ndarray, list[np.ndarray]]:
        values = [np.asarray(input_ids), np.asarray(attention_mask), np.asarray(position_ids), *past]
        logits, *presents = self.session.run(None, {spec.name: value for spec, value in zip(self.inputs, values)})
        return logits, presents


def greedy(session: Session, ids: list[int], max_new_tokens: int, eos: int | None) -> list[int]:
    """Greedy decoding through the session with its cache: one prefill, then one token per step."""
    tokens = np.array([ids], dtype=np.int64)
    mask = np.ones_like(tokens)
    logits, past = session(tokens, mask, np.arange(len(ids), dtype=np.int64)[None], session.empty_past(1))
    generated = []
    for _ in range(max_new_tokens):
        token = int(logits[0, -1].argmax())
        if token == eos:
            break
        generated.append(token)
        mask = np.concatenate([mask, [[1]]], axis=1)
        step = np.array([[token]], dtype=np.int64)
        logits, past = session(step, mask, np.array([[mask.shape[1] - 1]]), past)
    return ids + generated


def left_padded(tokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """input_ids, attention_mask and position_ids of `texts`, left-padded to the longest."""
    rows = [tokenizer(text)["input_ids"] for text in texts]
    width = max(map(len, rows))
    ids = torch.tensor([[0] * (width - len(row)) + row for row in rows])
    mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows])
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def test_the_export_loads_in_a_plain_session_with_named_cache_inputs_and_outputs(exported):
    model, tokenizer, directory = exported
    files = {path.name for path in directory.iterdir()}
    assert {"model.onnx", "generation_config.json", "tokenizer.json"} <= files and "config.json" not in files
    session = onnxruntime.InferenceSession(str(directory / "model.onnx"))
    layers = [f"{i}.{part}" for i in range(model.config.n_layers) for part in ("key", "value")]
    inputs = {spec.name: spec.shape for spec in session.get_inputs()}
    assert list(inputs) == ["input_ids", "attention_mask", "position_ids", *(f"past_key_values.{n}" for n in layers)]
    assert inputs["past_key_values.0.key"] == ["batch", 4, "past", 8]
    outputs = {spec.name: spec.shape for spec in session.get_outputs()}
    assert list(outputs) == ["logits", *(f"present.{n}" for n in layers)]
    assert outputs["logits"] == ["batch", "tokens", model.config.vocab_size]
    assert json.loads((directory / "generation_config.json").read_text())["eos_token_id"] == tokenizer.eos_token_id
    assert AutoTokenizer.from_pretrained(directory)(PROMPT)["input_ids"] == tokenizer(PROMPT)["input_ids"]


def test_logits_equal_the_models_on_a_padded_batch_and_on_cached_decoding_steps(exported):
    model, tokenizer, directory = exported
    session = Session(directory / "model.onnx")
    ids, mask, positions = left_padded(tokenizer, ["Every effort moves", "Naïve", "I had"])
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        expected = model(ids, attention_mask=mask, position_ids=positions, use_cache=True, **{CACHE_NAME: cache}).logits
    logits, past = session(ids.numpy(), mask.numpy(), positions.numpy(), session.empty_past(3))
    real = mask.bool().numpy()  # a padding position's logits are never read
    np.testing.assert_allclose(logits[real], expected.numpy()[real], rtol=0, atol=ATOL)
    for step in range(3):
        new = torch.tensor([[11 + step], [40 + step], [7 * step + 1]])
        mask = torch.cat([mask, torch.ones_like(new)], dim=1)
        positions = positions[:, -1:] + 1
        with torch.no_grad():
            expected = model(
                new, attention_mask=mask, position_ids=positions, use_cache=True, **{CACHE_NAME: cache}
            ).logits
        logits, past = session(new.numpy(), mask.numpy(), positions.numpy(), past)
        np.testing.assert_allclose(logits, expected.numpy(), rtol=0, atol=ATOL)
        assert past[0].shape == (3, 4, mask.shape[1], 8)


def test_greedy_generation_through_onnx_runtime_equals_gptscratch_generate(exported):
    model, tokenizer, directory = exported
    session = Session(directory / "model.onnx")
    new_tokens = model.config.context_length - len(tokenizer(PROMPT)["input_ids"])
    expected = generate_text(model, PROMPT, max_new_tokens=new_tokens, temperature=0, tokenizer=tokenizer)
    ids = greedy(session, tokenizer(PROMPT)["input_ids"], new_tokens, tokenizer.eos_token_id)
    assert tokenizer.decode(ids) == expected
    assert len(ids) > len(tokenizer(PROMPT)["input_ids"]) + 5  # it decoded, not stopped at once


def test_an_f16_export_computes_in_float16_close_to_the_model(exported, tmp_path):
    """f16 keeps 11 bits: logits within 1e-2 of the largest (measured 4e-4 of it here)."""
    model, tokenizer, directory = exported
    output = export_model(directory.parent / "model", "onnx", tmp_path / "onnx-f16", "f16")
    session = Session(output / "model.onnx")
    assert session.dtype == np.float16
    ids, mask, positions = left_padded(tokenizer, [TEXT[:30]])
    with torch.no_grad():
        expected = model(ids).logits.numpy()
    logits, _ = session(ids.numpy(), mask.numpy(), positions.numpy(), session.empty_past(1))
    assert logits.dtype == np.float16
    np.testing.assert_allclose(logits.astype(np.float32), expected, rtol=0, atol=1e-2 * np.abs(expected).max())
