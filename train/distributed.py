"""One run over several processes: what the launch runs, what every process must agree on, and the model gathered
back on the main one.

`launched` reads what a launcher asked for (`torchrun`, or `accelerate launch` and the variables it sets) against the
processes that started, and says what runs: one process; DDP (Accelerate's data parallelism, over gloo on CPU
processes, NCCL on GPUs); FSDP2, through Accelerate on GPUs and applied here (`shard_model`, torch's `fully_shard`)
on CPU processes, where Accelerate falls back to DDP; or DeepSpeed ZeRO through Accelerate, on CPU processes too.
A launch asking for what would not run is refused in one line, as are options a strategy cannot honour.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils import DeepSpeedPlugin, DistributedType
from torch.distributed import checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor

from common.errors import InputError, field
from modeling_gptscratch import GPTScratchConfig, GPTScratchForCausalLM, TransformerBlock
from train.optimization import parts_loaded, torch_optimizers
from train.options import OptimisationOptions

# A checkpoint's folder of FSDP2 shards (torch.distributed.checkpoint): weights and optimizer states.
SHARDED_STATE = "sharded"
DEEPSPEED_CHECKPOINT = "pytorch_model"  # the tag under which accelerator.save_state has DeepSpeed write its shards
ONE_PROCESS, DDP, FSDP, DEEPSPEED = "one process", "DDP", "FSDP", "DeepSpeed"
# What each strategy spreads over the processes instead of copying to each (FSDP: with its default full sharding).
SHARDED_PARTS = {
    FSDP: ("parameters", "gradients", "optimizer states"),
    (DEEPSPEED, 1): ("optimizer states",),
    (DEEPSPEED, 2): ("gradients", "optimizer states"),
    (DEEPSPEED, 3): ("parameters", "gradients", "optimizer states"),
}
# The FSDP launch settings (accelerate launch's environment) that the FSDP2 applied to CPU processes here honours
# only at these values (unset: the same); anything else would train otherwise than asked.
FSDP_ON_CPU = {
    "FSDP_VERSION": ("2", "FSDP version {value}"),
    "FSDP_AUTO_WRAP_POLICY": ("TRANSFORMER_BASED_WRAP", "the wrap policy {value}"),
    "FSDP_TRANSFORMER_CLS_TO_WRAP": ("TransformerBlock", "wrapping {value}"),
    "FSDP_ACTIVATION_CHECKPOINTING": ("false", "activation checkpointing"),
    "FSDP_OFFLOAD_PARAMS": ("false", "parameter offloading"),
    "FSDP_STATE_DICT_TYPE": ("SHARDED_STATE_DICT", "the state dict type {value}"),
}


def use_cpu() -> bool:
    """True on a machine without an accelerator: Accelerate then runs several processes as CPU data parallelism
    (gloo) instead of treating each as a lone process."""
    return not torch.accelerator.is_available()


def _flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() == "true"


def deepspeed_asked() -> bool:
    """Whether the launch asks for DeepSpeed (`accelerate launch --use_deepspeed` sets ACCELERATE_USE_DEEPSPEED)."""
    return _flag("ACCELERATE_USE_DEEPSPEED")


def accelerate_cpu() -> bool:
    """The `cpu` to tell Accelerate (its state, the Accelerator): whether there is no accelerator, except for
    DeepSpeed's launched processes, as Accelerate applies DeepSpeed only when not told `cpu`."""
    return use_cpu() and not (deepspeed_asked() and "LOCAL_RANK" in os.environ)


def start_processes() -> PartialState:
    """This process's place in the run (Accelerate's state, made once). CPU processes are Accelerate's `cpu`
    data parallelism over gloo; under DeepSpeed they need gloo named as the backend, or Accelerate counts one
    process where DeepSpeed counts them all."""
    if use_cpu() and not accelerate_cpu():
        return PartialState(cpu=False, backend="gloo")
    return PartialState(cpu=use_cpu())


