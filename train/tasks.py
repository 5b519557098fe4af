"""lm-eval's benchmark tasks (HellaSwag, LAMBADA, your own task YAMLs), loaded, checked and scored on a model.

`load_tasks` resolves task names (lm-eval's built-in tasks, and task YAMLs under an include path) and loads their
data, refusing what cannot be had in one line before any model is loaded; `evaluate_tasks` scores a loaded model on
them through lm-eval's `HFLM` and `simple_evaluate`, as the lm-eval command line does for a model directory.
`gptscratch-eval --tasks` and a training run's benchmarks use them. lm-eval is optional (`pip install
'gptscratch[eval]'`): nothing here imports it until asked.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import difflib
import functools
import logging
import math
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from common.compat import HFLM_LOGGER, HFLM_MODEL_OBJECT_WARNINGS, drop_log_messages
from common.errors import InputError, field, first_line
from common.hub import offline_unless_reachable

LM_EVAL_INSTALL = "pip install 'gptscratch[eval]'"
# HFLM's generation budget when a task sets none (HFLM.max_gen_toks), and the keys a task may set it under, in
# lm-eval's order of precedence (lm_eval.models.utils.normalize_gen_kwargs).
LM_EVAL_DEFAULT_MAX_GEN_TOKS = 256
_MAX_GEN_TOKS_KEYS = ("max_gen_toks", "max_new_tokens", "max_tokens", "max_completion_tokens")


def local_task_fix() -> str:
    """How to run a task whose data cannot be had: a local copy."""
    return (
        "or run a local task: a task YAML with dataset_path: json and dataset_kwargs: {data_files: FILE}, passed "
        f"by NAME with {field('include_path')} DIR"
    )


def import_lm_eval(option: str = "tasks") -> Any:
    """The `lm_eval` package, or an InputError naming `option` (the field that asked for tasks) and how to install
    it: lm-eval is optional (the `eval` extra), so it is imported only where tasks are asked for, before anything slow
    runs."""
    try:
        import lm_eval
        import lm_eval.models.huggingface
        import lm_eval.tasks
    except ImportError as error:
        raise InputError(
            f"{field(option)} needs lm-eval, which cannot be imported ({first_line(error)}); {LM_EVAL_INSTALL}"
        ) from None
    return lm_eval


@dataclasses.dataclass
class TaskSelection:
    """lm-eval tasks loaded with their data, ready for `evaluate_tasks`: `load_tasks` builds it before the model's
    weights are read, so a task that cannot be had is refused at once."""

    names: list[str]  # as asked for
    manager: Any  # the lm_eval.tasks.TaskManager that resolved them
    objects: list[Any]  # the top-level Task and Group objects, one or more per name (a tag gives several)
    tasks: dict[str, Any]  # every leaf Task by name


@functools.cache
def _builtin_task_manager() -> Any:
    """lm-eval's TaskManager over its built-in tasks. Building it parses every task YAML lm-eval ships (some 14,000
    entries, seconds to tens of seconds), so one process builds it once."""
    from lm_eval.tasks import TaskManager

    return TaskManager()


def _is_task_file(name: str) -> bool:
    """Whether `name` is the path of a task YAML (lm-eval accepts one in place of a task name)."""
    return Path(name).suffix in (".yaml", ".yml") and Path(name).is_file()


def _full_task_manager(include_path: str | None) -> Any:
    """A TaskManager over lm-eval's built-in tasks and the task YAMLs under `include_path` (which win on a name)."""
    from lm_eval.tasks import TaskManager

    return _builtin_task_manager() if include_path is None else TaskManager(include_path=include_path)


def _task_manager(names: Sequence[str], include_path: str | None) -> tuple[Any, bool]:
    """The TaskManager to resolve `names` with, and whether it holds lm-eval's built-in tasks: one over
    `include_path` alone when that (or YAML paths) holds every name, which takes milliseconds instead of the seconds
    that indexing the built-in tasks takes; otherwise `_full_task_manager`."""
    from lm_eval.tasks import TaskManager

    local = TaskManager(include_path=include_path, include_defaults=False)
    if all(name in local.all_tasks or _is_task_file(name) for name in names):
        return local, False
    return _full_task_manager(include_path), True


def _unknown_tasks_error(unknown: Sequence[str], known: Sequence[str], include_path: str | None) -> InputError:
    """The one-line refusal of task names lm-eval does not know, with close matches and how to list the known ones."""
    close = {match for name in unknown for match in difflib.get_close_matches(name, known, n=3, cutoff=0.8)}
    hint = f" (did you mean {', '.join(sorted(close))}?)" if close else ""
    listing = "lm-eval ls tasks" + (f" --include_path {include_path}" if include_path else "")
    return InputError(
        f"unknown lm-eval task{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}{hint}; list the available ones "
        f"with `{listing}`, or pass your own task YAML's path or {field('include_path')} DIR"
    )


@contextlib.contextmanager
def _lm_eval_logs_held_back() -> Iterator[None]:
    """Holds back what lm-eval logs inside the block and lets it out only if the block succeeds: a task that fails
    to load is then one line on stderr (the refusal), not notices about its YAML followed by the refusal."""
    logger = logging.getLogger("lm_eval")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield
    except BaseException:
        records.clear()
        raise
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
        for record in records:
            logging.getLogger(record.name).handle(record)


