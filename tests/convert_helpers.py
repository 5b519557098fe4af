"""Shared by the converter tests: random IDs, converted directories loaded and read, the command run; OpenAI-layout
checkpoints built with TensorFlow, and transformers' GPT-2 holding the same arrays as their reference."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel


def random_ids(vocab_size: int, tokens: int, batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab_size, (batch, tokens), generator=torch.Generator().manual_seed(seed))


def load_converted(directory: Path):
    return AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=True).eval()


def safetensors_tensors(directory: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for file in sorted(directory.glob("*.safetensors")):
        with safe_open(file, framework="pt") as f:
            tensors |= {name: f.get_tensor(name) for name in f.keys()}
    return tensors


def run_cli(*args, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "convert", *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


def entries(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir()) if directory.exists() else []


# --- builders: OpenAI-layout checkpoints, the reference ---------------------------------------------------------------


def random_openai_arrays(hparams: dict[str, int], seed: int = 0, scale: float = 0.1) -> dict[str, np.ndarray]:
    """Random float32 arrays under OpenAI's variable names and shapes (1x1 convolutions are [1, in, out]): normal
    with standard deviation `scale`, LayerNorm gains around 1."""
    e = hparams["n_embd"]
    shapes = {"model/wte": (hparams["n_vocab"], e), "model/wpe": (hparams["n_ctx"], e)}
    for i in range(hparams["n_layer"]):
        shapes |= {
            f"model/h{i}/ln_1/g": (e,),
            f"model/h{i}/ln_1/b": (e,),
            f"model/h{i}/attn/c_attn/w": (1, e, 3 * e),
            f"model/h{i}/attn/c_attn/b": (3 * e,),
            f"model/h{i}/attn/c_proj/w": (1, e, e),
            f"model/h{i}/attn/c_proj/b": (e,),
            f"model/h{i}/ln_2/g": (e,),
            f"model/h{i}/ln_2/b": (e,),
            f"model/h{i}/mlp/c_fc/w": (1, e, 4 * e),
            f"model/h{i}/mlp/c_fc/b": (4 * e,),
            f"model/h{i}/mlp/c_proj/w": (1, 4 * e, e),
            f"model/h{i}/mlp/c_proj/b": (e,),
        }
    shapes |= {"model/ln_f/g": (e,), "model/ln_f/b": (e,)}
    rng = np.random.default_rng(seed)
    arrays = {name: rng.standard_normal(shape, dtype=np.float32) * np.float32(scale) for name, shape in shapes.items()}
    for name, array in arrays.items():
        if name.endswith("/g"):
            array += 1
    return arrays


def write_openai_checkpoint(
    directory: Path, hparams: dict[str, int], arrays: dict[str, np.ndarray], bpe_dir: Path
) -> Path:
    """OpenAI's seven files, the checkpoint saved by TensorFlow 1's Saver as OpenAI's was."""
    import tensorflow as tf

    directory.mkdir(parents=True, exist_ok=True)
    with tf.Graph().as_default():
        variables = {name: tf.compat.v1.Variable(tf.zeros(array.shape), name=name) for name, array in arrays.items()}
        saver = tf.compat.v1.train.Saver(save_relative_paths=True)
        with tf.compat.v1.Session() as session:
            for name, variable in variables.items():
                # Feeding the values keeps them out of the graph, so model.ckpt.meta stays small, like OpenAI's.
                session.run(variable.initializer, feed_dict={variable.initial_value: arrays[name]})
            saver.save(session, str(directory / "model.ckpt"))
    (directory / "hparams.json").write_text(json.dumps(hparams))
    for name in ("encoder.json", "vocab.bpe"):
        shutil.copy(bpe_dir / name, directory / name)
    return directory


def gpt2_reference(hparams: dict[str, int], arrays: dict[str, np.ndarray]) -> GPT2LMHeadModel:
    """transformers' GPT-2 holding `arrays`: names translated by rule, Conv1D weights in TensorFlow's [in, out]."""
    config = GPT2Config(
        vocab_size=hparams["n_vocab"],
        n_positions=hparams["n_ctx"],
        n_embd=hparams["n_embd"],
        n_layer=hparams["n_layer"],
        n_head=hparams["n_head"],
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    model = GPT2LMHeadModel(config)
    suffixes = {"g": "weight", "b": "bias", "w": "weight"}
    state_dict = {}
    for name, array in arrays.items():
        parts = name.split("/")[1:]  # "model/h3/attn/c_attn/w" -> ["h3", "attn", "c_attn", "w"]
        if parts[0].startswith("h") and parts[0][1:].isdigit():
            parts[0:1] = ["h", parts[0][1:]]
        parts[-1] = suffixes.get(parts[-1], f"{parts[-1]}.weight")  # wte, wpe are modules of their own
        tensor = torch.from_numpy(array)
        state_dict["transformer." + ".".join(parts)] = tensor[0] if tensor.dim() == 3 else tensor
    loaded = model.load_state_dict(state_dict, strict=False)
    assert not loaded.unexpected_keys and set(loaded.missing_keys) <= {"lm_head.weight"}, loaded
    assert model.lm_head.weight is model.transformer.wte.weight  # tied, as OpenAI's head is
    return model.eval()
