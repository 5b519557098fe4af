"""Faults a run survives: kill -9 at the writes that matter, in each engine, then --resume, gives the uninterrupted
run's model.safetensors byte for byte and its metrics.jsonl but for what the wall clock measures; a resume of a
finished run changes nothing."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import file_listing
from conftest import REPO_ROOT
from train_helpers import TINY_MODEL, read_metrics, subprocess_env, train_cli, without_timing

from train.checkpoints import RunDirectory

KILL_AT = str(Path(__file__).with_name("kill_at.py"))


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["accelerate", "trainer"])
def test_kill_9_at_any_write_then_resume_gives_the_uninterrupted_run(tmp_path, engine, capsys):
    from pydoc_data.topics import topics

    corpus = tmp_path / "topics.txt"
    corpus.write_text("\n".join(topics[key] for key in sorted(topics)[:12])[:40_000], encoding="utf-8")
    args = [
        "--data",
        str(corpus),
        "--cache-dir",
        str(tmp_path / "cache"),
        *TINY_MODEL,
        "--batch-size",
        "4",
        "--eval-iter",
        "1",
        "--max-steps",
        "12",
        "--save-steps",
        "1",
        "--eval-freq",
        "2",
        "--dropout",
        "0.1",
        "--engine",
        engine,
    ]
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert train_cli([*args, "--output-dir", str(full)]) == 0

    # Killed after step 4's evaluation is written (before its checkpoint), in the middle of checkpoint 7's write,
    # and after the last checkpoint (before the model directory): each resume goes on from the newest checkpoint.
    for attempt, (point, step) in enumerate([("evaluation", 4), ("checkpoint", 7), ("model-directory", 0)]):
        resume = ["--resume"] if attempt else []
        killed_run = subprocess.run(
            [sys.executable, KILL_AT, point, str(step), *args, "--output-dir", str(killed), *resume],
            env=subprocess_env(),
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert killed_run.returncode == -signal.SIGKILL, killed_run.stderr[-3000:]
    directory = RunDirectory(killed)
    assert directory.checkpoint_dirs()[-1].name == "checkpoint-12"
    assert not (killed / "model.safetensors").exists()
    assert list(directory.checkpoints.glob(".tmp-checkpoint-*")) == []  # checkpoint 7's torn write was tidied

    # The last checkpoint is the run's end: the resume writes the model directory from it, and trains no step 13.
    capsys.readouterr()
    assert train_cli([*args, "--output-dir", str(killed), "--resume"]) == 0
    assert "done (completed): 12 steps" in capsys.readouterr().out
    assert without_timing(read_metrics(killed)) == without_timing(read_metrics(full))
    assert (killed / "model.safetensors").read_bytes() == (full / "model.safetensors").read_bytes()
    assert [path.name for path in directory.checkpoint_dirs()] == ["checkpoint-11", "checkpoint-12"]

    # Once more: the run has ended and its model directory is written; nothing changes.
    before = file_listing(killed)
    capsys.readouterr()
    assert train_cli([*args, "--output-dir", str(killed), "--resume"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed == [
        f"nothing to do: the run in {killed} already finished at step 12 (completed) and its model directory is "
        "complete; raise --max-steps or --epochs to train further"
    ]
    assert file_listing(killed) == before