@contextlib.contextmanager
def _datasets_progress_bars_off() -> Iterator[None]:
    """datasets' progress bars (generating a split) off inside the block: they are short for evaluation sets, and one
    left on stderr before a refusal would make it more than one line. Hub download bars are not datasets' and stay."""
    import datasets

    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def _load_one(manager: Any, name: str) -> dict[str, Any]:
    """`manager.load([name])`, with an InputError naming the task and the fix when its data cannot be had; with the
    Hub unreachable, from the local cache at once (`common.hub`), not after a minute of retries."""
    try:
        with offline_unless_reachable():
            return manager.load([name])
    except ConnectionError as error:  # datasets raises it for the hub offline (HF_DATASETS_OFFLINE) or unreachable
        raise InputError(
            f"task {name} needs data from the Hugging Face Hub that is not cached here ({first_line(error)}); run it "
            f"once online (datasets caches it and later runs work offline), {local_task_fix()}"
        ) from None
    except FileNotFoundError as error:  # a local data file, or a dataset the hub does not have
        raise InputError(
            f"task {name} cannot find its data ({first_line(error)}); fix dataset_path / dataset_kwargs in its YAML"
        ) from None
    except OSError as error:
        raise InputError(f"task {name} cannot read its data ({first_line(error)}); {local_task_fix()}") from None
    except ValueError as error:  # a task YAML lm-eval or datasets cannot use
        raise InputError(f"task {name} cannot be loaded ({first_line(error)}); fix its YAML") from None


def _top_level(loaded: dict[str, Any]) -> list[Any]:
    """The Task and Group objects of a `TaskManager.load` result that no loaded group contains."""
    inner = {child for children in loaded["group_map"].values() for child in children}
    groups = [group for name, group in loaded["groups"].items() if name not in inner]
    return groups + [task for name, task in loaded["tasks"].items() if name not in inner]


def load_tasks(names: Sequence[str], include_path: str | os.PathLike | None = None) -> TaskSelection:
    """lm-eval's tasks (or groups, tags, task YAML paths) `names`, with their data, or a one-line InputError.

    Names come from lm-eval's built-in tasks and from the task YAMLs under `include_path` (lm-eval's TaskManager
    include_path, which wins over a built-in task of the same name). Refused: unknown names (with close matches),
    data that cannot be had (a hub dataset offline and not cached, a missing local file), naming the task.
    """
    import_lm_eval()
    names = list(names)
    if not names:
        raise InputError("no task named; pass task names, e.g. hellaswag,lambada_openai")
    include = None if include_path is None else str(include_path)
    manager, complete = _task_manager(names, include)
    unknown = [name for name in names if name not in manager.all_tasks and not _is_task_file(name)]
    if unknown:
        raise _unknown_tasks_error(unknown, manager.all_tasks, include)
    objects: list[Any] = []
    tasks: dict[str, Any] = {}
    with _lm_eval_logs_held_back(), _datasets_progress_bars_off():
        for name in names:
            loaded = None
            while loaded is None:
                try:
                    loaded = _load_one(manager, name)
                except KeyError as error:
                    if complete:
                        raise InputError(
                            f"task {name} cannot be loaded (no {first_line(error)}); fix its YAML (a task it names, "
                            "or a field of its data)"
                        ) from None
                    # A local group or tag that names built-in tasks: resolve everything with those too.
                    manager, complete = _full_task_manager(include), True
            objects += _top_level(loaded)
            tasks.update(loaded["tasks"])
    return TaskSelection(names, manager, objects, tasks)


def _max_gen_tokens(task: Any) -> int:
    """How many tokens HFLM lets `task` generate: its generation_kwargs' budget, else HFLM's default."""
    kwargs = getattr(getattr(task, "config", None), "generation_kwargs", None) or {}
    for key in _MAX_GEN_TOKS_KEYS:
        if kwargs.get(key) is not None:
            return int(kwargs[key])
    return LM_EVAL_DEFAULT_MAX_GEN_TOKS


def check_generation_budget(selection: TaskSelection, context_length: int) -> None:
    """Refuses a generation task whose token budget fills the model's whole context.

    HFLM keeps room for the new tokens by cutting the prompt to context - budget tokens and asserts that this is
    positive, after the model has been loaded and the other tasks run; the default budget of 256 already fills the
    book's 256-token context. Checked here, it is one line before any work, with the fix.
    """
    for name, task in selection.tasks.items():
        if task.get_config("output_type") == "generate_until" and _max_gen_tokens(task) >= context_length:
            raise InputError(
                f"task {name} generates up to {_max_gen_tokens(task)} tokens, which leaves no room for a prompt in "
                f"the model's {context_length}-token context; run a copy of its YAML with generation_kwargs: "
                f"{{max_gen_toks: N}} for some N < {context_length}, through {field('include_path')}"
            )


