"""The plan of a run, printed before it starts: sizes, memory, tokens, steps and FLOPs, against Chinchilla's rule.

Also the two figures model FLOPs utilisation (MFU) divides: the model FLOPs of a trained token
(`training_flops_per_token`) and the FLOP/s a device's matrix products reach (`measure_matmul_flops`), which the
training runs and `benchmarks/bench_model.py` share.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from common.errors import field
from common.files import format_size
from modeling_gptscratch import GPTScratchConfig, GPTScratchForCausalLM
from train.distributed import Parallelism
from train.optimization import muon_parameters
from train.options import DEFAULT_EPOCHS, FLOOR_SCHEDULERS, DataOptions, ModelOptions, OptimisationOptions

if TYPE_CHECKING:  # at run time the plan needs no datasets import (benchmarks/bench_model.py measures memory)
    from train.data import PreparedData

PRECISION_DTYPES = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
EXPECTATION_STEPS = 10  # with max_time, the steps after which the expected step count is logged


@dataclass
class Plan:
    """The run's sizes: optimizer steps per epoch and in all, tokens per step (all processes), the model FLOPs of
    a trained token, what runs on which processes, and the printout. `total_steps` is None when only `max_time`
    limits the run."""

    steps_per_epoch: int
    total_steps: int | None
    tokens_per_step: int
    flops_per_token: float
    parallelism: Parallelism
    lines: list[str]

    def is_last_step(self, step: int) -> bool:
        """Whether `step` optimizer steps reach the run's step limit."""
        return self.total_steps is not None and step >= self.total_steps


def training_flops_per_token(config: GPTScratchConfig, window: int) -> float:
    """Model FLOPs of one trained token, forward and backward, at `window` tokens of context.

    6 per weight that multiplies (the blocks' projections and the output head; an embedding lookup multiplies
    nothing), plus 12 x layers x emb_dim x window for the attention scores and their weighted sums: nanoGPT's and
    PaLM's count (appendix B), which ignores the cheaper element-wise work (norms, GELU, softmax, biases).
    """
    matmul_weights = config.vocab_size * config.emb_dim + config.n_layers * 12 * config.emb_dim**2
    return 6 * matmul_weights + 12 * config.n_layers * config.emb_dim * window


def measure_matmul_flops(device: torch.device, dtype: torch.dtype, seconds: float = 0.25) -> float:
    """The FLOP/s this device's square matrix products reach in `dtype`: the fastest of the products timed for
    about `seconds` (a peak, so a machine busy with other work lowers it less). What MFU divides by when no peak is
    given, measured at the start of a run.

    The size doubles from 256 to the device's largest (2048 on CPU, 8192 on accelerators) while a product takes
    under a quarter of `seconds`, so a precision the device emulates (bf16 on a CPU without AVX-512 BF16 can be 100x
    slower than fp32) is measured in about the same time as a fast one.
    """
    largest = 2048 if device.type == "cpu" else 8192
    batch = 1 if device.type == "cpu" else 10  # accelerators run asynchronously: time several per synchronisation
    generator = torch.Generator(device).manual_seed(0)  # leaves the global generators, which seed dropout, alone

    def timed_products(a: torch.Tensor, b: torch.Tensor) -> float:
        start = time.perf_counter()
        for _ in range(batch):
            a @ b
        if device.type != "cpu":
            torch.accelerator.synchronize(device)
        return time.perf_counter() - start

    size = 256
    while True:
        a, b = (torch.randn(size, size, device=device, dtype=dtype, generator=generator) for _ in range(2))
        timed_products(a, b)  # warm-up at this size: kernel choice, caches, clocks
        fastest = spent = timed_products(a, b)
        if size >= largest or fastest > seconds / 4:
            break
        size *= 2
    while spent < seconds:
        elapsed = timed_products(a, b)
        fastest, spent = min(fastest, elapsed), spent + elapsed
    return 2 * size**3 * batch / fastest


