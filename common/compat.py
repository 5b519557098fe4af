"""Every upstream internal the package relies on, in one place: private names, message texts, loggers' wording.

A new release may rename or reword any of these without notice, and code built on one would then break, or worse,
go quiet. Each is used through this module only, with what it is for, and `tests/test_compat.py` checks every one
against the installed releases by name, so `make test-latest` says which one moved. Standard library only at import
time (`common.errors` needs it before torch loads); the upstream modules are imported by the helpers that use them.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
from collections.abc import Callable, Iterator
from typing import Any

# torch.save reports a failed write without its errno: "[enforce fail at inline_container.cc:672] . unexpected pos
# 640 vs 598", caused by "basic_ios::clear: iostream error" (torch's C++ archive writer, PytorchStreamWriter).
TORCH_WRITE_FAILURE_MESSAGES = ("inline_container.cc", "basic_ios::clear", "PytorchStreamWriter failed")

# Accelerate warns, on every save of a model whose output head is tied to its embedding, that it stored the tensor
# once; loading ties it again, so the warning is noise.
ACCELERATE_SHARED_TENSOR = ("accelerate.utils.other", "Removed shared tensor")

# DeepSpeed, imported by Accelerate wherever it is installed, warns at import on a machine without an accelerator that
# it is "Setting accelerator to CPU": a line before every command's output, and before a refusal's one line.
DEEPSPEED_CPU_NOTICE = ("DeepSpeed", "Setting accelerator to CPU")

# lm-eval's HFLM warns about these whenever it is handed a model object rather than a name: they are about
# `accelerate launch` and loading options that a model object never uses.
HFLM_LOGGER = "lm_eval.models.huggingface"
HFLM_MODEL_OBJECT_WARNINGS = ("`pretrained` model kwarg is not of type `str`", "Passed an already-initialized model")

# transformers' GGUF reader (the private table `GGUF_TO_TRANSFORMERS_MAPPING`) reads a gpt2 file's context length
# into `n_ctx`, which GPT2Config no longer has: the model keeps n_positions 1024, and a file of any other context fails
# to load (its position embedding has another size). It reads this key into `max_position_embeddings`, GPT2Config's
# name for n_positions; llama.cpp reads only its architecture's keys, so a GPT-2 GGUF carries it for transformers.
TRANSFORMERS_GGUF_CONTEXT_KEY = "llama.context_length"


def drop_log_messages(logger_name: str, *texts: str) -> logging.Filter:
    """Adds (and returns) a filter to the logger `logger_name` that drops records whose message holds one of
    `texts`; `logging.getLogger(name).removeFilter(it)` takes it off again."""

    def keep(record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(text in message for text in texts)

    quiet = logging.Filter()
    quiet.filter = keep  # type: ignore[method-assign]
    logging.getLogger(logger_name).addFilter(quiet)
    return quiet


def parse_size(size: str) -> int:
    """Bytes in a size such as "500MB" or "2GB", read by the parser `save_pretrained(max_shard_size=...)` hands
    its argument to (huggingface_hub's private `parse_size_to_int`), so what passes here passes there."""
    from huggingface_hub.serialization._base import parse_size_to_int

    return parse_size_to_int(size)


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """Within it, the Hub's clients work offline (from their local cache alone), as under HF_HUB_OFFLINE=1: those
    read the variable once, at import, into the module constants set here, and offer no other switch."""
    import huggingface_hub.constants

    modules = [huggingface_hub.constants]
    if "datasets.config" in sys.modules:  # datasets copies the constant at import (and is imported only where used)
        modules.append(sys.modules["datasets.config"])
    before = [module.HF_HUB_OFFLINE for module in modules]
    for module in modules:
        module.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        for module, value in zip(modules, before):
            module.HF_HUB_OFFLINE = value


def dataset_fingerprint(table: Any) -> str:
    """datasets' fingerprint of a `Dataset` (its private `_fingerprint`): a hash of its files and the transforms that
    made it, which changes whenever its rows may have; the key of the token files cached for it."""
    return table._fingerprint


@contextlib.contextmanager
def muon_orthogonalization(function: Callable[..., Any]) -> Iterator[None]:
    """Within it, `torch.optim.Muon` orthogonalises its updates with `function(grad, ns_coefficients, ns_steps, eps)`
    instead of its own Newton-Schulz iteration: torch looks the private module-level function up at every step, and
    offers no other way to choose it."""
    import torch.optim._muon as torch_muon

    torch_own = torch_muon._zeropower_via_newtonschulz
    torch_muon._zeropower_via_newtonschulz = function
    try:
        yield
    finally:
        torch_muon._zeropower_via_newtonschulz = torch_own


class CheckpointFolder:
    """A mixin for a `transformers.Trainer` subclass: each checkpoint is written into the folder that the subclass's
    `checkpoint_parent(step)` (a context manager) yields, instead of the output directory.

    The Trainer picks a checkpoint's folder inside its private `_save_checkpoint`, through its private
    `_get_output_dir`: overriding those two is the only way to send one checkpoint elsewhere.
    """

    _checkpoint_parent: str | None = None

    def checkpoint_parent(self, step: int) -> contextlib.AbstractContextManager[Any]:
        raise NotImplementedError

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        with self.checkpoint_parent(self.state.global_step) as parent:  # type: ignore[attr-defined]
            self._checkpoint_parent = str(parent)
            try:
                super()._save_checkpoint(model, trial)  # type: ignore[misc]
            finally:
                self._checkpoint_parent = None

    def _get_output_dir(self, trial: Any) -> str:
        return self._checkpoint_parent or super()._get_output_dir(trial)  # type: ignore[misc]


def disable_progress_bars() -> None:
    """Turns every tqdm bar off in this process, those created with `disable=False` too (transformers' Trainer, the
    training loop): tqdm offers no switch for that, so its constructor is given `disable=True` whatever it is
    passed. Worker processes forked later inherit it."""
    import tqdm.std

    if getattr(tqdm.std.tqdm.__init__, "always_disabled", False):
        return
    shown = tqdm.std.tqdm.__init__

    @functools.wraps(shown)
    def never_shown(self: tqdm.std.tqdm, *args: object, **kwargs: object) -> None:
        kwargs["disable"] = True
        shown(self, *args, **kwargs)

    never_shown.always_disabled = True  # type: ignore[attr-defined]
    tqdm.std.tqdm.__init__ = never_shown


def clear_progress_bars() -> None:
    """Closes every tqdm bar still drawn, wiping its line (tqdm keeps its live bars in the private `_instances`)."""
    tqdm = sys.modules.get("tqdm.std")
    if tqdm is None:
        return
    for bar in list(getattr(tqdm.tqdm, "_instances", ())):
        bar.leave = False  # close() then wipes the bar's line instead of leaving it
        bar.close()


def register_for_transformers_serve(model_class: type) -> None:
    """Makes `model_class` loadable by `transformers serve`: its model loader (the private `_load_model` of
    `transformers.cli.serving.model_manager`'s ModelLoader from 5.25, of its ModelManager before) looks a model's
    class up by the name in config.json's `architectures` on the module it imported as `transformers`, which holds
    transformers' own models alone; a class registered with `AutoModelForCausalLM`, or one from a directory's remote
    code, is not found there. The class goes onto that very module object: transformers replaces
    `sys.modules["transformers"]` once while importing (processing_utils imports the package anew), so the module
    `import transformers` gives may be another."""
    from transformers.cli.serving import model_manager

    setattr(model_manager.transformers, model_class.__name__, model_class)
