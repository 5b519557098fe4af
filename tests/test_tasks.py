"""train.tasks: lm-eval's benchmark tasks on the model, and `gptscratch-eval --tasks` with its one-line refusals.

HFLM's loglikelihood and generate_until against the model's own logits and greedy decoding, and `gptscratch-eval
--tasks` on small local tasks (offline). Tiny models and an offline byte-level tokenizer; skipped where lm-eval is not
installed."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_helpers import assert_one_line_error, run_main
from conftest import REPO_ROOT, byte_level_tokenizer, tiny_config
from task_helpers import CHOICE_DOCS, NEXT_WORD_DOCS, task_yaml, write_tiny_tasks

import train.tasks
import use.evaluate
from common.model_dir import save_model_directory
from modeling_gptscratch import GPTScratchForCausalLM

pytest.importorskip("lm_eval")
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402

CONTEXT = 64  # lm-eval reads the model's context (max_position_embeddings) as its max_length

LONG_CONTEXT = " ".join(["the cat sat on the mat"] * 14)  # more tokens than the model's context: lm-eval truncates


@pytest.fixture(scope="module")
def tokenizer():
    return byte_level_tokenizer(vocab_size=300)


@pytest.fixture(scope="module")
def model(tokenizer) -> GPTScratchForCausalLM:
    torch.manual_seed(0)
    config = tiny_config(vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, context_length=CONTEXT)
    return GPTScratchForCausalLM(config).eval()


# --- HFLM on the model object ---------------------------------------------------------------------------------------


def lm_for(model, tokenizer, batch_size: int) -> HFLM:
    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)


@torch.no_grad()
def manual_loglikelihood(model, tokenizer, context: str, continuation: str) -> tuple[float, bool]:
    """Sum of log-softmax of the continuation's tokens given the context, and whether each is the argmax: from the
    model's logits on the unpadded sequence. An empty context is the end-of-text token (lm-eval's prefix token when the
    tokenizer has no BOS); a sequence past the context keeps its last CONTEXT + 1 tokens, as lm-eval cuts it."""
    context_ids = tokenizer.encode(context) if context else [tokenizer.eos_token_id]
    continuation_ids = tokenizer.encode(continuation)
    ids = (context_ids + continuation_ids)[-(CONTEXT + 1) :]
    log_probs = model(torch.tensor([ids[:-1]])).logits[0].log_softmax(-1)[-len(continuation_ids) :]
    targets = torch.tensor(continuation_ids)
    return log_probs.gather(1, targets[:, None]).sum().item(), bool((log_probs.argmax(-1) == targets).all())


def greedy_tokens(model, ids: list[int], new_tokens: int) -> list[int]:
    return model.generate(torch.tensor([ids]), max_new_tokens=new_tokens, temperature=0)[0, len(ids) :].tolist()


@pytest.mark.parametrize("batch_size", [1, 3])
def test_loglikelihood_is_the_models_log_probability_of_the_continuation(model, tokenizer, batch_size):
    # A greedy continuation (is_greedy must come out True for it): the model's own next tokens after "the cat".
    context = "the cat"
    greedy_text = tokenizer.decode(greedy_tokens(model, tokenizer.encode(context), 3))
    pairs = [
        (context, greedy_text),
        ("the cat", " sat on the mat"),
        ("on", " the"),
        ("the mat the cat sat on the mat and the", " cat"),
        ("the cat sat", " on"),  # one-token continuations of one context: lm-eval scores them in one forward pass
        ("the cat sat", " the"),
        ("the cat sat", " mat"),
        ("", "the mat"),  # empty context: the end-of-text token stands in
        (LONG_CONTEXT, " the cat"),  # truncated on the left to the model's 64 positions
    ]
    for context, continuation in pairs:
        if context:  # lm-eval splits the joint encoding at the context's length; ours encodes each part
            assert tokenizer.encode(context + continuation) == tokenizer.encode(context) + tokenizer.encode(
                continuation
            )
    requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
    results = lm_for(model, tokenizer, batch_size).loglikelihood(requests, disable_tqdm=True)
    expected = [manual_loglikelihood(model, tokenizer, *pair) for pair in pairs]
    assert len(tokenizer.encode(LONG_CONTEXT)) > CONTEXT
    assert expected[0][1] and not all(greedy for _, greedy in expected)  # both flags occur
    for pair, (log_likelihood, is_greedy), (want_log_likelihood, want_greedy) in zip(pairs, results, expected):
        assert log_likelihood == pytest.approx(want_log_likelihood, rel=1e-5, abs=1e-5), pair
        assert is_greedy == want_greedy, pair


def cut_at(text: str, until: list[str]) -> str:
    """lm-eval's post-processing: the text before the first occurrence of each stop string in turn."""
    for stop in until:
        text = text.split(stop)[0]
    return text