@dataclass(frozen=True)
class Parallelism:
    """What runs: the strategy (ONE_PROCESS, DDP, FSDP, DEEPSPEED), over how many processes on which device and
    backend; FSDP's version and whether it is applied here (`shards_itself`, CPU processes) or by Accelerate;
    DeepSpeed's ZeRO stage."""

    strategy: str
    processes: int
    device: str
    backend: str | None = None
    fsdp_version: int | None = None
    shards_itself: bool = False
    reshard_after_forward: bool = True
    zero_stage: int | None = None

    @property
    def sharded(self) -> tuple[str, ...]:
        """What each process holds a 1/processes share of, instead of a copy."""
        return SHARDED_PARTS.get(self.strategy if self.strategy == FSDP else (self.strategy, self.zero_stage), ())

    def share(self, part: str) -> float:
        """The share of `part` ("parameters", "gradients", "optimizer states") each process holds."""
        return 1 / self.processes if part in self.sharded else 1.0

    def describe(self) -> str:
        """The plan's line: the strategy, what it shards and how, the processes and devices."""
        where = f"{self.processes} {self.device.upper() if self.device != 'cpu' else 'CPU'} process" + (
            "es" * (self.processes > 1)
        )
        over = f"{where}, {self.backend}" if self.backend else where
        sharded = f"{', '.join(self.sharded)} sharded".replace(", optimizer", " and optimizer")
        if self.strategy == ONE_PROCESS:
            return f"one process ({self.device}), no parallelism"
        if self.strategy == DDP:
            return f"DDP through Accelerate over {over}: weights replicated, gradients averaged by all-reduce"
        if self.strategy == DEEPSPEED:
            return f"DeepSpeed ZeRO stage {self.zero_stage} through Accelerate over {over}: {sharded}"
        if self.shards_itself:
            return (
                f"FSDP2 (torch's fully_shard, applied by gptscratch: Accelerate shards GPU processes only) over "
                f"{over}: {sharded}; each TransformerBlock a unit, then the root (embeddings, tied head, final norm); "
                f"parameters {'resharded' if self.reshard_after_forward else 'kept whole'} after forward"
            )
        policy = os.environ.get("FSDP_AUTO_WRAP_POLICY", "TRANSFORMER_BASED_WRAP")
        wrapped = os.environ.get("FSDP_TRANSFORMER_CLS_TO_WRAP", "TransformerBlock")
        return f"FSDP{self.fsdp_version} through Accelerate over {over}: {sharded}; wrap policy {policy} ({wrapped})"


def launched(optimisation: OptimisationOptions) -> Parallelism:
    """What this launch runs, from the processes started (`start_processes`) and what the launcher asked for.

    Raises InputError, naming what was asked, what would run instead and the fix, for a launch that asks for a
    strategy that would not run (FSDP where Accelerate falls back to DDP and this package does not shard, several
    processes asked of `accelerate launch` where one started), and for options the strategy cannot honour.
    """
    state = PartialState()
    if "MASTER_ADDR" in os.environ and "ACCELERATE_MIXED_PRECISION" in os.environ and "WORLD_SIZE" not in os.environ:
        # accelerate launch's simple launcher sets MASTER_ADDR for several processes, and then starts one.
        raise InputError(
            "accelerate launch asked for several processes but started one (it runs several only with "
            "--multi_gpu, --use_fsdp or --use_deepspeed, CPU processes included); launch with accelerate launch "
            "--multi_gpu --num_processes N, or torchrun --nproc_per_node N"
        )
    backend = state.backend if state.num_processes > 1 or "LOCAL_RANK" in os.environ else None
    base = {"processes": state.num_processes, "device": state.device.type, "backend": backend}
    if deepspeed_asked():
        zero_stage = DeepSpeedPlugin().zero_stage  # as the launch sets it (flags or a DeepSpeed config file)
        if state.distributed_type != DistributedType.DEEPSPEED:
            raise InputError(
                f"DeepSpeed ZeRO stage {zero_stage} asked (ACCELERATE_USE_DEEPSPEED) without a launcher's processes: "
                "this would train one process without it; launch with accelerate launch --use_deepspeed"
            )
        parallelism = Parallelism(DEEPSPEED, zero_stage=zero_stage, **base)
    elif _flag("ACCELERATE_USE_FSDP"):
        parallelism = fsdp_parallelism(state, base)
    else:
        parallelism = Parallelism(DDP if state.num_processes > 1 else ONE_PROCESS, **base)
    check_options(parallelism, optimisation)
    return parallelism


