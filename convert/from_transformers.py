"""A transformers GPT-2 (a `GPT2LMHeadModel` directory, or a hub name such as `openai-community/gpt2`) as a GPTScratch
model: the plain GPT-2 export's mapping (`convert.gpt2_export.gpt2_names`) run backwards, so an export imported again
gives back the same tensors, bit for bit.

`import_gpt2(source)` reads the model and its tokenizer (a hub name from the local cache when the Hub cannot be
reached, one line when it is in neither); `convert_transformers_gpt2(source, output_dir)` writes them as a model
directory (`gptscratch-convert --from-transformers`). What GPTScratch cannot express (another architecture, another
activation or feed-forward width, attention scaled otherwise) is refused by name before the weights load.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.errors import InputError, field, first_line
from common.files import check_apart, check_output_directory, read_json_object
from common.hub import is_hub_name, offline_unless_reachable
from common.model_dir import save_model_directory
from convert.gpt2_export import gpt2_names
from convert.weights import assemble_model, check_dtype, torch_dtype

if TYPE_CHECKING:
    from transformers import GPT2Config, PreTrainedTokenizerBase

    from modeling_gptscratch import GPTScratchConfig, GPTScratchForCausalLM

# GPT-2's settings GPTScratch does not have: the value GPTScratch computes as, and what a model with another does.
FIXED_SETTINGS = {
    "n_inner": (None, "a feed-forward width other than 4 x n_embd"),
    "scale_attn_weights": (True, "attention scores left unscaled"),
    "scale_attn_by_inverse_layer_idx": (False, "attention scaled by the layer's index"),
    "add_cross_attention": (False, "cross-attention"),
}
TANH_GELU = ("gelu_new", "gelu_pytorch_tanh")  # GPT-2's GELU, as GPTScratch's feed-forward computes it


def gptscratch_config(gpt2: GPT2Config, source: str) -> GPTScratchConfig:
    """The GPTScratchConfig of the same network; an InputError naming `source` and the setting when there is none."""
    from modeling_gptscratch import GPTScratchConfig

    cannot = f"{source} cannot be brought in: GPTScratch has no"
    if gpt2.model_type != "gpt2":
        raise InputError(f"{source} holds a {gpt2.model_type!r} model; only GPT-2's architecture (gpt2) maps")
    if gpt2.activation_function not in TANH_GELU:
        raise InputError(f"{cannot} {gpt2.activation_function} activation (it computes GPT-2's tanh GELU)")
    for name, (value, what) in FIXED_SETTINGS.items():
        actual = getattr(gpt2, name, value)
        if actual != value and not (name == "n_inner" and actual == 4 * gpt2.n_embd):
            raise InputError(f"{cannot} {what} ({name}={actual})")
    return GPTScratchConfig(
        vocab_size=gpt2.vocab_size,
        context_length=gpt2.n_positions,
        emb_dim=gpt2.n_embd,
        n_heads=gpt2.n_head,
        n_layers=gpt2.n_layer,
        drop_rate=gpt2.resid_pdrop,
        attention_dropout=gpt2.attn_pdrop,
        qkv_bias=True,
        layer_norm_eps=gpt2.layer_norm_epsilon,
        initializer_range=gpt2.initializer_range,
        tie_word_embeddings=gpt2.tie_word_embeddings,
        bos_token_id=gpt2.bos_token_id,
        eos_token_id=gpt2.eos_token_id,
        pad_token_id=gpt2.pad_token_id,
    )


def import_gpt2(
    source: str | os.PathLike, named: str | None = None
) -> tuple[GPTScratchForCausalLM, PreTrainedTokenizerBase]:
    """A transformers GPT-2 directory or hub name as a GPTScratch model in eval mode, with its tokenizer; errors name
    the source as `named` (by default `--from-transformers SOURCE`).

    The tensors are GPT-2's own, renamed: no copy. A model whose q/k/v biases are all zero (a GPTScratch export of a
    model without them) comes back without them, so an export and an import round-trip bit for bit. Weights that
    config.json does not describe (a tensor missing, or of another shape) are refused, where transformers would
    initialise them at random.
    """
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    named = named or f"{field('from_transformers')} {source}"
    directory = Path(source)
    if directory.is_dir():
        values = read_json_object(directory / "config.json", f"{named}: model config", "pass a GPT-2 model directory")
        if values.get("model_type") != "gpt2":
            raise InputError(f"{named} holds a {values.get('model_type')!r} model; only GPT-2's architecture maps")
    elif not is_hub_name(source):
        raise InputError(f"{named} is neither a model directory nor a hub name; check the path")
    try:
        with offline_unless_reachable() as reachable, quiet_loading():
            gpt2_config = GPT2Config.from_pretrained(source)
            config = gptscratch_config(gpt2_config, named)
            gpt2, loading = GPT2LMHeadModel.from_pretrained(
                source, config=gpt2_config, dtype="auto", ignore_mismatched_sizes=True, output_loading_info=True
            )
            tokenizer = AutoTokenizer.from_pretrained(source)
    except OSError as error:
        where = "the Hub or its local cache" if reachable else "the local cache, and the Hub cannot be reached"
        raise InputError(
            f"{named} could not be read from {where} ({first_line(error)}); download it once online, or pass a "
            "local model directory"
        ) from None
    check_loading(loading, named)
    theirs = gpt2.state_dict()
    names = gpt2_names(config.n_layers)
    config.qkv_bias = any(bool(theirs[f"transformer.h.{i}.attn.c_attn.bias"].any()) for i in range(config.n_layers))
    tensors = [(ours, theirs[name]) for ours, name in names.items() if config.qkv_bias or "c_attn.bias" not in name]
    if not config.tie_word_embeddings:
        tensors.append(("out_head.weight", theirs["lm_head.weight"]))
    with torch.no_grad():
        model = assemble_model(config, tensors)
    model.generation_config = gpt2.generation_config
    return model, tokenizer


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """transformers' warnings held back in the block: its load report of missing or mismatched tensors, which
    `check_loading` says in one line instead."""
    from transformers import logging

    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)


def check_loading(loading: dict[str, Any], named: str) -> None:
    """Refuses a GPT-2 whose weights do not fit its config.json: the first tensor missing or of another shape."""
    fix = "save the model again, or put back the config.json that came with these weights"
    mismatched = sorted(loading["mismatched_keys"])
    if mismatched:
        name, stored, expected = mismatched[0]
        raise InputError(
            f"{named}: its weights do not fit its config.json: {name} is {list(stored)}, the config makes it "
            f"{list(expected)}; {fix}"
        )
    missing = sorted(loading["missing_keys"])
    if missing:
        raise InputError(f"{named}: its weights lack {missing[0]}, which its config.json calls for; {fix}")


def convert_transformers_gpt2(
    source: str | os.PathLike,
    output_dir: str | os.PathLike,
    dtype: str = "float32",
    overwrite: bool = False,
    max_shard_size: Any = "2GB",
) -> Path:
    """`import_gpt2(source)` in `dtype`, written atomically as a model directory to `output_dir`; returns its path."""
    check_dtype(dtype)
    local = [source] if Path(source).is_dir() else []  # a hub name is no path
    check_apart(output_dir, {"from_transformers": local}, named=f"{field('output_dir')} {output_dir}")
    check_output_directory(output_dir, overwrite)
    model, tokenizer = import_gpt2(source)
    model = model.to(torch_dtype(dtype))
    return save_model_directory(model, tokenizer, output_dir, overwrite=overwrite, max_shard_size=max_shard_size)
