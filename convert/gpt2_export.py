"""Export a GPTScratch model directory as a plain transformers GPT-2 directory (`GPT2LMHeadModel`, no remote code).

GPTScratch is GPT-2's architecture under the book's names, so the export only renames tensors: both keep their
projection weights as [in, out] (GPT-2's `Conv1D`, GPTScratch's `Projection`), and the fused q/k/v matrix maps to
`c_attn` as it is (both put q, k, v side by side in that order).

What GPT-2 cannot express is refused with the reason:
- an output head separate from the token embedding (`tie_word_embeddings=false`): GPT-2 ties them, and programs
  that run GPT-2 checkpoints take the embedding as the head, so they would silently run a different model.
Expressed exactly: `qkv_bias=false` becomes zero q/k/v biases (adding zero changes nothing); `layer_norm_eps` is
GPT2Config's `layer_norm_epsilon`; `drop_rate` sets GPT-2's embedding and residual dropout, and the attention dropout
(`attention_dropout`, which defaults to `drop_rate`) its `attn_pdrop`.

Command line: `gptscratch-export --model DIR --format gpt2 --output OUT` (convert.export), the older
`python -m convert.gpt2_export --model DIR --output-dir OUT [--overwrite]`, or `gptscratch-push --format gpt2` to
publish the export to a local hub.
"""

from __future__ import annotations

import argparse
import copy
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerBase

from common.commands import ArgumentParser, run_command
from common.errors import InputError
from common.model_dir import with_chat_template
from convert.exporting import export_to
from modeling_gptscratch import GPTScratchConfig, GPTScratchForCausalLM

PROG = "python -m convert.gpt2_export"


def gpt2_config(config: GPTScratchConfig, source: str | None = None) -> GPT2Config:
    """The GPT2Config of the same architecture; an InputError (naming `source`, where the model came from) when
    GPT-2 cannot express `config`."""
    if not config.tie_word_embeddings:
        raise InputError(
            f"GPT-2 cannot express this model{f' ({source})' if source else ''}: its output head is separate from "
            "the token embedding "
            "(tie_word_embeddings=false), and GPT-2 ties them, so tools that run GPT-2 would use the embedding as the "
            "head; publish it in the gptscratch format instead"
        )
    return GPT2Config(
        vocab_size=config.vocab_size,
        n_positions=config.context_length,
        # GPT2Config reads only n_positions; llama.cpp's convert_hf_to_gguf.py reads the context length from n_ctx
        # (which GPT2Config keeps and saves as it is).
        n_ctx=config.context_length,
        n_embd=config.emb_dim,
        n_layer=config.n_layers,
        n_head=config.n_heads,
        n_inner=4 * config.emb_dim,
        activation_function="gelu_new",  # GPT-2's tanh-approximated GELU, as FeedForward uses
        resid_pdrop=config.drop_rate,
        embd_pdrop=config.drop_rate,
        attn_pdrop=config.attention_dropout_rate,
        layer_norm_epsilon=config.layer_norm_eps,
        initializer_range=config.initializer_range,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        tie_word_embeddings=True,
    )


# A transformer block's tensors: GPTScratch's name and GPT-2's. Both store projections as [in, out] (GPT-2's Conv1D,
# GPTScratch's Projection), and the fused q/k/v matrix holds q, k, v side by side in both: the same tensors, renamed.
BLOCK_NAMES = (
    ("norm1.weight", "ln_1.weight"),
    ("norm1.bias", "ln_1.bias"),
    ("att.qkv.weight", "attn.c_attn.weight"),  # [emb, 3 * emb]
    ("att.qkv.bias", "attn.c_attn.bias"),
    ("att.out_proj.weight", "attn.c_proj.weight"),
    ("att.out_proj.bias", "attn.c_proj.bias"),
    ("norm2.weight", "ln_2.weight"),
    ("norm2.bias", "ln_2.bias"),
    ("ff.layers.0.weight", "mlp.c_fc.weight"),  # [emb, 4 * emb]
    ("ff.layers.0.bias", "mlp.c_fc.bias"),
    ("ff.layers.2.weight", "mlp.c_proj.weight"),  # [4 * emb, emb]
    ("ff.layers.2.bias", "mlp.c_proj.bias"),
)