def lm_eval_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, batch_size: int = 4) -> Any:
    """lm-eval's `HFLM` around a loaded model, as `HFLM(pretrained=model, tokenizer=tokenizer, batch_size=...)`.

    The backend is given as causal: lm-eval otherwise looks the model type up in transformers' built-in table,
    which registered models are not in, and warns. HFLM gives the tokenizer a padding token, so it gets a copy and
    the caller's tokenizer stays as it was. `logits_cache` is off because it gives wrong scores in lm-eval 0.4.13:
    it scores requests whose context + continuation[:-1] tokens are equal in one forward pass, and a request with a
    shorter continuation than the pass's gets the log-probabilities of the pass's first continuation positions
    instead of its last ones (`torch.gather` on the untrimmed logits in `HFLM._loglikelihood_tokens`). Such pairs
    occur across tasks run together and in tasks of minimally edited pairs (Winogrande). Off, it costs only where
    one-token continuations share a context (single-letter answers: one forward pass per choice instead of one for
    all of them); HellaSwag's and LAMBADA's multi-token continuations do not gain from it.
    """
    from lm_eval.models.huggingface import HFLM

    # HFLM warns, whenever it is handed a model object, about launch and loading options a model object never uses.
    quiet = drop_log_messages(HFLM_LOGGER, *HFLM_MODEL_OBJECT_WARNINGS)
    try:
        return HFLM(
            pretrained=model,
            tokenizer=copy.deepcopy(tokenizer),
            batch_size=batch_size,
            backend="causal",
            logits_cache=False,
        )
    finally:
        logging.getLogger(HFLM_LOGGER).removeFilter(quiet)


def _number(value: Any) -> float | None:
    """A metric as a finite float, or None (lm-eval writes "N/A" for a standard error it could not compute)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def task_results(results: dict[str, Any]) -> dict[str, Any]:
    """The summary of `lm_eval.simple_evaluate`'s results that the command prints.

    {"results": {task: {metric: {"value": v, "stderr": s}}}, "samples": {task: documents evaluated},
    "num_fewshot": {task: shots}, "limit": limit}. Groups are in "results" too, with their aggregated metrics. A
    metric computed after a filter other than lm-eval's default `none` keeps its `METRIC,FILTER` name
    (`exact_match,strict-match`); a stderr lm-eval could not compute is None.
    """
    summary: dict[str, dict[str, dict[str, float | None]]] = {}
    for task, entry in results["results"].items():
        metrics = {}
        for key, value in entry.items():
            metric, comma, filter_name = key.partition(",")
            if not comma or metric.endswith("_stderr"):  # name, alias, sample_len; stderrs go with their metric
                continue
            metrics[metric if filter_name == "none" else key] = {
                "value": _number(value),
                "stderr": _number(entry.get(f"{metric}_stderr,{filter_name}")),
            }
        summary[task] = metrics
    return {
        "results": summary,
        "samples": {task: counts["effective"] for task, counts in results.get("n-samples", {}).items()},
        "num_fewshot": dict(results.get("n-shot", {})),
        "limit": results.get("config", {}).get("limit"),
    }


def evaluate_tasks(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    tasks: Sequence[str] | TaskSelection,
    limit: int | None = None,
    batch_size: int = 4,
    include_path: str | os.PathLike | None = None,
    stderr: bool = True,
) -> dict[str, Any]:
    """lm-eval's scores of `model` on `tasks` (names, or a `load_tasks` selection), as `task_results` gives them.

    What the lm-eval command line computes for a model directory, through its Python API: `simple_evaluate` with
    an `HFLM` built on this model (`lm_eval_model`), zero-shot unless a task sets its shots, lm-eval's seeds.
    `limit` evaluates only the first `limit` documents of each task: a quick check, not the benchmark's score.
    `stderr` False skips the standard errors (None then), which lm-eval bootstraps for some metrics in a pool of
    processes.
    """
    lm_eval = import_lm_eval()
    selection = tasks if isinstance(tasks, TaskSelection) else load_tasks(tasks, include_path)
    check_generation_budget(selection, model.config.max_position_embeddings)
    was_training = model.training
    # lm-eval prints some progress to stdout ("bootstrapping for stddev: ..."); stdout is for the results.
    try:
        with contextlib.redirect_stdout(sys.stderr):
            results = lm_eval.simple_evaluate(
                model=lm_eval_model(model, tokenizer, batch_size),
                tasks=selection.objects,
                task_manager=selection.manager,
                limit=limit,
                log_samples=False,
                **({} if stderr else {"bootstrap_iters": 0}),
            )
    finally:
        model.train(was_training)
    return task_results(results)


def format_task_table(summary: dict[str, Any]) -> str:
    """`task_results`' summary as a table: task, metric, value, stderr."""
    rows = [("task", "metric", "value", "stderr")]
    for task, metrics in summary["results"].items():
        for metric, numbers in metrics.items():
            rows.append(
                (
                    task,
                    metric,
                    *("N/A" if numbers[key] is None else f"{numbers[key]:.4f}" for key in ("value", "stderr")),
                )
            )
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    return "\n".join(
        "  ".join(
            cell.ljust(width) if column < 2 else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(row, widths))
        ).rstrip()
        for row in rows
    )