def fsdp_parallelism(state: PartialState, base: dict[str, Any]) -> Parallelism:
    """FSDP as asked: Accelerate's on accelerators, applied here (`shard_model`) on CPU processes."""
    version = int(os.environ.get("FSDP_VERSION", "1"))
    reshard = _flag("FSDP_RESHARD_AFTER_FORWARD") or "FSDP_RESHARD_AFTER_FORWARD" not in os.environ
    if state.distributed_type == DistributedType.NO:
        raise InputError(
            f"FSDP{version} asked (ACCELERATE_USE_FSDP) without a launcher's processes: this would train one "
            "process unsharded; launch with accelerate launch --use_fsdp --fsdp_version 2 --num_processes N"
        )
    if state.distributed_type != DistributedType.MULTI_CPU:  # GPUs and other accelerators: Accelerate's FSDP
        return Parallelism(FSDP, fsdp_version=version, reshard_after_forward=reshard, **base)
    for name, (accepted, what) in FSDP_ON_CPU.items():
        value = os.environ.get(name, accepted)
        if value.lower() != accepted.lower():
            raise InputError(
                f"FSDP with {what.format(value=value)} ({name}) on CPU processes: Accelerate applies FSDP to GPU "
                "processes only (CPU ones would train plain DDP), and gptscratch shards CPU processes with FSDP2, "
                f"each TransformerBlock a unit, without offloading or activation checkpointing; launch with "
                f"{name} {accepted} (accelerate launch --use_fsdp --fsdp_version 2), or on GPUs"
            )
    return Parallelism(FSDP, fsdp_version=2, shards_itself=True, reshard_after_forward=reshard, **base)


def check_options(parallelism: Parallelism, optimisation: OptimisationOptions) -> None:
    """Refuses options that `parallelism` cannot honour, naming the option and the fix."""
    if parallelism.strategy in (FSDP, DEEPSPEED) and optimisation.engine == "trainer" and use_cpu():
        raise InputError(
            f"{field('engine')} trainer with {parallelism.strategy} on CPU processes: the Trainer tells Accelerate "
            f"they are CPU ones, and Accelerate then trains plain DDP; use {field('engine')} accelerate, whose loop "
            "shards CPU processes"
        )
    if optimisation.optimizer == "muon" and (parallelism.strategy == DEEPSPEED or parallelism.fsdp_version == 1):
        name = f"DeepSpeed ZeRO stage {parallelism.zero_stage}" if parallelism.strategy == DEEPSPEED else "FSDP1"
        raise InputError(
            f"{field('optimizer')} muon under {name}: it hands the optimizer flat slices of the weights, where "
            f"Muon's Newton-Schulz step needs whole matrices; pass {field('optimizer')} adamw, or shard with FSDP2 "
            "(where Muon gathers each matrix)"
        )
    guarded = optimisation.skip_loss_zscore or optimisation.skip_grad_zscore or optimisation.max_rollbacks
    if parallelism.strategy == DEEPSPEED and guarded:
        raise InputError(
            "DeepSpeed applies each update inside its backward pass, before the step guard could skip it: pass "
            f"{field('skip_loss_zscore')} 0 {field('skip_grad_zscore')} 0 {field('max_rollbacks')} 0 with DeepSpeed "
            "(a NaN loss then stops the run), or shard with FSDP2"
        )


def shard_model(model: torch.nn.Module, reshard_after_forward: bool = True) -> torch.nn.Module:
    """`model` sharded in place with FSDP2 over every process of the run (a CPU device mesh, gloo): each
    TransformerBlock is a unit whose parameters are gathered for its forward and backward, then the root holds the
    rest (embeddings, the tied output head, the final norm), so the head stays tied to the token embedding.

    Every process must pass the same weights (the same seed): each keeps its shard of them.
    """
    mesh = init_device_mesh(PartialState().device.type, (PartialState().num_processes,))
    for module in model.modules():
        if isinstance(module, TransformerBlock):
            fully_shard(module, mesh=mesh, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard_after_forward)
    return model


def save_sharded(model: torch.nn.Module, optimizer: torch.optim.Optimizer, checkpoint: Path) -> None:
    """Writes the weights and optimizer states of a model `shard_model` sharded into `checkpoint`/sharded, each
    process its own shards (torch's distributed checkpoint); every process must call it."""
    model_state, optimizer_state = get_state_dict(model, torch_optimizers(optimizer))
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=checkpoint / SHARDED_STATE)


