"""The book's own checkpoints, `model.pth` / `model_and_optimizer.pth` saved from its `GPTModel`, to a model directory.

The book saves `torch.save(model.state_dict(), "model.pth")` or `torch.save({"model_state_dict": ...,
"optimizer_state_dict": ...}, "model_and_optimizer.pth")` (chapter 5). Its names map onto GPTScratch's one to one,
except attention, where the separate W_query, W_key and W_value become the rows of the fused qkv, and LayerNorm's
scale/shift, which become weight/bias. Files are read with `torch.load(weights_only=True)`: nothing is unpickled.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.errors import InputError, field, first_line
from common.files import check_apart, check_output_directory, parse_json_object, read_json_object
from convert.weights import check_dtype, check_shapes, check_shard_size, save_converted_model, torch_dtype

if TYPE_CHECKING:
    import torch

BOOK_CONFIG_KEYS = ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers", "drop_rate", "qkv_bias")
_INTEGER_KEYS = ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers")

# One transformer block apart from W_query/W_key/W_value: the book's name under trf_blocks.{i}., GPTScratch's under
# model.trf_blocks.{i}., and the book's shape as a function of emb_dim. The book's nn.Linear weights are [out, in];
# GPTScratch's Projection weights are [in, out], so matrices are transposed on the way.
_BLOCK_TENSORS = (
    ("att.out_proj.weight", "att.out_proj.weight", lambda e: [e, e]),
    ("att.out_proj.bias", "att.out_proj.bias", lambda e: [e]),
    ("ff.layers.0.weight", "ff.layers.0.weight", lambda e: [4 * e, e]),
    ("ff.layers.0.bias", "ff.layers.0.bias", lambda e: [4 * e]),
    ("ff.layers.2.weight", "ff.layers.2.weight", lambda e: [e, 4 * e]),
    ("ff.layers.2.bias", "ff.layers.2.bias", lambda e: [e]),
    ("norm1.scale", "norm1.weight", lambda e: [e]),
    ("norm1.shift", "norm1.bias", lambda e: [e]),
    ("norm2.scale", "norm2.weight", lambda e: [e]),
    ("norm2.shift", "norm2.bias", lambda e: [e]),
)
_QKV = ("W_query", "W_key", "W_value")


def read_book_config(book_config: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """The book's GPT_CONFIG dict (its seven keys, as GPT_CONFIG_124M) from a dict, a JSON file or a JSON string."""
    fix = f"pass a JSON file or object like the book's GPT_CONFIG_124M, with the keys {', '.join(BOOK_CONFIG_KEYS)}"
    if isinstance(book_config, Mapping):
        config, source = dict(book_config), "the book config"
    elif str(book_config).lstrip().startswith("{"):
        source = f"{field('book_config')} {book_config}"
        config = parse_json_object(str(book_config), source, fix)
    else:
        source = f"book config {book_config}"
        config = read_json_object(book_config, "book config", fix)
    unknown = sorted(set(config) - set(BOOK_CONFIG_KEYS))
    missing = [key for key in BOOK_CONFIG_KEYS if key not in config]
    if unknown or missing:
        raise InputError(
            f"{source} has unknown keys {unknown} and lacks {missing}; it needs exactly {', '.join(BOOK_CONFIG_KEYS)}"
        )
    for key in _INTEGER_KEYS:
        if isinstance(config[key], bool) or not isinstance(config[key], int) or config[key] <= 0:
            raise InputError(f"{source}: {key} must be a positive integer, got {config[key]!r}")
    if config["emb_dim"] % config["n_heads"]:
        raise InputError(f"{source}: emb_dim ({config['emb_dim']}) is not divisible by n_heads ({config['n_heads']})")
    if not isinstance(config["qkv_bias"], bool):
        raise InputError(f"{source}: qkv_bias must be true or false, got {config['qkv_bias']!r}")
    if not isinstance(config["drop_rate"], (int, float)) or not 0 <= config["drop_rate"] < 1:
        raise InputError(f"{source}: drop_rate must be a number in [0, 1), got {config['drop_rate']!r}")
    return config