@pytest.mark.parametrize("batch_size", [1, 3])
def test_generate_until_is_the_models_greedy_decoding(model, tokenizer, batch_size):
    new_tokens = 12
    max_context = CONTEXT - new_tokens  # lm-eval keeps room for the new tokens and cuts the prompt on the left
    contexts = ["the cat", "on the mat the cat sat", "the", "the mat sat on", LONG_CONTEXT]
    greedy = {
        context: tokenizer.decode(greedy_tokens(model, tokenizer.encode(context)[-max_context:], new_tokens))
        for context in contexts
    }
    # A stop string that occurs in the first generation, so that cutting (and stopping early) is exercised.
    stop = greedy[contexts[0]][len(greedy[contexts[0]]) // 2 :][:2]
    assert stop.strip()
    plain = {"until": ["\n\n"], "max_gen_toks": new_tokens, "do_sample": False}
    stopping = {"until": [stop, "\n\n"], "max_gen_toks": new_tokens, "do_sample": False}
    # Requests with equal generation arguments share batches (padded on the left); the two kinds never mix.
    arguments = [(context, plain) for context in contexts] + [(context, stopping) for context in contexts[:3]]
    requests = [Instance("generate_until", {}, args, i) for i, args in enumerate(arguments)]
    results = lm_for(model, tokenizer, batch_size).generate_until(requests, disable_tqdm=True)
    eos = tokenizer.eos_token
    expected = [cut_at(greedy[context], kwargs["until"] + [eos]) for context, kwargs in arguments]
    assert results == expected
    assert len(results[len(contexts)]) < len(greedy[contexts[0]])  # the stop string cut it


@pytest.mark.parametrize("batch_size", [1, 3])
def test_the_commands_lm_scores_requests_that_share_tokens_but_split_differently(model, tokenizer, batch_size):
    """ "the cat sat on" + " the mat" and "the cat sat on the" + " mat" are the same tokens, split at another place:
    lm-eval 0.4.13's logits cache scores them in one pass and gives the second the first's first position
    (see train.tasks.lm_eval_model). The command's HFLM scores each as the model does."""
    pairs = [("the cat sat on", " the mat"), ("the cat sat on the", " mat"), ("the cat", " sat on the mat")]
    requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
    lm = train.tasks.lm_eval_model(model, tokenizer, batch_size)
    results = lm.loglikelihood(requests, disable_tqdm=True)
    for pair, (log_likelihood, is_greedy) in zip(pairs, results):
        want_log_likelihood, want_greedy = manual_loglikelihood(model, tokenizer, *pair)
        assert log_likelihood == pytest.approx(want_log_likelihood, rel=1e-5, abs=1e-5), pair
        assert is_greedy == want_greedy, pair


# --- gptscratch-eval --tasks ----------------------------------------------------------------------------------------

PROG = use.evaluate.PROG


@pytest.fixture
def task_dir(tmp_path) -> Path:
    return write_tiny_tasks(tmp_path / "tasks")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, model, tokenizer) -> Path:
    return save_model_directory(model, tokenizer, tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(autouse=True)
def private_datasets_cache(tmp_path, monkeypatch):
    """datasets caches the local tasks' data (and would find a hub dataset cached earlier) in a folder of the test's."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets-cache")


def mean_and_stderr(items: list[float]) -> tuple[float, float]:
    """lm-eval's mean and its standard error: the sample standard deviation over sqrt(n)."""
    mean = sum(items) / len(items)
    return mean, math.sqrt(sum((x - mean) ** 2 for x in items) / (len(items) - 1) / len(items))


def argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)  # the first of equal maxima, as numpy's


