"""The optimizer and the learning-rate schedule of a run, built by the same code for both engines.

`build_optimizer`: AdamW (optimizer `adamw`), with weight decay on 2-D weights only; or (optimizer `muon`)
PyTorch's `torch.optim.Muon` for the transformer blocks' weight matrices and AdamW for everything else (the token
and position embeddings, which are also the tied output head, the LayerNorms and the biases), the split
modded-nanogpt makes. Muon's update is scaled to the RMS of AdamW's (`adjust_lr_fn="match_rms_adamw"`, Moonshot's
"Muon is Scalable"), so it takes AdamW's learning rate and weight decay unless `muon_lr` says otherwise; the
scaling depends on a matrix's shape alone, not on whether it is stored [in, out] (this model's `Conv1D`) or
[out, in]. On a CPU, Muon's Newton-Schulz iteration runs in float32 instead of torch's bf16 (`newton_schulz_float32`);
under FSDP2 too, on each matrix gathered whole (`whole_matrices`), so the update is the one a single process makes.
Both optimizers step, save and are scheduled as one `torch.optim.Optimizer` (`MuonWithAdamW`), which is
what the Trainer and Accelerate take.

`build_scheduler`: transformers' schedules (constant, linear, cosine with a floor, warmup-stable-decay). Over the
run's steps; or, with `max_time`, over its time: the warmup stays in steps, then the decay's progress is the share
of the budget used (with a step limit too, whichever share is larger), so the decay ends when the time runs out.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from functools import partial
from typing import Any

import torch
from accelerate import PartialState
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.optim.lr_scheduler import LambdaLR
from transformers import get_scheduler

from common.compat import muon_orthogonalization
from modeling_gptscratch import TransformerBlock
from train.clock import TrainingClock
from train.options import OptimisationOptions

ADAMW_BETAS, ADAMW_EPS = (0.9, 0.999), 1e-8
TIME_HORIZON = 1_000_000  # the "steps" a time-based schedule is built over: its progress in millionths


def newton_schulz_float32(
    grad: torch.Tensor, ns_coefficients: tuple[float, float, float], ns_steps: int, eps: float
) -> torch.Tensor:
    """torch.optim.Muon's orthogonalisation of an update (its quintic Newton-Schulz iteration, with the coefficients
    and step count of its param group), computed in float32 instead of bf16.

    torch casts to bf16, which CPUs without native bf16 (AVX-512 BF16, AMX) emulate at a fraction of their float32
    speed (benchmarks/bench_step.py measures a step both ways).
    """
    a, b, c = ns_coefficients
    tall = grad.size(0) > grad.size(1)
    matrix = grad.float().T if tall else grad.float()  # iterate on the smaller Gram matrix
    matrix = matrix / matrix.norm().clamp(min=eps)  # spectral norm at most 1
    for _ in range(ns_steps):
        gram = matrix @ matrix.T
        matrix = torch.addmm(matrix, torch.addmm(gram, gram, gram, beta=b, alpha=c), matrix, beta=a)
    return matrix.T if tall else matrix


def whole_matrices(
    orthogonalize: Callable[[torch.Tensor, tuple[float, float, float], int, float], torch.Tensor],
) -> Callable[..., torch.Tensor]:
    """`orthogonalize` for updates that are DTensor shards of a matrix (FSDP2): every process gathers the whole
    matrix, orthogonalises it, and keeps its own shard of the result. The Newton-Schulz iteration then sees what it
    sees in one process, and each shard gets the same update (at the cost of every process iterating on every
    matrix, which for a model that fits one process's compute is the simple choice; Moonshot's distributed Muon
    spreads the matrices instead)."""

    def apply(grad: torch.Tensor, *settings: Any) -> torch.Tensor:
        whole = orthogonalize(grad.full_tensor(), *settings)
        return distribute_tensor(whole, grad.device_mesh, grad.placements, src_data_rank=None)

    return apply


def fused_adamw() -> bool:
    """Whether both engines use torch's fused AdamW kernel (one kernel for all parameters; CPU and CUDA have it)."""
    return PartialState().device.type in ("cpu", "cuda")


def muon_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The transformer blocks' weight matrices (q/k/v, attention output, feed-forward): what Muon optimizes."""
    return [
        parameter
        for module in model.modules()
        if isinstance(module, TransformerBlock)
        for parameter in module.parameters()
        if parameter.requires_grad and parameter.dim() == 2
    ]