def gpt2_names(n_layers: int) -> dict[str, str]:
    """GPTScratch's parameter names -> GPT-2's, for a model of `n_layers` blocks (the tied head aside: both models
    tie it to the token embedding themselves)."""
    names = {
        "model.tok_emb.weight": "transformer.wte.weight",
        "model.pos_emb.weight": "transformer.wpe.weight",
        "model.final_norm.weight": "transformer.ln_f.weight",
        "model.final_norm.bias": "transformer.ln_f.bias",
    }
    for i in range(n_layers):
        names.update({f"model.trf_blocks.{i}.{ours}": f"transformer.h.{i}.{theirs}" for ours, theirs in BLOCK_NAMES})
    return names


def gpt2_state_dict(model: GPTScratchForCausalLM) -> dict[str, torch.Tensor]:
    """GPTScratch's weights under GPT-2's tensor names: `model`'s own tensors, no copies (same layouts). GPT-2 always
    has q/k/v biases: a model without them gets zeros (adding zero changes nothing)."""
    ours = dict(model.named_parameters())
    state = {theirs: ours[name].detach() for name, theirs in gpt2_names(model.config.n_layers).items() if name in ours}
    for i, block in enumerate(model.model.trf_blocks):
        qkv = block.att.qkv
        if qkv.bias is None:
            state[f"transformer.h.{i}.attn.c_attn.bias"] = qkv.weight.new_zeros(qkv.weight.shape[1])
    return state


def to_gpt2(model: GPTScratchForCausalLM) -> GPT2LMHeadModel:
    """A GPT2LMHeadModel in eval mode computing the same logits as `model`; an InputError when GPT-2 cannot express it.

    It shares `model`'s tensors (only a missing q/k/v bias is a new zero vector): built on the meta device, it never
    allocates random weights of its own, so exporting costs no second copy of the model.
    """
    config = gpt2_config(model.config)
    with torch.device("meta"):
        gpt2 = GPT2LMHeadModel(config)
    # load_state_dict checks every shape; the tied head is the one name left to tie_weights, any other gap or
    # extra name would be a mapping bug.
    missing, unexpected = gpt2.load_state_dict(gpt2_state_dict(model), strict=False, assign=True)
    if unexpected or set(missing) != {"lm_head.weight"}:
        raise RuntimeError(f"GPT-2 mapping is incomplete: missing {missing}, unexpected {unexpected}")
    gpt2.tie_weights()
    gpt2.generation_config = copy.deepcopy(model.generation_config)
    return gpt2.eval()


def write_gpt2_directory(
    model: GPTScratchForCausalLM, tokenizer: PreTrainedTokenizerBase, directory: str | os.PathLike
) -> None:
    """Writes the GPT-2 export of `model` and its tokenizer into the existing `directory`."""
    gpt2 = to_gpt2(model)
    gpt2.save_pretrained(directory)
    with_chat_template(tokenizer).save_pretrained(directory)


def export_gpt2(model_dir: str | os.PathLike, output_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Writes `output_dir` atomically: a GPT2LMHeadModel directory (config.json with model_type gpt2,
    model.safetensors with GPT-2's tensor names, generation_config.json, tokenizer) from the model directory."""
    export_to(
        model_dir,
        output_dir,
        write_gpt2_directory,
        what="GPT-2 directory",
        output_field="output_dir",
        overwrite=overwrite,
        refuse=gpt2_config,
    )
    return Path(output_dir)


def build_parser() -> argparse.ArgumentParser:
    """The flags of `python -m convert.gpt2_export`: the gptscratch model directory and the GPT-2 one to write."""
    parser = ArgumentParser(
        prog=PROG,
        description="Export a gptscratch model directory as a plain transformers GPT-2 directory (no remote code).",
    )
    parser.add_argument("--model", required=True, help="gptscratch model directory (trained or converted)")
    parser.add_argument("--output-dir", required=True, help="where to write the GPT-2 directory")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output-dir")
    return parser


def _main(argv: Sequence[str] | None) -> None:
    args = build_parser().parse_args(argv)
    output = export_gpt2(args.model, args.output_dir, overwrite=args.overwrite)
    print(f"wrote GPT-2 directory {output} (load with GPT2LMHeadModel.from_pretrained, no trust_remote_code)")


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of `python -m convert.gpt2_export`; `argv` defaults to the command line."""
    run_command(PROG, lambda: _main(argv))


if __name__ == "__main__":
    main()