def book_tensor_shapes(config: Mapping[str, Any]) -> dict[str, list[int]]:
    """The shape of every tensor in the state dict of the book's `GPTModel(config)`, without the attention `mask`
    buffers (a constant causal mask, not a weight)."""
    e, v = config["emb_dim"], config["vocab_size"]
    shapes = {"tok_emb.weight": [v, e], "pos_emb.weight": [config["context_length"], e]}
    for i in range(config["n_layers"]):
        for projection in _QKV:
            shapes[f"trf_blocks.{i}.att.{projection}.weight"] = [e, e]
            if config["qkv_bias"]:
                shapes[f"trf_blocks.{i}.att.{projection}.bias"] = [e]
        for book_suffix, _, shape in _BLOCK_TENSORS:
            shapes[f"trf_blocks.{i}.{book_suffix}"] = shape(e)
    shapes.update({"final_norm.scale": [e], "final_norm.shift": [e], "out_head.weight": [v, e]})
    return shapes


def load_book_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The model's state dict from a book checkpoint (model.pth, or model_and_optimizer.pth's "model_state_dict")."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"book checkpoint {path} does not exist; pass a model.pth or model_and_optimizer.pth file")
    import pickle
    import warnings
    import zipfile

    import torch

    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols it then reads or refuses anyway; the error below says what matters.
            warnings.simplefilter("ignore")
            # Mapping the file keeps model_and_optimizer.pth's optimizer state (twice the model's size) out of
            # memory; only torch's zip format (torch.save's default) can be mapped.
            loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as error:
        # torch's message opens with advice to retry with weights_only=False, exactly what must not be done here;
        # the line naming what was refused comes after it.
        lines = [line.strip() for line in str(error).splitlines()[1:]]
        detail = next(
            (line for line in lines if line and not line.startswith(("Please file", "Check the documentation"))),
            "not a file of plain tensors",
        )
        raise InputError(
            f"book checkpoint {path} holds more than tensors and is refused unread ({detail}); "
            "pass a model.pth or model_and_optimizer.pth saved from the book's model.state_dict()"
        ) from error
    except (RuntimeError, EOFError, ValueError, OSError) as error:
        raise InputError(
            f"cannot read book checkpoint {path} ({first_line(error)}); pass a model.pth or model_and_optimizer.pth "
            "written by torch.save"
        ) from error
    if isinstance(loaded, dict) and "model_state_dict" in loaded:
        loaded = loaded["model_state_dict"]
    if not isinstance(loaded, dict) or not all(isinstance(value, torch.Tensor) for value in loaded.values()):
        raise InputError(
            f"book checkpoint {path} holds neither a state dict nor a dict with 'model_state_dict'; pass the file "
            "saved from model.state_dict()"
        )
    # The mask buffers are the constant causal mask: GPTScratch builds its own.
    return {name: tensor for name, tensor in loaded.items() if not name.endswith(".att.mask")}