def decay_parameter_groups(parameters: list[torch.nn.Parameter], weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on weight matrices and embeddings (2-D), none on biases and LayerNorm (1-D).

    The same split as the Trainer's default (LayerNorm weights and biases excluded).
    """
    decay = [p for p in parameters if p.dim() >= 2]
    no_decay = [p for p in parameters if p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class SkippableStep:
    """A mixin for the run's optimizers: after `skip_next_step()`, the next `step` leaves the weights and the
    optimizer's state as they are (a step `train.stability.StepGuard` skipped), whichever engine calls it."""

    _skip_next = False

    def skip_next_step(self) -> None:
        self._skip_next = True

    def skipping(self) -> bool:
        """Whether this step is to be skipped (asked once, by `step`)."""
        skip, self._skip_next = self._skip_next, False
        return skip


class AdamW(SkippableStep, torch.optim.AdamW):
    """torch's AdamW (its fused kernel where the device has it), whose steps can be skipped."""

    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        return None if self.skipping() else super().step(closure)


def skip_next_step(optimizer: torch.optim.Optimizer) -> None:
    """Makes the run's optimizer skip its next step; `optimizer` may be the one Accelerate wrapped around it."""
    getattr(optimizer, "optimizer", optimizer).skip_next_step()


class MuonWithAdamW(SkippableStep, torch.optim.Optimizer):
    """AdamW and Muon over disjoint parameters, stepped, saved and scheduled as one optimizer.

    `param_groups` are the two optimizers' own group dicts, AdamW's first (a scheduler that sets a group's lr sets
    it where it is used; the first group's lr is the one the engines log); the state dict holds each one's.
    """

    def __init__(self, adamw: torch.optim.Optimizer, muon: torch.optim.Optimizer):
        self.adamw, self.muon = adamw, muon
        # defaults["lr"] is what transformers' schedules take min_lr as a ratio of.
        super().__init__([*adamw.param_groups, *muon.param_groups], {"lr": adamw.defaults["lr"]})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        if self.skipping():
            return None
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.adamw.step()
        # Asked at each step: the Accelerate loop builds the optimizer before `prepare` moves (or shards) the weights.
        matrix = self.muon.param_groups[0]["params"][0]
        if isinstance(matrix, DTensor):
            orthogonalize = muon_orthogonalization(whole_matrices(newton_schulz_float32))
        elif matrix.device.type == "cpu":
            orthogonalize = muon_orthogonalization(newton_schulz_float32)
        else:
            orthogonalize = nullcontext()
        with orthogonalize:
            self.muon.step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        return {"adamw": self.adamw.state_dict(), "muon": self.muon.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.adamw.load_state_dict(state_dict["adamw"])
        self.muon.load_state_dict(state_dict["muon"])
        self.parts_loaded()

    def parts_loaded(self) -> None:
        """Points at the group dicts AdamW and Muon hold after loading a state (they make new ones), or schedules
        would set stale ones."""
        self.param_groups = [*self.adamw.param_groups, *self.muon.param_groups]


def torch_optimizers(optimizer: torch.optim.Optimizer) -> list[torch.optim.Optimizer]:
    """The torch optimizers the run's `optimizer` (or Accelerate's wrapper around it) is made of: AdamW, or AdamW
    and Muon; what torch's distributed state dicts take. Once a state is loaded into them, call `parts_loaded`."""
    inner = getattr(optimizer, "optimizer", optimizer)
    return [inner.adamw, inner.muon] if isinstance(inner, MuonWithAdamW) else [inner]


def parts_loaded(optimizer: torch.optim.Optimizer) -> None:
    """After a state was loaded into `torch_optimizers(optimizer)`: the run's optimizer follows them."""
    inner = getattr(optimizer, "optimizer", optimizer)
    if isinstance(inner, MuonWithAdamW):
        inner.parts_loaded()


def build_optimizer(model: torch.nn.Module, options: OptimisationOptions) -> torch.optim.Optimizer:
    """AdamW, or Muon for the blocks' weight matrices with AdamW for the rest (`options.optimizer`)."""
    matrices = muon_parameters(model) if options.optimizer == "muon" else []
    muon_ids = {id(parameter) for parameter in matrices}
    others = [p for p in model.parameters() if p.requires_grad and id(p) not in muon_ids]
    adamw = AdamW(
        decay_parameter_groups(others, options.weight_decay),
        lr=options.lr,
        betas=ADAMW_BETAS,
        eps=ADAMW_EPS,
        fused=fused_adamw(),
    )
    if not matrices:
        return adamw
    muon = torch.optim.Muon(
        matrices,
        lr=options.muon_lr or options.lr,
        weight_decay=options.weight_decay,
        momentum=options.muon_momentum,
        nesterov=True,
        adjust_lr_fn="match_rms_adamw",
    )
    return MuonWithAdamW(adamw, muon)


def build_scheduler(
    optimizer: torch.optim.Optimizer, options: OptimisationOptions, total_steps: int | None, clock: TrainingClock
) -> LambdaLR:
    """The learning-rate schedule over `total_steps` steps, or, with max_time, over the budget of `clock`.

    `total_steps` is the run's step limit (None: only the time limits it).
    """
    timed = options.max_time is not None
    warmup = options.warmup_steps
    horizon = max(TIME_HORIZON, 10 * warmup) if timed else total_steps
    names = {
        "constant": "constant_with_warmup" if warmup else "constant",
        "linear": "linear",
        "cosine": "cosine_with_min_lr",
        "wsd": "warmup_stable_decay",
    }
    kwargs = {
        "cosine": {"min_lr": options.floor_lr()},
        "wsd": {
            "num_decay_steps": min(round(options.decay_ratio * horizon), horizon - warmup),
            "min_lr_ratio": options.floor_lr() / options.lr,
            "decay_type": "linear",
        },
    }.get(options.lr_scheduler)
    scheduler = get_scheduler(
        names[options.lr_scheduler],
        optimizer,
        num_warmup_steps=warmup,
        num_training_steps=horizon,
        scheduler_specific_kwargs=kwargs,
    )
    if timed:  # partial objects: LambdaLR's state dict then stores no clock
        scheduler.lr_lambdas = [
            partial(
                _timed_factor, schedule=schedule, clock=clock, warmup=warmup, horizon=horizon, step_limit=total_steps
            )
            for schedule in scheduler.lr_lambdas
        ]
    return scheduler


def _timed_factor(
    step: int,
    *,
    schedule: Callable[[float], float],
    clock: TrainingClock,
    warmup: int,
    horizon: int,
    step_limit: int | None,
) -> float:
    """The factor `schedule` (built over `horizon` steps) gives once the warmup is over at the run's progress:
    the share of the time budget used, or of the step limit when that is larger."""
    if step < warmup:
        return schedule(step)
    progress = clock.progress
    if step_limit is not None and step_limit > warmup:
        progress = max(progress, (step - warmup) / (step_limit - warmup))
    return schedule(warmup + min(progress, 1.0) * (horizon - warmup))