def expected_choice_scores(model, tokenizer, docs: list[dict]) -> dict[str, list[float]]:
    """Per document: 1.0 where the choice of highest summed log-likelihood (after the question and lm-eval's
    target delimiter, a space) is the gold one; acc_norm divides by the choice's length in characters, acc_bytes
    by its UTF-8 length (lm-eval's definitions)."""
    scores: dict[str, list[float]] = {"acc": [], "acc_norm": [], "acc_bytes": []}
    for doc in docs:
        for choice in doc["choices"]:
            assert tokenizer.encode(doc["question"] + " " + choice) == (
                tokenizer.encode(doc["question"]) + tokenizer.encode(" " + choice)
            )
        lls = [manual_loglikelihood(model, tokenizer, doc["question"], " " + choice)[0] for choice in doc["choices"]]
        chars = [len(choice) for choice in doc["choices"]]
        nbytes = [len(choice.encode("utf-8")) for choice in doc["choices"]]
        scores["acc"].append(float(argmax(lls) == doc["label"]))
        scores["acc_norm"].append(float(argmax([ll / n for ll, n in zip(lls, chars)]) == doc["label"]))
        scores["acc_bytes"].append(float(argmax([ll / n for ll, n in zip(lls, nbytes)]) == doc["label"]))
    return scores


def test_tasks_report_the_accuracy_computed_from_the_models_logits(model, tokenizer, model_dir, task_dir, capfd):
    result = run_main(
        use.evaluate.main,
        [
            "--model",
            model_dir,
            "--tasks",
            "tiny_choice,tiny_next_word",
            "--include-path",
            task_dir,
            "--json",
            "--batch-size",
            "3",
        ],
        capfd,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["samples"] == {"tiny_choice": len(CHOICE_DOCS), "tiny_next_word": len(NEXT_WORD_DOCS)}
    assert summary["num_fewshot"] == {"tiny_choice": 0, "tiny_next_word": 0} and summary["limit"] is None

    choice = summary["results"]["tiny_choice"]
    assert set(choice) == {"acc", "acc_norm", "acc_bytes"}
    for metric, items in expected_choice_scores(model, tokenizer, CHOICE_DOCS).items():
        mean, stderr = mean_and_stderr(items)
        assert choice[metric]["value"] == pytest.approx(mean), metric
        assert choice[metric]["stderr"] == pytest.approx(stderr), metric

    # loglikelihood: acc is the fraction of last words that are the greedy continuation; perplexity exp(-mean ll).
    scored = [
        manual_loglikelihood(model, tokenizer, doc["text"].rsplit(" ", 1)[0], " " + doc["text"].rsplit(" ", 1)[1])
        for doc in NEXT_WORD_DOCS
    ]
    next_word = summary["results"]["tiny_next_word"]
    assert next_word["acc"]["value"] == pytest.approx(mean_and_stderr([float(greedy) for _, greedy in scored])[0])
    mean_ll = sum(ll for ll, _ in scored) / len(scored)
    assert next_word["perplexity"]["value"] == pytest.approx(math.exp(-mean_ll), rel=1e-5)
    assert next_word["perplexity"]["stderr"] > 0  # lm-eval's bootstrap


def test_limit_and_the_table(model, tokenizer, model_dir, task_dir, capfd):
    result = run_main(
        use.evaluate.main,
        ["--model", model_dir, "--tasks", "tiny_choice", "--include-path", task_dir, "--limit", "4"],
        capfd,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].split() == ["task", "metric", "value", "stderr"] and len(lines) == 4
    expected = expected_choice_scores(model, tokenizer, CHOICE_DOCS[:4])  # --limit N: the first N documents
    for line in lines[1:]:
        task, metric, value, stderr = line.split()
        assert task == "tiny_choice"
        assert (float(value), float(stderr)) == pytest.approx(mean_and_stderr(expected[metric]), abs=1e-4), metric


def test_a_task_yaml_path_runs_without_include_path(model_dir, task_dir, capfd):
    result = run_main(
        use.evaluate.main,
        ["--model", model_dir, "--tasks", task_dir / "tiny_choice.yaml", "--limit", "2", "--json"],
        capfd,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["samples"] == {"tiny_choice": 2}


def test_the_python_api_leaves_the_tokenizer_and_training_mode_as_they_were(model, task_dir):
    tokenizer = byte_level_tokenizer(vocab_size=300)  # the module's has been through HFLM, which pads with EOS
    assert tokenizer.pad_token is None
    model.train()
    try:
        summary = train.tasks.evaluate_tasks(model, tokenizer, ["tiny_choice"], limit=3, include_path=task_dir)
        assert model.training
    finally:
        model.eval()
    assert tokenizer.pad_token is None  # HFLM gave its copy one
    assert summary["samples"] == {"tiny_choice": 3} and set(summary["results"]["tiny_choice"]) >= {"acc"}


def test_a_generation_task_that_fills_the_context_is_refused_before_the_model_loads(model_dir, task_dir, capfd):
    (task_dir / "tiny_gen.yaml").write_text(
        task_yaml(
            "tiny_gen",
            task_dir / "next_word.jsonl",
            """\
output_type: generate_until
doc_to_text: "{{text}}"
doc_to_target: "{{text}}"
metric_list:
  - {metric: exact_match, aggregation: mean, higher_is_better: true}
""",
        ),
        encoding="utf-8",
    )  # no max_gen_toks: HFLM's 256, more than the model's 64 positions
    result = run_main(
        use.evaluate.main, ["--model", model_dir, "--tasks", "tiny_gen", "--include-path", task_dir], capfd
    )
    assert_one_line_error(result, PROG, "task tiny_gen generates up to 256 tokens", "64-token context", "max_gen_toks")


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "pass exactly one of --data FILE... (loss, perplexity, bits per byte on text) and --tasks"),
        (["--data", "x.txt", "--tasks", "hellaswag"], "pass exactly one of --data"),
        (["--tasks", "hellaswag", "--stride", "8"], "--stride does not apply to --tasks"),
        (["--tasks", "hellaswag", "--context-length", "8"], "--context-length does not apply to --tasks"),
        (["--data", "x.txt", "--limit", "3"], "--limit does not apply to --data"),
        (["--data", "x.txt", "--include-path", "."], "--include-path does not apply to --data"),
        (["--tasks", "hellaswag", "--limit", "0"], "--limit must be >= 1, got 0"),
        (["--tasks", "hellaswag", "--include-path", "absent-dir"], "--include-path absent-dir is not a directory"),
        (["--tasks", " , "], "--tasks names no task"),
    ],
)
def test_mode_and_flag_refusals_are_one_line(model_dir, argv, message, capfd):
    result = run_main(use.evaluate.main, ["--model", model_dir, *argv], capfd)
    assert_one_line_error(result, PROG, message)