def book_to_gptscratch(
    state_dict: dict[str, torch.Tensor], config: Mapping[str, Any], tied: bool, dtype: torch.dtype
) -> Iterator[tuple[str, torch.Tensor]]:
    """(GPTScratch name, tensor in `dtype`) for each of the book's tensors; entries are popped from `state_dict` as
    they are converted, so memory holds one copy of the model. W_query, W_key, W_value ([emb, emb] each, [out, in])
    become qkv [emb, 3 * emb] ([in, out], q, k, v side by side); every other block matrix is transposed to [in, out];
    `out_head.weight` is kept only when the head is not `tied`."""
    import torch

    yield "model.tok_emb.weight", state_dict.pop("tok_emb.weight").to(dtype)
    yield "model.pos_emb.weight", state_dict.pop("pos_emb.weight").to(dtype)
    for i in range(config["n_layers"]):
        book, ours = f"trf_blocks.{i}.", f"model.trf_blocks.{i}."
        weights = [state_dict.pop(f"{book}att.{projection}.weight") for projection in _QKV]
        yield f"{ours}att.qkv.weight", torch.cat(weights).T.contiguous().to(dtype)
        if config["qkv_bias"]:
            biases = [state_dict.pop(f"{book}att.{projection}.bias") for projection in _QKV]
            yield f"{ours}att.qkv.bias", torch.cat(biases).to(dtype)
        for book_suffix, our_suffix, _ in _BLOCK_TENSORS:
            tensor = state_dict.pop(book + book_suffix)
            yield ours + our_suffix, (tensor.T.contiguous() if tensor.dim() == 2 else tensor).to(dtype)
    yield "model.final_norm.weight", state_dict.pop("final_norm.scale").to(dtype)
    yield "model.final_norm.bias", state_dict.pop("final_norm.shift").to(dtype)
    head = state_dict.pop("out_head.weight")
    if not tied:
        yield "out_head.weight", head.to(dtype)


def convert_book_checkpoint(
    checkpoint: str | os.PathLike,
    book_config: str | os.PathLike | Mapping[str, Any],
    tokenizer_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    dtype: str = "float32",
    overwrite: bool = False,
    max_shard_size: str | int = "2GB",
) -> Path:
    """Converts a checkpoint of the book's `GPTModel` into a model directory; returns its path.

    checkpoint: model.pth (a state dict) or model_and_optimizer.pth (its "model_state_dict" is used; the optimizer
    state is not part of a model directory). book_config: the dict the model was built with (vocab_size,
    context_length, emb_dim, n_heads, n_layers, drop_rate, qkv_bias), or a JSON file / object string holding it.
    tokenizer_dir: OpenAI's encoder.json + vocab.bpe (or a saved tokenizer). Shapes: tok_emb [vocab, emb], pos_emb
    [context, emb], W_query/W_key/W_value [emb, emb] -> qkv [emb, 3 * emb], out_head [vocab, emb].

    The head stays tied to the token embedding when the book's out_head equals tok_emb (as after loading OpenAI's
    weights), and becomes a separate weight otherwise (as after the book's pretraining). Bad input is an InputError
    raised before anything is written, and before the checkpoint is read where the paths and options alone show it;
    on any error `output_dir` is left as it was.
    """
    config = read_book_config(book_config)
    check_dtype(dtype)
    check_shard_size(max_shard_size)
    if not Path(tokenizer_dir).is_dir():
        raise InputError(
            f"tokenizer directory {tokenizer_dir} does not exist; pass the directory holding encoder.json and vocab.bpe"
        )
    inputs = {"book_checkpoint": [checkpoint], "tokenizer": [tokenizer_dir]}
    if isinstance(book_config, (str, os.PathLike)) and Path(book_config).is_file():
        inputs["book_config"] = [book_config]
    check_apart(output_dir, inputs, named=f"{field('output_dir')} {output_dir}")
    check_output_directory(output_dir, overwrite)
    state_dict = load_book_state_dict(checkpoint)
    check_shapes(
        {name: list(tensor.shape) for name, tensor in state_dict.items()},
        book_tensor_shapes(config),
        source=f"book checkpoint {checkpoint}",
        described_by=f"the book config ({', '.join(f'{key}={config[key]}' for key in BOOK_CONFIG_KEYS)})",
        fix=f"pass the {field('book_config')} the model was built with",
    )

    import torch

    tied = torch.equal(state_dict["out_head.weight"], state_dict["tok_emb.weight"])
    tensors = book_to_gptscratch(state_dict, config, tied, torch_dtype(dtype))
    return save_converted_model(
        config | {"tie_word_embeddings": tied}, tensors, tokenizer_dir, output_dir, overwrite, max_shard_size
    )
