"""Write a GPTScratch model as an ONNX model with its KV cache as inputs and outputs, for ONNX Runtime.

The graph is the model's own public forward, traced by `torch.onnx.export(..., dynamo=True)` (torch.export, then
onnxscript), with a transformers `DynamicCache` built from the past tensors: whatever the model does inside, the
export follows. Inputs and outputs are named as Optimum names those of its decoder exports:

    input_ids                 int64 [batch, tokens]
    attention_mask            int64 [batch, past + tokens]          1 for real tokens, 0 for padding
    position_ids              int64 [batch, tokens]                 each token's position in its row
    past_key_values.N.key     float [batch, heads, past, head_dim]  (and .value) for each layer N
    ->
    logits                    float [batch, tokens, vocab]
    present.N.key             float [batch, heads, past + tokens, head_dim]  (and .value): the next step's past

A prefill passes a past of length 0; each decoding step passes the presents of the step before. The floats are the
model's dtype (float32, or float16 for an export in f16).
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from transformers import DynamicCache, PreTrainedTokenizerBase

from common.model_dir import with_chat_template
from modeling_gptscratch import CACHE_NAME, GPTScratchForCausalLM

ONNX_FILE = "model.onnx"
# The ONNX operator set written: 18 is the oldest the dynamo exporter writes, which ONNX Runtime 1.14+ runs.
OPSET = 18


def input_names(n_layers: int) -> list[str]:
    """The graph's inputs in order: input_ids, attention_mask, position_ids, then each layer's past key and value."""
    past = [f"past_key_values.{i}.{part}" for i in range(n_layers) for part in ("key", "value")]
    return ["input_ids", "attention_mask", "position_ids", *past]


def output_names(n_layers: int) -> list[str]:
    """The graph's outputs in order: logits, then each layer's present key and value."""
    return ["logits", *(f"present.{i}.{part}" for i in range(n_layers) for part in ("key", "value"))]


class CachedCausalLM(torch.nn.Module):
    """The model's forward with its KV cache as flat tensors: what the ONNX graph computes."""

    def __init__(self, model: GPTScratchForCausalLM):
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor, *past: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        """input_ids, position_ids: [batch, tokens]; attention_mask: [batch, past + tokens]; past: each layer's key
        and value, [batch, heads, past, head_dim] -> logits [batch, tokens, vocab], then each layer's key and value
        [batch, heads, past + tokens, head_dim]."""
        cache = DynamicCache(ddp_cache_data=list(zip(past[::2], past[1::2])))
        outputs = self.model(
            input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=True, **{CACHE_NAME: cache}
        )
        presents = getattr(outputs, CACHE_NAME)
        return (outputs.logits, *(tensor for layer in presents.layers for tensor in (layer.keys, layer.values)))


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Within it, torch.onnx's warnings are not shown: about what does not concern this graph (torchvision's
    operators it cannot register, dimension names it merges, deprecations inside torch), a dozen lines before the
    export's one line of result. Errors still raise."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def write_onnx(model: GPTScratchForCausalLM, path: str | os.PathLike) -> None:
    """Exports `model`, in its dtype, as the graph described above to the file `path` (weights over ONNX's 2 GB
    limit go to a file beside it, `path`.data)."""
    config = model.config
    head_dim = config.emb_dim // config.n_heads
    # Example inputs: sizes other than 0 and 1 (torch.export takes those as fixed), and no tensor passed twice
    # (torch.export takes two arguments that are one tensor for one input).
    batch, tokens, past = 2, 3, 4
    example = (
        torch.zeros(batch, tokens, dtype=torch.long),
        torch.ones(batch, past + tokens, dtype=torch.long),
        (torch.arange(tokens) + past).expand(batch, tokens).clone(),
        *(torch.zeros(batch, config.n_heads, past, head_dim, dtype=model.dtype) for _ in range(2 * config.n_layers)),
    )
    dim = torch.export.Dim
    batch_dim, tokens_dim = dim("batch"), dim("tokens", max=config.context_length)
    past_dim = dim("past", max=config.context_length)
    past_shapes = tuple({0: batch_dim, 2: past_dim} for _ in range(2 * config.n_layers))
    shapes = ({0: batch_dim, 1: tokens_dim}, {0: batch_dim, 1: dim("past_and_tokens")}, {0: batch_dim, 1: tokens_dim})
    with torch.no_grad(), _quiet_exporter():
        program = torch.onnx.export(
            CachedCausalLM(model.eval()).eval(),
            example,
            input_names=input_names(config.n_layers),
            output_names=output_names(config.n_layers),
            dynamic_shapes=(*shapes, past_shapes),  # *past is one argument of the signature: one entry
            opset_version=OPSET,
            dynamo=True,
            verbose=False,
        )
        program.save(str(path))


def write_onnx_directory(
    model: GPTScratchForCausalLM, tokenizer: PreTrainedTokenizerBase, directory: str | os.PathLike
) -> None:
    """Writes into the existing `directory` what a program running the model in ONNX Runtime needs: model.onnx (see
    `write_onnx`; its inputs give the sizes), generation_config.json (special tokens, decoding defaults) and the
    tokenizer files. No config.json: the model's names `modeling_gptscratch.py`, which transformers would then ask
    to run before it loads even the tokenizer."""
    directory = Path(directory)
    write_onnx(model, directory / ONNX_FILE)
    model.generation_config.save_pretrained(directory)
    with_chat_template(tokenizer).save_pretrained(directory)
