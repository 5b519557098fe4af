"""gptscratch-train --eval-tasks: lm-eval benchmarks scored at a run's evaluations, on both engines.

The scores a run logs at its last evaluation are checked against lm-eval scoring the model directory it wrote
(`train.tasks.evaluate_tasks`, which tests/test_tasks.py checks against the model's own logits); a run with
benchmarks trains exactly the steps of one without them, and resumes as exactly.
"""

from __future__ import annotations

import json
import shutil
import struct

import pytest
from cli_helpers import assert_one_line_error, run_main
from task_helpers import write_tiny_tasks
from train_helpers import common, read_metrics, train_cli, without_timing

import train.cli
from common.model_dir import load_model_directory
from train.metrics import task_metrics
from train.tasks import evaluate_tasks

pytest.importorskip("lm_eval")

TASKS = ("tiny_choice", "tiny_next_word")
METRICS = {"tiny_choice/acc", "tiny_choice/acc_norm", "tiny_choice/acc_bytes", "tiny_next_word/acc"}


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    return write_tiny_tasks(tmp_path_factory.mktemp("benchmarks") / "tasks")


@pytest.fixture(autouse=True)
def private_datasets_cache(tmp_path, monkeypatch):
    """datasets caches the local tasks' data in a folder of the test's."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets-cache")


def run_args(corpus, cache, *more: str) -> list[str]:
    return [*common(corpus, cache), "--max-steps", "8", "--eval-freq", "4", "--early-stopping-patience", "0", *more]


def png_width(path) -> int:
    return struct.unpack(">I", path.read_bytes()[16:20])[0]


@pytest.mark.parametrize("engine", ["accelerate", "trainer"])
def test_benchmarks_are_scored_at_every_evaluation_without_changing_the_training(
    tmp_path, corpus, cache, task_dir, engine, capsys
):
    plain, scored = tmp_path / "plain", tmp_path / "scored"
    argv = run_args(corpus, cache, "--engine", engine, "--save-steps", "4")
    assert train_cli([*argv, "--output-dir", str(plain)]) == 0
    tasks = ["--eval-tasks", ",".join(TASKS), "--include-path", str(task_dir)]
    capsys.readouterr()
    assert train_cli([*argv, *tasks, "--output-dir", str(scored)]) == 0
    printed = capsys.readouterr().out

    records = read_metrics(scored)
    assert [record["step"] for record in records] == [0, 4, 8]
    for record in records:
        assert METRICS <= set(task_metrics(record)), record
        assert record["tasks_time_s"] > 0
    assert "tiny_choice/acc " in printed and "tiny_next_word/perplexity " in printed
    # The tasks' time is the run's (--max-time counts it): step 4's clock includes step 0's tasks.
    assert records[1]["time_s"] >= records[0]["time_s"] + records[0]["tasks_time_s"]
    # The training is the run without benchmarks, step for step (lm-eval's seeding leaves no trace).
    bare = [{key: value for key, value in record.items() if key not in task_metrics(record)} for record in records]
    assert without_timing(bare) == without_timing(read_metrics(plain))
    assert (scored / "model.safetensors").read_bytes() == (plain / "model.safetensors").read_bytes()

    # The last scores are lm-eval's on the model directory the run wrote.
    model, tokenizer = load_model_directory(scored)
    summary = evaluate_tasks(model, tokenizer, list(TASKS), include_path=task_dir)
    for name in task_metrics(records[-1]):
        task, metric = name.split("/")
        assert records[-1][name] == pytest.approx(summary["results"][task][metric]["value"], rel=1e-6), name
    assert png_width(scored / "loss_plot.png") == 2 * png_width(plain / "loss_plot.png")  # the scores' panel

    shutil.rmtree(scored / "checkpoints" / "checkpoint-8")
    assert train_cli([*argv, *tasks, "--output-dir", str(scored), "--resume"]) == 0
    assert without_timing(read_metrics(scored)) == without_timing(records)


def test_eval_tasks_freq_scores_at_step_0_and_after_every_n_steps(tmp_path, corpus, cache, task_dir):
    output = tmp_path / "run"
    argv = run_args(corpus, cache, "--eval-freq", "2", "--eval-tasks", "tiny_choice", "--include-path", str(task_dir))
    assert train_cli([*argv, "--eval-tasks-freq", "3", "--eval-tasks-limit", "2", "--output-dir", str(output)]) == 0
    scored_steps = [record["step"] for record in read_metrics(output) if task_metrics(record)]
    assert scored_steps == [0, 4, 6]  # evaluations every 2 steps; the first at or past 0, 3 and 6


def test_a_task_that_cannot_be_had_is_refused_before_training(tmp_path, corpus, cache, task_dir, capsys):
    broken = shutil.copytree(task_dir, tmp_path / "broken")
    (broken / "choice.jsonl").unlink()
    (broken / "tiny_choice.yaml").write_text(
        (task_dir / "tiny_choice.yaml").read_text().replace(str(task_dir), str(broken))
    )
    cases = [
        (["--eval-tasks", "tiny_choice", "--include-path", str(broken)], ["tiny_choice"]),
        (["--eval-tasks", "no_such_task_anywhere", "--include-path", str(task_dir)], ["no_such_task_anywhere"]),
        (["--eval-tasks", "tiny_choice", "--include-path", str(tmp_path / "nowhere")], ["--include-path", "nowhere"]),
        (["--include-path", str(task_dir)], ["--include-path", "--eval-tasks"]),
        (["--eval-tasks-freq", "3"], ["--eval-tasks-freq", "--eval-tasks"]),
    ]
    for flags, names in cases:
        argv = [*run_args(corpus, cache), *flags, "--output-dir", tmp_path / "out"]
        assert_one_line_error(run_main(train.cli.main, argv, capsys), "gptscratch-train", *names)
        assert not (tmp_path / "out").exists()


def test_the_summary_and_the_model_card_keep_the_last_scores(tmp_path, corpus, cache, task_dir):
    output = tmp_path / "run"
    argv = run_args(corpus, cache, "--eval-tasks", "tiny_choice", "--include-path", str(task_dir))
    assert train_cli([*argv, "--output-dir", str(output)]) == 0
    summary = json.loads((output / "training_summary.json").read_text())
    last = read_metrics(output)[-1]
    assert summary["task_scores"] == {"step": 8, **{name: last[name] for name in task_metrics(last)}}
    card = (output / "README.md").read_text()
    assert "lm-eval's scores at step 8" in card
    for name in task_metrics(last):
        task, metric = name.split("/")
        assert f"| {task} | {metric} | {last[name]:.4f} |" in card