def load_sharded(model: torch.nn.Module, optimizer: torch.optim.Optimizer, checkpoint: Path) -> None:
    """Reads what `save_sharded` wrote into the sharded `model` and its `optimizer`, on as many processes."""
    parts = torch_optimizers(optimizer)
    model_state, optimizer_state = get_state_dict(model, parts)
    state = {"model": model_state, "optimizer": optimizer_state}
    dcp.load(state, checkpoint_id=checkpoint / SHARDED_STATE)
    set_state_dict(model, parts, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    parts_loaded(optimizer)


def load_gathered(model: torch.nn.Module, checkpoint: Path) -> bool:
    """Puts the weights of a sharded checkpoint (FSDP2's, DeepSpeed's) into the whole `model`; False when
    `checkpoint` holds no shards (its weights are the safetensors file Accelerate writes)."""
    if (checkpoint / SHARDED_STATE).is_dir():
        state = get_model_state_dict(model)
        dcp.load({"model": state}, checkpoint_id=checkpoint / SHARDED_STATE)
        set_model_state_dict(model, state)
        return True
    if (checkpoint / DEEPSPEED_CHECKPOINT).is_dir():
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint  # an optional dependency

        load_whole(model, get_fp32_state_dict_from_zero_checkpoint(str(checkpoint), tag=DEEPSPEED_CHECKPOINT))
        return True
    return False


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


def as_float(norm: torch.Tensor | float | None) -> float:
    """A norm as a number: a DTensor's over every shard (FSDP2), None (no gradient yet) as NaN."""
    if isinstance(norm, DTensor):
        norm = norm.full_tensor()
    return float("nan") if norm is None else float(norm)


def gradient_norm(model: torch.nn.Module, accelerator: Any) -> float:
    """The total norm of the model's gradients, over all processes' shards and unscaled under fp16: what clipping
    measures before it clips."""
    norm = as_float(torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None]))
    scaler = accelerator.scaler
    scale = scaler.get_scale() if scaler is not None and scaler.is_enabled() else 1.0
    return norm / scale


def weights_are_sharded(accelerator: Any, model: torch.nn.Module | None = None) -> bool:
    """Whether each process holds only a slice of the weights (FSDP, DeepSpeed; `model` sharded by `shard_model`):
    outside the wrapped model's forward they are not whole, and the unwrapped model cannot run."""
    return accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED) or isinstance(
        model, FSDPModule
    )


def full_model(accelerator: Any, model: torch.nn.Module, config: GPTScratchConfig) -> GPTScratchForCausalLM | None:
    """The trained model with all its weights on the main process, None on the others; every process must call it.

    `model` is what `accelerator.prepare` (or `shard_model`) returned. Sharded weights are gathered into a fresh
    model: FSDP2's through torch's distributed state dict, DeepSpeed's as its float32 master weights (under mixed
    precision the module holds 16-bit copies), FSDP1's through Accelerate. Otherwise it is the unwrapped model.
    """
    if not weights_are_sharded(accelerator, model):
        return accelerator.unwrap_model(model, keep_torch_compile=False) if accelerator.is_main_process else None
    if isinstance(model, FSDPModule):
        state_dict = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    elif accelerator.distributed_type == DistributedType.DEEPSPEED:
        from deepspeed.utils import safe_get_full_fp32_param

        module = accelerator.unwrap_model(model)
        state_dict = {
            name: safe_get_full_fp32_param(parameter).cpu()
            for name, parameter in module.named_parameters(remove_duplicate=False)
        }
    else:
        state_dict = accelerator.get_state_dict(model)
    if not accelerator.is_main_process:
        return None
    gathered = GPTScratchForCausalLM(config)
    load_whole(gathered, state_dict)
    return gathered


def load_whole(model: GPTScratchForCausalLM, state_dict: dict[str, torch.Tensor]) -> None:
    """Loads gathered weights into `model`, which must take them all; the tied output head may be missing (gatherers
    store the one tensor once, as the embedding)."""
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    tied = {"out_head.weight"} if model.config.tie_word_embeddings else set()
    if unexpected or set(missing) - tied:
        raise RuntimeError(f"the gathered weights do not fit the model: missing {missing}, unexpected {unexpected}")
