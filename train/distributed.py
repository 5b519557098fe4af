"""One run over several processes: what every process must agree on, and the model gathered back on the main one.

Data parallelism (torchrun, accelerate launch), FSDP and DeepSpeed all run the same code on every process; these
helpers are where that shows.
"""

from __future__ import annotations

from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils import DistributedType
from torch.distributed.tensor import DTensor

from modeling_gptscratch import GPTScratchConfig, GPTScratchForCausalLM


def use_cpu() -> bool:
    """True on a machine without an accelerator: Accelerate then runs several processes as CPU data parallelism
    (gloo) instead of treating each as a lone process."""
    return not torch.accelerator.is_available()


def any_process(flag: bool) -> bool:
    """True on every process when `flag` is True on any (a stop request must reach all before a collective save)."""
    return bool(max_over_processes([1.0 if flag else 0.0])[0])


def max_over_processes(values: list[float]) -> list[float]:
    """Each value's maximum over all processes (the values themselves with one process)."""
    return _reduce(values, "MAX")


def sum_over_processes(value: float) -> float:
    """The sum of `value` over all processes."""
    return _reduce([value], "SUM")[0]


def _reduce(values: list[float], operation: str) -> list[float]:
    state = PartialState()
    if state.num_processes == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=state.device)
    torch.distributed.all_reduce(tensor, op=getattr(torch.distributed.ReduceOp, operation))
    return tensor.tolist()


def gradient_norm(model: torch.nn.Module, accelerator: Any) -> float:
    """The total norm of the model's gradients, over all processes' shards and unscaled under fp16: what clipping
    measures before it clips."""
    norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
    if isinstance(norm, DTensor):  # sharded gradients (FSDP2): the norm over every shard
        norm = norm.full_tensor()
    scaler = accelerator.scaler
    scale = scaler.get_scale() if scaler is not None and scaler.is_enabled() else 1.0
    return float(norm) / scale


def weights_are_sharded(accelerator: Any) -> bool:
    """Whether each process holds only a slice of the weights (FSDP, DeepSpeed): outside the wrapped model's forward
    they are not whole, and the unwrapped model cannot run."""
    return accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def full_model(accelerator: Any, model: torch.nn.Module, config: GPTScratchConfig) -> GPTScratchForCausalLM | None:
    """The trained model with all its weights on the main process, None on the others; every process must call it.

    `model` is what `accelerator.prepare` returned. Sharded engines (FSDP, DeepSpeed) hold a slice of the weights
    per process: their state dict is gathered into a fresh model. Otherwise it is the unwrapped model itself.
    """
    if not weights_are_sharded(accelerator):
        return accelerator.unwrap_model(model, keep_torch_compile=False) if accelerator.is_main_process else None
    state_dict = accelerator.get_state_dict(model)
    if not accelerator.is_main_process:
        return None
    gathered = GPTScratchForCausalLM(config)
    gathered.load_state_dict(state_dict)
    return gathered
