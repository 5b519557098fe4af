"""--report-to: the trackers of the installed Accelerate, checked before training, one experiment for both engines.

Trackio, Hugging Face's local tracker, writes its database under TRACKIO_DIR (read once, when trackio is imported), so
the runs that report to it are subprocesses given a temporary one; what they logged is read back with trackio's own
command line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from train_helpers import common, read_metrics, subprocess_env, train_cli

from train.options import TRACKERS
from train.trackers import trainer_experiment


def test_report_to_takes_the_trackers_of_the_installed_accelerate():
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    assert set(TRACKERS) == set(LOGGER_TYPE_TO_CLASS)


def trackio(env: dict[str, str], *argv: str) -> dict:
    """What `trackio ARGV --json` prints, read from env's TRACKIO_DIR."""
    command = [str(Path(sys.executable).with_name("trackio")), *argv, "--json"]
    return json.loads(subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout)


@pytest.mark.slow
def test_both_engines_log_their_evaluations_to_one_trackio_project(tmp_path, corpus, cache):
    env = {**subprocess_env(), "TRACKIO_DIR": str(tmp_path / "trackio")}
    for engine in ("accelerate", "trainer"):
        flags = ["--max-steps", "6", "--eval-freq", "3", "--report-to", "trackio", "--engine", engine]
        flags += ["--output-dir", str(tmp_path / engine)]
        command = [sys.executable, "-m", "train", *common(corpus, cache), *flags]
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr

    runs = trackio(env, "list", "runs", "--project", "gptscratch")["runs"]
    assert len(runs) == 2  # one a run, in the order they ran
    # Each engine names an evaluation's validation loss its own way: the loop as metrics.jsonl does, the Trainer
    # with its "eval/" prefix.
    for run, engine, metric in zip(runs, ("accelerate", "trainer"), ("val_loss", "eval/val_loss")):
        logged = trackio(env, "get", "metric", "--project", "gptscratch", "--run", run, "--metric", metric)["values"]
        expected = [record["val_loss"] for record in read_metrics(tmp_path / engine)]
        assert len(expected) == 3 and [point["value"] for point in logged] == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("engine", ["accelerate", "trainer"])
def test_a_tracker_that_does_not_import_is_one_line_before_anything_is_written(
    engine, tmp_path, corpus, monkeypatch, capsys
):
    monkeypatch.setitem(sys.modules, "trackio", None)  # as if it were not installed
    flags = ["--report-to", "trackio", "--engine", engine, "--output-dir", str(tmp_path / "run")]
    status = train_cli([*common(corpus, tmp_path / "cache"), *flags])
    lines = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(lines) == 1
    assert lines[0].startswith("gptscratch-train: error: --report-to trackio: the tracker is not installed")
    assert list(tmp_path.iterdir()) == []


def test_the_trainers_integrations_log_to_the_experiment_unless_the_environment_names_another(monkeypatch):
    monkeypatch.setenv("WANDB_PROJECT", "mine")
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    with trainer_experiment():
        assert (os.environ["WANDB_PROJECT"], os.environ["MLFLOW_EXPERIMENT_NAME"]) == ("mine", "gptscratch")
    assert os.environ["WANDB_PROJECT"] == "mine" and "MLFLOW_EXPERIMENT_NAME" not in os.environ
