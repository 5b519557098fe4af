"""One run over several processes: what every process must agree on, and the model gathered back on the main one.

Data parallelism (torchrun, accelerate launch), FSDP and DeepSpeed all run the same code on every process; these
helpers are where that shows. Ctrl-C and SIGTERM are here too: the stop they ask for is agreed on by all processes.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils import DistributedType

from modeling_gptscratch import GPTScratchConfig, GPTScratchForCausalLM


def fused_adamw() -> bool:
    """Whether both engines use torch's fused AdamW kernel (one kernel for all parameters; CPU and CUDA have it)."""
    return PartialState().device.type in ("cpu", "cuda")


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


class StopSignals:
    """While active, SIGINT and SIGTERM ask the run to stop at the end of the current step (a second one aborts).

    The engines check `requested` after each optimizer step, save a checkpoint and return.
    """

    def __init__(self) -> None:
        self.signal_number: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for number in (signal.SIGINT, signal.SIGTERM):
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    def _handle(self, number: int, frame: Any) -> None:
        if self.signal_number is not None:
            raise KeyboardInterrupt  # a second signal: stop now; checkpoints are written atomically
        self.signal_number = number
        print(f"\n{signal.Signals(number).name} received: stopping after this step and saving a checkpoint", flush=True)

    @property
    def requested(self) -> bool:
        return self.signal_number is not None
