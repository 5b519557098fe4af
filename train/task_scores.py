"""Benchmarks while training (`eval_tasks`): lm-eval tasks scored at the run's evaluations, as nanochat scores CORE
and modded-nanogpt HellaSwag.

`TaskScores.for_run` loads the tasks with their data before training starts (a task whose data cannot be had, offline
say, is refused then, in one line naming it). At an evaluation `due` says whether the tasks run (step 0, then the
first evaluation after every `eval_tasks_freq` steps, or every evaluation), and `score` gives each task's metrics as
`TASK/METRIC` values. The scoring leaves the run as it was: the model's training mode, the tokenizer, and every
random generator a run draws from (lm-eval seeds Python's, NumPy's and torch's), so a run with benchmarks trains the
same steps as one without, and resumes as exactly.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from common.errors import InputError, field
from train.options import EvaluationOptions
from train.tasks import TaskSelection, check_generation_budget, evaluate_tasks, load_tasks


@dataclass
class TaskScores:
    """The run's benchmark tasks, loaded, and how often and on how many documents they are scored."""

    selection: TaskSelection
    limit: int | None
    every: int | None  # steps between scorings; None: at every evaluation
    batch_size: int

    @classmethod
    def for_run(cls, options: EvaluationOptions, context_length: int, batch_size: int) -> TaskScores | None:
        """The tasks `options` name, loaded and checked against the model's context; None when it names none."""
        names = options.task_names()
        if not names:
            return None
        if options.include_path is not None and not Path(options.include_path).is_dir():
            raise InputError(
                f"{field('include_path')} {options.include_path} is not a directory; pass a directory of task YAMLs"
            )
        selection = load_tasks(tuple(names), options.include_path)
        check_generation_budget(selection, context_length)
        return cls(selection, options.eval_tasks_limit, options.eval_tasks_freq, batch_size)

    def due(self, step: int, previous_step: int | None) -> bool:
        """Whether the evaluation at `step` scores the tasks, the last evaluation having been at `previous_step`."""
        if previous_step is None or self.every is None:
            return True
        return step // self.every > previous_step // self.every

    def score(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> dict[str, float | None]:
        """Each task's metrics as {"TASK/METRIC": value}; the model, the tokenizer and the random generators are left
        as they were."""
        with preserved_random_state():
            summary = evaluate_tasks(
                model, tokenizer, self.selection, limit=self.limit, batch_size=self.batch_size, stderr=False
            )
        return {
            f"{task}/{metric}": numbers["value"]
            for task, metrics in summary["results"].items()
            for metric, numbers in metrics.items()
        }


@contextlib.contextmanager
def preserved_random_state() -> Iterator[None]:
    """Python's, NumPy's and torch's random generators (every device's) restored after the block."""
    python, numpy = random.getstate(), np.random.get_state()
    accelerator = torch.accelerator.current_accelerator(check_available=True)
    devices = [torch.accelerator.current_device_index()] if accelerator is not None else []
    with torch.random.fork_rng(devices=devices, device_type=accelerator.type if accelerator else "cuda"):
        try:
            yield
        finally:
            random.setstate(python)
            np.random.set_state(numpy)