def test_without_lm_eval_the_task_mode_says_how_to_install_it(model_dir, monkeypatch, capfd):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # `import lm_eval` now raises ImportError
    result = run_main(use.evaluate.main, ["--model", model_dir, "--tasks", "hellaswag"], capfd)
    assert_one_line_error(result, PROG, "--tasks needs lm-eval", "pip install 'gptscratch[eval]'")


def test_a_missing_local_data_file_is_one_line_naming_the_task(model_dir, task_dir, capfd):
    (task_dir / "choice.jsonl").unlink()
    result = run_main(
        use.evaluate.main, ["--model", model_dir, "--tasks", "tiny_choice", "--include-path", task_dir], capfd
    )
    assert_one_line_error(result, PROG, "task tiny_choice cannot find its data", "choice.jsonl")


def test_unknown_task_names_say_how_to_list_the_known_ones(model_dir, monkeypatch, capfd):
    # lm-eval's index of its built-in tasks takes 20 s to build here: this test's holds its hellaswag folder only.
    from lm_eval.tasks import TaskManager

    hellaswag = Path(sys.modules["lm_eval"].__file__).parent / "tasks" / "hellaswag"
    monkeypatch.setattr(
        train.tasks, "_builtin_task_manager", lambda: TaskManager(include_path=hellaswag, include_defaults=False)
    )
    result = run_main(use.evaluate.main, ["--model", model_dir, "--tasks", "hellaswagg,no_such_task"], capfd)
    assert_one_line_error(
        result, PROG, "unknown lm-eval tasks hellaswagg, no_such_task", "did you mean hellaswag", "lm-eval ls tasks"
    )


@pytest.mark.slow
def test_a_hub_task_offline_is_one_line_naming_the_task_and_the_fix(model_dir, tmp_path):
    """Run as a user runs it, in a fresh interpreter, where any log line, warning or progress bar would reach stderr:
    the whole of stderr is the refusal."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_DATASETS_CACHE": str(tmp_path / "datasets-cache"),
        "HF_HOME": str(tmp_path / "hf-home"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "use.evaluate", "--model", str(model_dir), "--tasks", "hellaswag"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert_one_line_error(result, PROG, "task hellaswag", "Hugging Face Hub", "run it once online", "--include-path")
    assert result.stdout == ""
