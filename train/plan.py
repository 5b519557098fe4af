"""The plan of a run, printed before it starts: sizes, memory, tokens and steps, against Chinchilla's rule."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from modeling_gptscratch import GPTScratchConfig, GPTScratchForCausalLM
from common.files import format_size
from train.data import PreparedData
from train.options import TrainOptions


@dataclass
class Plan:
    """The run's sizes: optimizer steps per epoch and in all, tokens per step (all processes), and the printout."""

    steps_per_epoch: int
    total_steps: int
    tokens_per_step: int
    lines: list[str]


def steps_per_epoch(windows: int, batch_size: int, num_processes: int, grad_accum: int, engine: str) -> int:
    """Optimizer steps per epoch: the Accelerate loop drops an incomplete accumulation, the Trainer steps on it."""
    batches = windows // (batch_size * num_processes)
    if engine == "trainer":
        return max(1, math.ceil(batches / grad_accum))
    return max(1, batches // grad_accum)


def make_plan(options: TrainOptions, config: GPTScratchConfig, data: PreparedData, num_processes: int) -> Plan:
    """Sizes, memory, tokens and steps of the run, and the Chinchilla-optimal token count for the model's size."""
    with torch.device("meta"):  # counts parameters without allocating them
        model = GPTScratchForCausalLM(config)
    total = sum(p.numel() for p in model.parameters())
    embeddings = model.model.tok_emb.weight.numel() + model.model.pos_emb.weight.numel()
    if data.streamed:  # a stream has no length: its epoch is the run
        per_epoch = options.max_steps
    else:
        per_epoch = steps_per_epoch(len(data.train), options.batch_size, num_processes, options.grad_accum,
                                    options.engine)
    total_steps = options.max_steps or per_epoch * options.epochs
    window = data.train.context_length
    tokens_per_step = options.batch_size * window * num_processes * options.grad_accum
    run_tokens = total_steps * tokens_per_step
    chinchilla = 20 * total

    # Memory per process, fp32 master weights as Accelerate and the Trainer keep them under mixed precision.
    weights = gradients = 4 * total
    adam = 8 * total  # two fp32 moments per parameter
    activation_bytes = 2 if options.mixed_precision != "no" else 4
    # Per layer and token ~ (34 * emb_dim + 5 * heads * tokens) 16-bit values kept for backward (Korthikanti et
    # al. 2022, no recomputation; the second term is the attention matrix, which fused attention kernels avoid),
    # plus the fp32 logits and their gradient.
    activations = options.batch_size * window * (
        config.n_layers * (34 * config.emb_dim + 5 * config.n_heads * window) * activation_bytes / 2
        + 2 * 4 * config.vocab_size
    )
    precision = {"no": "fp32", "bf16": "bf16 mixed", "fp16": "fp16 mixed"}[options.mixed_precision]
    overrides = "".join(f", {key}={value}" for key, value in options.model_overrides().items())
    windows = f"context {window}, stride {data.train.stride}" + (
        ", attention within each document" if options.document_mask else "")
    if data.streamed:
        data_lines = [
            f"  data        {data.source}",
            f"  split       train: windows tokenised as the stream is read, drawn through a shuffle buffer of "
            f"{options.shuffle_buffer:,}; validation: the split's first documents, {data.val.num_tokens:,} tokens -> "
            f"{len(data.val):,} windows ({windows})",
        ]
    else:
        files = data.token_files
        data_lines = [
            f"  data        {data.source}; {data.documents:,} documents"
            + (f", {data.duplicates_dropped:,} duplicates dropped" if options.dedup else ""),
            f"  split       train {data.train.num_tokens:,} tokens -> {len(data.train):,} windows; "
            f"validation {data.val.num_tokens:,} tokens -> {len(data.val):,} windows "
            f"({windows}, ratio {options.train_ratio})",
            f"  token files {files.directory} ({format_size(files.size)}, {files.meta['dtype']})",
        ]
    lines = [
        "Plan",
        data_lines[0],
        f"  tokenizer   {data.tokenizer_description}",
        *data_lines[1:],
        f"  model       {options.preset}{overrides}: {config.n_layers} layers, {config.n_heads} heads, "
        f"{config.emb_dim} dims, context {config.context_length}, vocab {config.vocab_size}, "
        f"dropout {config.drop_rate}",
        f"  parameters  {total:,} ({total / 1e6:.2f} M), {total - embeddings:,} without embeddings",
        f"  memory      weights {_mb(weights)}, gradients {_mb(gradients)}, AdamW states {_mb(adam)}, "
        f"activations ~{_mb(activations)} (batch {options.batch_size} x {window}, {precision}); "
        f"~{_mb(weights + gradients + adam + activations)} per process",
        f"  schedule    {options.engine} engine, {num_processes} process{'es' * (num_processes > 1)}: "
        f"{per_epoch} steps/epoch, {total_steps} steps"
        + (" (max steps)" if options.max_steps else f" ({options.epochs} epochs)")
        + f", {tokens_per_step:,} tokens/step; lr {options.lr} {options.lr_scheduler}, "
        f"warmup {options.warmup_steps}, weight decay {options.weight_decay}",
        f"  tokens      this run sees {run_tokens:,}; Chinchilla-optimal for {total / 1e6:.2f} M parameters "
        f"(20 tokens/parameter) is {chinchilla:,} ({run_tokens / chinchilla:.1%} of it)",
    ]
    return Plan(per_epoch, total_steps, tokens_per_step, lines)


def scheduler_name(name: str, warmup_steps: int) -> str:
    """The transformers scheduler for `--lr-scheduler`: "constant" keeps a requested warmup."""
    return "constant_with_warmup" if name == "constant" and warmup_steps else name


def _mb(size: float) -> str:
    return f"{size / 2**30:.2f} GiB" if size >= 2**30 else f"{size / 2**20:.1f} MiB"