def steps_per_epoch(windows: int, batch_size: int, num_processes: int, grad_accum: int, engine: str) -> int:
    """Optimizer steps per epoch: the Accelerate loop drops an incomplete accumulation, the Trainer steps on it."""
    batches = windows // (batch_size * num_processes)
    if engine == "trainer":
        return max(1, math.ceil(batches / grad_accum))
    return max(1, batches // grad_accum)


def make_plan(
    data_options: DataOptions,
    model_options: ModelOptions,
    optimisation: OptimisationOptions,
    config: GPTScratchConfig,
    data: PreparedData,
    parallelism: Parallelism,
) -> Plan:
    """Sizes, memory, tokens and steps of the run, what runs on which processes (`parallelism`), and the
    Chinchilla-optimal token count for the model's size."""
    num_processes = parallelism.processes
    with torch.device("meta"):  # counts parameters without allocating them
        model = GPTScratchForCausalLM(config)
    total = sum(p.numel() for p in model.parameters())
    embeddings = model.model.tok_emb.weight.numel() + model.model.pos_emb.weight.numel()
    windows_per_epoch = data.train.windows_per_epoch
    if windows_per_epoch is None:  # a stream has no length: its epoch is the run
        per_epoch = optimisation.max_steps
    else:
        per_epoch = steps_per_epoch(
            windows_per_epoch, optimisation.batch_size, num_processes, optimisation.grad_accum, optimisation.engine
        )
    budget = optimisation.time_budget()
    if optimisation.max_steps or optimisation.epochs or budget is None:
        total_steps = optimisation.max_steps or per_epoch * (optimisation.epochs or DEFAULT_EPOCHS)
    else:
        total_steps = None  # as many as the time budget allows
    window = data.train.context_length
    tokens_per_step = optimisation.batch_size * window * num_processes * optimisation.grad_accum
    flops_per_token = training_flops_per_token(config, window)
    chinchilla = 20 * total

    # Memory per process, fp32 master weights as Accelerate and the Trainer keep them under mixed precision; what
    # the strategy shards, a share of it.
    weights = 4 * total * parallelism.share("parameters")
    gradients = 4 * total * parallelism.share("gradients")
    muon_weights = sum(p.numel() for p in muon_parameters(model)) if optimisation.optimizer == "muon" else 0
    # AdamW: two fp32 moments per parameter; Muon: one momentum
    optimizer_states = (8 * total - 4 * muon_weights) * parallelism.share("optimizer states")
    activation_bytes = 2 if optimisation.mixed_precision != "no" else 4
    # Per layer and token ~ (34 * emb_dim + 5 * heads * tokens) 16-bit values kept for backward (Korthikanti et
    # al. 2022, no recomputation; the second term is the attention matrix, which fused attention kernels avoid),
    # plus the fp32 logits and their gradient.
    activations = (
        optimisation.batch_size
        * window
        * (
            config.n_layers * (34 * config.emb_dim + 5 * config.n_heads * window) * activation_bytes / 2
            + 2 * 4 * config.vocab_size
        )
    )
    precision = {"no": "fp32", "bf16": "bf16 mixed", "fp16": "fp16 mixed"}[optimisation.mixed_precision]
    overrides = "".join(f", {key}={value}" for key, value in model_options.overrides().items())
    windows = f"context {window}, stride {data.train.stride}" + (
        ", attention within each document" if data_options.document_mask else ""
    )
    validation = f"validation {data.val.describe()} ({windows}"
    if data.token_files is None:  # a stream: validation is its first documents
        data_lines = [
            f"  data        {data.source}",
            f"  split       train: {data.train.describe()}; {validation}, the split's first documents)",
        ]
    else:
        files = data.token_files
        data_lines = [
            f"  data        {data.source}; {data.documents:,} documents"
            + (f", {data.duplicates_dropped:,} duplicates dropped" if data_options.dedup else ""),
            f"  split       train {data.train.describe()}; {validation}, ratio {data_options.train_ratio})",
            f"  token files {files.directory} ({format_size(files.size)}, {files.meta['dtype']})",
        ]
    lines = [
        "Plan",
        data_lines[0],
        f"  tokenizer   {data.tokenizer_description}",
        *data_lines[1:],
        f"  model       {_model_origin(model_options)}{overrides}: {config.n_layers} layers, {config.n_heads} heads, "
        f"{config.emb_dim} dims, context {config.context_length}, vocab {config.vocab_size}, "
        f"dropout {config.drop_rate} (attention {config.attention_dropout_rate})",
        f"  parameters  {total:,} ({total / 1e6:.2f} M), {total - embeddings:,} without embeddings",
        f"  memory      weights {_mb(weights)}, gradients {_mb(gradients)}, "
        f"optimizer states {_mb(optimizer_states)}, activations ~{_mb(activations)} "
        f"(batch {optimisation.batch_size} x {window}, {precision}); "
        f"~{_mb(weights + gradients + optimizer_states + activations)} per process",
        f"  parallelism {parallelism.describe()}; global batch {optimisation.batch_size} windows x {num_processes} "
        f"process{'es' * (num_processes > 1)} x {optimisation.grad_accum} accumulated = "
        f"{optimisation.batch_size * num_processes * optimisation.grad_accum} windows a step",
        f"  schedule    {optimisation.engine} engine, {num_processes} process{'es' * (num_processes > 1)}: "
        f"{per_epoch} steps/epoch, {_length(optimisation, total_steps, budget)}, {tokens_per_step:,} tokens/step",
        f"  optimizer   {_optimizer(optimisation)}; lr {optimisation.lr} {optimisation.lr_scheduler}"
        + (f" (decaying over the last {optimisation.decay_ratio:.0%})" if optimisation.lr_scheduler == "wsd" else "")
        + (f" to {optimisation.floor_lr():g}" if optimisation.lr_scheduler in FLOOR_SCHEDULERS else "")
        + f", warmup {optimisation.warmup_steps}, weight decay {optimisation.weight_decay}",
        f"  compute     {flops_per_token:.3g} model FLOPs per token (6 per weight + attention), "
        f"{flops_per_token * tokens_per_step:.3g} per step",
        f"  stability   {_stability(optimisation)}",
    ]
    if total_steps is None:
        lines.append(
            f"  tokens      this run sees {tokens_per_step:,} per step for {budget:g} s; Chinchilla-optimal for "
            f"{total / 1e6:.2f} M parameters (20 tokens/parameter) is {chinchilla:,}"
        )
    else:
        run_tokens = total_steps * tokens_per_step
        lines.append(
            f"  tokens      this run sees {run_tokens:,}; Chinchilla-optimal for {total / 1e6:.2f} M parameters "
            f"(20 tokens/parameter) is {chinchilla:,} ({run_tokens / chinchilla:.1%} of it)"
        )
    return Plan(per_epoch, total_steps, tokens_per_step, flops_per_token, parallelism, lines)


def _model_origin(model_options: ModelOptions) -> str:
    """Where the weights come from, as the model line says it: the source model, or the preset's random ones."""
    if model_options.init_from:
        return f"from {model_options.init_from} (its weights and tokenizer)"
    return model_options.preset


def _length(optimisation: OptimisationOptions, total_steps: int | None, budget: float | None) -> str:
    """How long the run is, as the schedule line says it."""
    if total_steps is None:
        return (
            f"as many steps as {budget:g} s allow ({field('max_time')}; the count it expects is logged after "
            f"{EXPECTATION_STEPS} steps)"
        )
    steps = f"{total_steps} steps" + (
        " (max steps)" if optimisation.max_steps else f" ({optimisation.epochs or DEFAULT_EPOCHS} epochs)"
    )
    return steps if budget is None else f"{steps} or {budget:g} s ({field('max_time')}), whichever ends first"


def _stability(optimisation: OptimisationOptions) -> str:
    """What the step guard does (`train.stability`), as the plan says it."""
    limits = {"loss": optimisation.skip_loss_zscore, "gradient norm": optimisation.skip_grad_zscore}
    checked = {what: limit for what, limit in limits.items() if limit > 0}
    if len(set(checked.values())) == 1:
        outlier = f"whose {' or '.join(checked)} lies over {next(iter(checked.values())):g}"
    else:
        outlier = ", or ".join(f"whose {what} lies over {limit:g}" for what, limit in checked.items()) + ","
    spikes = (
        f"a step {outlier} standard deviations above the last {optimisation.spike_window} steps' is skipped"
        if checked
        else "no step is skipped for a spike"
    )
    rollbacks = optimisation.max_rollbacks
    if not rollbacks:
        return f"{spikes}; a NaN or infinite loss stops the run"
    return f"{spikes}; a NaN or infinite loss rolls back to the last checkpoint (at most {rollbacks} times)"


def _optimizer(optimisation: OptimisationOptions) -> str:
    if optimisation.optimizer == "muon":
        return (
            f"Muon for the blocks' weight matrices (lr {optimisation.muon_lr or optimisation.lr}, momentum "
            f"{optimisation.muon_momentum:g}), AdamW for the embeddings, norms and biases"
        )
    return "AdamW"


def _mb(size: float) -> str:
    return f"{size / 2**30:.2f} GiB" if size >= 2**30 else f"{size / 2**20:.1f} MiB"
