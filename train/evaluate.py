"""Evaluate a model on text (cross-entropy loss, perplexity and bits per byte over a sliding window), or on
lm-eval's benchmark tasks (HellaSwag, LAMBADA, your own task YAMLs).

Command line: `gptscratch-eval --model DIR --data FILE... [--context-length L] [--stride S] [--batch-size B] [--json]`
or `gptscratch-eval --model DIR --tasks NAME[,NAME...] [--limit N] [--include-path DIR] [--batch-size B] [--json]`;
Python: `evaluate_text(model, tokenizer, texts)`, built on `score_token_ids`, and `evaluate_tasks(model, tokenizer,
["hellaswag"])`, built on lm-eval's `HFLM` and `simple_evaluate`. lm-eval is optional (`pip install
'gptscratch[eval]'`): only the task mode imports it.

Windows follow Hugging Face's perplexity guide (https://huggingface.co/docs/transformers/perplexity) with the book's
targets: a window holds up to L input tokens and predicts the L tokens after its first; windows start every S tokens
and each scores only the targets no earlier window scored. So every token is scored exactly once, and with S < L
it keeps at least L - S + 1 tokens of history (fewer only at the start of a text, where there are no more).

The command (and `evaluate_text`) scores every byte of each text: the text's token stream starts with an
`<|endoftext|>` so that its first token is predicted too (`text_token_ids`), and the last window may be shorter than
L, so the tail of the text counts. The training loop's validation windows are the book's (`GPTDatasetV1` with
stride = max_length): full windows only, the tail too short for one dropped. To get the training loop's validation
loss, call `score_token_ids(model, ids, context_length=L, stride=L)` on the loop's validation token IDs cut to whole
windows (`ids[: k * L + 1]`): it then scores exactly the loop's k non-overlapping windows, and nats / tokens is
their mean cross-entropy per token.

Bits per byte divide the total surprisal by the text's UTF-8 size instead of its token count, so models with
different tokenizers compare: bits_per_byte = sum of -ln p(token) / ln 2 / bytes.

At scale: files are read in pieces and their windows scored as their tokens arrive (`evaluate_files`,
`score_token_stream`), and the loss never holds a batch's [batch, tokens, vocab] logits (`train.book.token_losses`),
so memory is bounded by the batch whatever the size of the files.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import difflib
import functools
import itertools
import json
import logging
import math
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from common.commands import ArgumentParser, UsageError, first_line, run_command
from common.model_dir import inference_device, load_model_weights, read_model_directory
from train.book import token_losses
from train.data import NotTextError, read_text_pieces
from train.tokenizing import safe_pieces

PROG = "gptscratch-eval"


def text_token_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """The token stream scored for `text`: the end-of-text token, then the text's tokens.

    The leading end-of-text token (the document separator the model saw in training) gives the text's first token
    something to be predicted from, so every token, and every byte, of the text is scored. A tokenizer without one
    leaves the first token as context only.
    """
    return [token for chunk in text_token_chunks(tokenizer, [text]) for token in chunk]


def text_token_chunks(tokenizer: PreTrainedTokenizerBase, pieces: Iterable[str]) -> Iterator[list[int]]:
    """`text_token_ids` of the text made of `pieces`, a chunk at a time: each piece is tokenised in parts cut at
    safe places (`train.tokenizing.safe_pieces`), which give GPT-2-style byte-level BPEs the tokens of the whole."""
    if tokenizer.eos_token_id is not None:
        yield [tokenizer.eos_token_id]
    for piece in pieces:
        for part in safe_pieces(piece):
            yield tokenizer(part, add_special_tokens=False, return_attention_mask=False, verbose=False)["input_ids"]


class SlidingWindows:
    """The windows over a token stream, found as the stream grows: (start, end, scored), input IDs [start, end)
    predicting the IDs [start + 1, end + 1), of which the last `scored` are scored (the earlier ones were scored by
    previous windows). Windows start every `stride` tokens and hold up to `context_length` inputs; once the stream
    has ended, the last one may be shorter, so that every token after the first is scored."""

    def __init__(self, context_length: int, stride: int):
        self.context_length, self.stride = context_length, stride
        self.start, self.scored_until = 0, 0  # targets at positions 1..scored_until are already scored

    def ready(self, available: int, ended: bool = False) -> Iterator[tuple[int, int, int]]:
        """The next windows that the first `available` tokens of the stream hold (all of them once `ended`)."""
        while True:
            if ended:
                if self.scored_until >= available - 1:
                    return
                end = min(self.start + self.context_length, available - 1)
            elif self.start + self.context_length + 1 <= available:
                end = self.start + self.context_length
            else:
                return
            yield self.start, end, end - self.scored_until
            self.scored_until = end
            self.start += self.stride


def sliding_windows(tokens: int, context_length: int, stride: int) -> list[tuple[int, int, int]]:
    """The windows over a stream of `tokens` IDs, as (start, end, scored): see `SlidingWindows`."""
    return list(SlidingWindows(context_length, stride).ready(tokens, ended=True))


@torch.no_grad()
def score_token_ids(
    model: PreTrainedModel,
    token_ids: Sequence[int] | torch.Tensor,
    context_length: int | None = None,
    stride: int | None = None,
    batch_size: int = 4,
) -> tuple[float, int]:
    """Total negative log-likelihood in nats of a token stream [tokens] and the number of tokens scored.

    Every token but the first is scored once, over `sliding_windows(len(token_ids), context_length, stride)`,
    the last window shorter when the stream does not end on a window boundary. context_length defaults to the
    model's; stride to context_length. With stride = context_length = L and len(token_ids) = k * L + 1 these are
    exactly the training loop's k validation windows over the same IDs (see the module's docstring).
    """
    return score_token_stream(model, [torch.as_tensor(token_ids, dtype=torch.long)], context_length, stride, batch_size)


@torch.no_grad()
def score_token_stream(
    model: PreTrainedModel,
    chunks: Iterable[Sequence[int] | torch.Tensor],
    context_length: int | None = None,
    stride: int | None = None,
    batch_size: int = 4,
) -> tuple[float, int]:
    """`score_token_ids` of the stream made of `chunks`, read one at a time: memory holds one chunk and one batch
    of windows, however long the stream.

    Windows of equal length go through the model `batch_size` at a time, and the loss is computed without a
    batch's [batch, tokens, vocab] logits: the output head takes the scored positions' hidden states a block of
    rows at a time (`train.book.token_losses`).
    """
    if context_length is None:
        context_length = model.config.max_position_embeddings
    if stride is None:
        stride = context_length
    if not 1 <= stride <= context_length <= model.config.max_position_embeddings:
        raise ValueError(
            f"need 1 <= stride ({stride}) <= context_length ({context_length}) <= the model's context "
            f"({model.config.max_position_embeddings})"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    windows = SlidingWindows(context_length, stride)
    buffer = torch.zeros(0, dtype=torch.long)  # the stream from token `offset` on
    offset, seen = 0, 0
    batch: list[tuple[torch.Tensor, int]] = []  # (window's tokens [inputs + 1], scored), all of one length
    totals = [0.0, 0]

    def score_batch() -> None:
        # Only a stream's last window can be shorter; batches never mix lengths, so no padding is needed.
        tokens = torch.stack([window for window, _ in batch]).to(model.device)  # [batch, window + 1]
        keep = max(scored for _, scored in batch)
        losses = token_losses(model, tokens[:, :-1], tokens[:, 1:], scored=keep)  # [batch, keep]
        already = (
            torch.arange(keep, device=losses.device)
            < keep - torch.tensor([scored for _, scored in batch], device=losses.device)[:, None]
        )  # scored by an earlier window
        totals[0] += losses.masked_fill(already, 0.0).sum().item()
        totals[1] += sum(scored for _, scored in batch)
        batch.clear()

    for chunk in itertools.chain(chunks, [None]):
        if chunk is not None:
            buffer = torch.cat([buffer, torch.as_tensor(chunk, dtype=torch.long)])
            seen += len(chunk)
        for start, end, scored in windows.ready(seen, ended=chunk is None):
            window = buffer[start - offset : end + 1 - offset]
            if batch and (len(batch) == batch_size or len(batch[0][0]) != len(window)):
                score_batch()
            batch.append((window, scored))
        buffer, offset = buffer[windows.start - offset :], windows.start  # tokens no later window needs go
    if batch:
        score_batch()
    return totals[0], totals[1]


def score_pieces(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Iterable[Iterable[str]],
    context_length: int | None = None,
    stride: int | None = None,
    batch_size: int = 4,
    total_bytes: int | None = None,
) -> dict[str, float | int]:
    """`evaluate_text` of texts each given as pieces (a file's `read_text_pieces`), read as they are scored."""
    was_training = model.training
    model.eval()
    total_nats, total_tokens, read = 0.0, 0, 0
    with tqdm(total=total_bytes, desc="evaluating", unit="B", unit_scale=True, disable=None) as bar:

        def counted(pieces: Iterable[str]) -> Iterator[str]:
            nonlocal read
            for piece in pieces:
                size = len(piece.encode("utf-8"))
                read += size
                bar.update(size)
                yield piece

        try:
            for pieces in texts:
                chunks = text_token_chunks(tokenizer, counted(pieces))
                nats, tokens = score_token_stream(model, chunks, context_length, stride, batch_size)
                total_nats += nats
                total_tokens += tokens
        finally:
            model.train(was_training)
    if total_tokens == 0:
        raise UsageError(
            "the texts hold no token to score (a text needs two tokens, counting the leading end-of-text token); "
            "pass longer text"
        )
    loss = total_nats / total_tokens
    return {
        "loss": loss,
        "perplexity": math.exp(loss),
        "bits_per_byte": total_nats / math.log(2) / read,
        "tokens": total_tokens,
        "bytes": read,
    }


def evaluate_text(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    context_length: int | None = None,
    stride: int | None = None,
    batch_size: int = 4,
) -> dict[str, float | int]:
    """Loss, perplexity and bits per byte of `model` over `texts`, each text scored on its own.

    Each text is scored as `text_token_ids` gives it (after a leading `<|endoftext|>`), over sliding windows that
    include the last, shorter one (`score_token_ids`), so every token of the text is scored once.
    Returns {"loss": mean nats per token, "perplexity": exp(loss), "bits_per_byte": total nats / ln 2 / bytes,
    "tokens": tokens scored, "bytes": UTF-8 bytes of the texts}. Texts with no token to score are a UsageError.
    """
    return score_pieces(
        model,
        tokenizer,
        [[text] for text in texts],
        context_length,
        stride,
        batch_size,
        sum(len(text.encode("utf-8")) for text in texts),
    )


def evaluate_files(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    paths: Sequence[str | os.PathLike],
    context_length: int | None = None,
    stride: int | None = None,
    batch_size: int = 4,
) -> dict[str, float | int]:
    """`evaluate_text` of UTF-8 text files, each read in pieces as it is scored: memory does not grow with them."""
    return score_pieces(
        model,
        tokenizer,
        [read_text_pieces(Path(path)) for path in paths],
        context_length,
        stride,
        batch_size,
        sum(os.path.getsize(path) for path in paths),
    )


# --- lm-eval tasks ---------------------------------------------------------------------------------------------------

LM_EVAL_INSTALL = "pip install 'gptscratch[eval]'"
LOCAL_TASK_FIX = (
    "or run a local task: a task YAML with dataset_path: json and dataset_kwargs: {data_files: FILE}, passed as "
    "--tasks NAME --include-path DIR"
)
# HFLM's generation budget when a task sets none (HFLM.max_gen_toks), and the keys a task may set it under, in
# lm-eval's order of precedence (lm_eval.models.utils.normalize_gen_kwargs).
LM_EVAL_DEFAULT_MAX_GEN_TOKS = 256
_MAX_GEN_TOKS_KEYS = ("max_gen_toks", "max_new_tokens", "max_tokens", "max_completion_tokens")
# HFLM warns about these whenever it is handed a model object, as the command always does: they are about accelerate
# launches and loading options the command never uses.
_HFLM_MODEL_OBJECT_WARNINGS = ("`pretrained` model kwarg is not of type `str`", "Passed an already-initialized model")


def import_lm_eval() -> Any:
    """The `lm_eval` package, or a UsageError saying how to install it: lm-eval is optional (the `eval` extra), so
    only the task mode imports it, here, before anything slow runs."""
    try:
        import lm_eval
        import lm_eval.models.huggingface
        import lm_eval.tasks
    except ImportError as error:
        raise UsageError(
            f"--tasks needs lm-eval, which cannot be imported ({first_line(error)}); {LM_EVAL_INSTALL}"
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


def _unknown_tasks_error(unknown: Sequence[str], known: Sequence[str], include_path: str | None) -> UsageError:
    """The one-line refusal of task names lm-eval does not know, with close matches and how to list the known ones."""
    close = {match for name in unknown for match in difflib.get_close_matches(name, known, n=3, cutoff=0.8)}
    hint = f" (did you mean {', '.join(sorted(close))}?)" if close else ""
    listing = "lm-eval ls tasks" + (f" --include_path {include_path}" if include_path else "")
    return UsageError(
        f"unknown lm-eval task{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}{hint}; list the available ones "
        f"with `{listing}`, or pass your own task YAML's path or --include-path DIR"
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
    """`manager.load([name])`, with a UsageError naming the task and the fix when its data cannot be had."""
    try:
        return manager.load([name])
    except ConnectionError as error:  # datasets raises it for the hub offline (HF_DATASETS_OFFLINE) or unreachable
        raise UsageError(
            f"task {name} needs data from the Hugging Face Hub that is not cached here ({first_line(error)}); run it "
            f"once online (datasets caches it and later runs work offline), {LOCAL_TASK_FIX}"
        ) from None
    except FileNotFoundError as error:  # a local data file, or a dataset the hub does not have
        raise UsageError(
            f"task {name} cannot find its data ({first_line(error)}); fix dataset_path / dataset_kwargs in its YAML"
        ) from None
    except OSError as error:
        raise UsageError(f"task {name} cannot read its data ({first_line(error)}); {LOCAL_TASK_FIX}") from None
    except ValueError as error:  # a task YAML lm-eval or datasets cannot use
        raise UsageError(f"task {name} cannot be loaded ({first_line(error)}); fix its YAML") from None


def _top_level(loaded: dict[str, Any]) -> list[Any]:
    """The Task and Group objects of a `TaskManager.load` result that no loaded group contains."""
    inner = {child for children in loaded["group_map"].values() for child in children}
    groups = [group for name, group in loaded["groups"].items() if name not in inner]
    return groups + [task for name, task in loaded["tasks"].items() if name not in inner]


def load_tasks(names: Sequence[str], include_path: str | os.PathLike | None = None) -> TaskSelection:
    """lm-eval's tasks (or groups, tags, task YAML paths) `names`, with their data, or a one-line UsageError.

    Names come from lm-eval's built-in tasks and from the task YAMLs under `include_path` (lm-eval's TaskManager
    include_path, which wins over a built-in task of the same name). Refused: unknown names (with close matches),
    data that cannot be had (a hub dataset offline and not cached, a missing local file), naming the task.
    """
    import_lm_eval()
    names = list(names)
    if not names:
        raise UsageError("no task named; pass task names, e.g. hellaswag,lambada_openai")
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
                        raise UsageError(
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
            raise UsageError(
                f"task {name} generates up to {_max_gen_tokens(task)} tokens, which leaves no room for a prompt in "
                f"the model's {context_length}-token context; run a copy of its YAML with generation_kwargs: "
                f"{{max_gen_toks: N}} for some N < {context_length}, through --include-path"
            )


class _DropMessages(logging.Filter):
    """Drops log records whose message starts with one of `prefixes`."""

    def __init__(self, prefixes: Sequence[str]):
        super().__init__()
        self.prefixes = tuple(prefixes)

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefixes)


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

    logger = logging.getLogger("lm_eval.models.huggingface")
    quiet = _DropMessages(_HFLM_MODEL_OBJECT_WARNINGS)
    logger.addFilter(quiet)
    try:
        return HFLM(
            pretrained=model,
            tokenizer=copy.deepcopy(tokenizer),
            batch_size=batch_size,
            backend="causal",
            logits_cache=False,
        )
    finally:
        logger.removeFilter(quiet)


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
) -> dict[str, Any]:
    """lm-eval's scores of `model` on `tasks` (names, or a `load_tasks` selection), as `task_results` gives them.

    What the lm-eval command line computes for a model directory, through its Python API: `simple_evaluate` with
    an `HFLM` built on this model (`lm_eval_model`), zero-shot unless a task sets its shots, lm-eval's seeds.
    `limit` evaluates only the first `limit` documents of each task: a quick check, not the benchmark's score.
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


def check_text_file(path: str | os.PathLike) -> None:
    """Reads a data file through once, in pieces, and raises a UsageError naming it unless it is UTF-8 text with
    something besides white space in it."""
    path, fix = Path(path), "pass a UTF-8 text file with text to evaluate on"
    if not path.exists():
        raise UsageError(f"data file {path} does not exist; {fix}")
    if path.is_dir():
        raise UsageError(f"data file {path} is a directory, not a file; {fix}")
    has_text = False
    try:
        for piece in read_text_pieces(path):
            has_text = has_text or not piece.isspace()
    except NotTextError as error:
        raise UsageError(f"data file {path} is {error.reason} (byte offset {error.offset}); {fix}") from None
    except OSError as error:
        raise UsageError(f"cannot read data file {path} ({error.strerror}); {fix}") from None
    if not has_text:
        raise UsageError(f"data file {path} is empty; pass a file with text to evaluate on")


def build_parser() -> argparse.ArgumentParser:
    """The flags of `gptscratch-eval`: the model directory, then text files (--data) or lm-eval tasks (--tasks)."""
    parser = ArgumentParser(
        prog=PROG,
        description="Evaluate a model directory, in one of two modes. --data: loss, perplexity and bits per byte on "
        "text files (sliding window). Each file is scored on its own, after a leading <|endoftext|> so that its first "
        "token is scored too, and the last window may be shorter than the context, so every token of the text is "
        "scored once. (The training loop's validation loss scores only the full windows of its own token stream; "
        "train.evaluate.score_token_ids reproduces it.) --tasks: lm-eval benchmark tasks such as hellaswag or "
        f"lambada_openai, or your own task YAMLs (needs lm-eval: {LM_EVAL_INSTALL}).",
    )
    parser.add_argument("--model", required=True, help="model directory (trained or converted)")
    parser.add_argument("--data", nargs="+", metavar="FILE", help="text mode: UTF-8 text files, each scored alone")
    parser.add_argument(
        "--tasks",
        metavar="NAME[,NAME...]",
        help="task mode: lm-eval tasks, groups or task YAML paths, comma-separated (e.g. hellaswag,lambada_openai)",
    )
    parser.add_argument(
        "--context-length", type=int, default=None, help="text mode: window length (default: the model's)"
    )
    parser.add_argument(
        "--stride",
        type=int,
        default=None,
        help="text mode: tokens between window starts (default: the context length, non-overlapping windows as in "
        "training); smaller gives each token more history and costs context/stride times more",
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        metavar="N",
        help="task mode: evaluate only the first N documents of each task (a quick check, not the benchmark's score)",
    )
    parser.add_argument(
        "--include-path",
        default=None,
        metavar="DIR",
        help="task mode: a directory of your own task YAMLs (lm-eval's include_path); they win over built-in tasks "
        "of the same name",
    )
    parser.add_argument(
        "--batch-size", type=int, default=4, help="windows, or lm-eval requests, per forward pass (default 4)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return parser


def _refuse_other_modes_flags(args: argparse.Namespace, flags: Sequence[str], mode: str) -> None:
    """A UsageError for the first of `flags` that was given: it belongs to the other mode than `mode`."""
    for flag in flags:
        if getattr(args, flag.lstrip("-").replace("-", "_")) is not None:
            raise UsageError(f"{flag} does not apply to {mode}; drop it")


def _main_text(args: argparse.Namespace) -> None:
    """--data: loss, perplexity and bits per byte of the model on the text files."""
    _refuse_other_modes_flags(args, ("--limit", "--include-path"), "--data (it is for --tasks)")
    for path in args.data:
        check_text_file(path)
    config, tokenizer = read_model_directory(args.model)
    model_context = config.max_position_embeddings
    context_length = model_context if args.context_length is None else args.context_length
    if not 1 <= context_length <= model_context:
        raise UsageError(
            f"--context-length must be between 1 and the model's context {model_context}, got {context_length}"
        )
    stride = context_length if args.stride is None else args.stride
    if not 1 <= stride <= context_length:
        raise UsageError(f"--stride must be between 1 and the context length {context_length}, got {stride}")
    model = load_model_weights(args.model, config, device=inference_device())
    result = evaluate_files(model, tokenizer, args.data, context_length, stride, args.batch_size)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"data           {len(args.data)} file(s), {result['bytes']:,} bytes, {result['tokens']:,} tokens scored")
        print(f"windows        context {context_length}, stride {stride}")
        print(f"loss           {result['loss']:.4f} nats/token")
        print(f"perplexity     {result['perplexity']:.2f}")
        print(f"bits per byte  {result['bits_per_byte']:.4f}")


def _main_tasks(args: argparse.Namespace) -> None:
    """--tasks: lm-eval's scores of the model on the tasks. Every refusal comes before the weights are loaded:
    lm-eval missing, the model directory, the flags, unknown tasks, task data that cannot be had."""
    _refuse_other_modes_flags(args, ("--context-length", "--stride"), "--tasks (it is for --data)")
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit must be >= 1, got {args.limit}")
    if args.include_path is not None and not Path(args.include_path).is_dir():
        raise UsageError(f"--include-path {args.include_path} is not a directory; pass a directory of task YAMLs")
    names = [name.strip() for name in args.tasks.split(",") if name.strip()]
    if not names:
        raise UsageError("--tasks names no task; pass e.g. --tasks hellaswag,lambada_openai")
    import_lm_eval()
    config, tokenizer = read_model_directory(args.model)
    selection = load_tasks(names, args.include_path)
    check_generation_budget(selection, config.max_position_embeddings)
    model = load_model_weights(args.model, config, device=inference_device())
    summary = evaluate_tasks(model, tokenizer, selection, limit=args.limit, batch_size=args.batch_size)
    print(json.dumps(summary) if args.json else format_task_table(summary))


def _main(argv: Sequence[str] | None) -> None:
    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if (args.data is None) == (args.tasks is None):
        raise UsageError(
            "pass exactly one of --data FILE... (loss, perplexity, bits per byte on text) and --tasks NAME[,NAME...] "
            f"(lm-eval tasks); see {PROG} --help"
        )
    if args.tasks is not None:
        _main_tasks(args)
    else:
        _main_text(args)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of `gptscratch-eval` (also `python -m train.evaluate`); `argv` defaults to the command line."""
    run_command(PROG, lambda: _main(argv))


if __name__ == "__main__":
    main()
