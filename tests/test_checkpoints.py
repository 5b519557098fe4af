"""train.checkpoints: checkpoints written whole or not at all, the best model kept, and resuming from a checkpoint."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import common, read_metrics, subprocess_env, train_cli, without_timing

from train import cli
from train.checkpoints import RunDirectory


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_resume_reproduces_the_uninterrupted_run(tmp_path, corpus, cache):
    """Interrupted at a step decided by the clock, then resumed: the same metrics and weights, bit for bit."""
    args = [
        *common(corpus, cache),
        "--max-steps",
        "80",
        "--eval-freq",
        "1",
        "--eval-iter",
        "1",
        "--save-steps",
        "40",
        "--dropout",
        "0.1",
    ]
    command = [sys.executable, "-m", "train", *args]
    full, interrupted = tmp_path / "full", tmp_path / "interrupted"
    subprocess.run([*command, "--output-dir", str(full)], env=subprocess_env(), check=True, capture_output=True)

    process = subprocess.Popen(
        [*command, "--output-dir", str(interrupted)],
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = interrupted / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and '"step": 20,' in metrics.read_text()):
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before it could be interrupted"
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    stopped_at = int(stdout.split("stopped by SIGTERM at step ")[1].split(";")[0])
    assert 20 <= stopped_at < 80
    assert (interrupted / "checkpoints" / f"checkpoint-{stopped_at}" / "loop_state.json").is_file()
    assert not (interrupted / "config.json").exists()  # no model directory for an unfinished run

    # A resume must use the options that shape the numbers.
    assert train_cli([*args, "--batch-size", "8", "--output-dir", str(interrupted), "--resume"]) == 2
    resumed = subprocess.run(
        [*command, "--output-dir", str(interrupted), "--resume"], env=subprocess_env(), capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {interrupted / 'checkpoints' / f'checkpoint-{stopped_at}'}" in resumed.stdout
    # Identical but for what the wall clock measures (time, tokens/s, MFU).
    assert without_timing(read_metrics(interrupted)) == without_timing(read_metrics(full))
    assert (interrupted / "model.safetensors").read_bytes() == (full / "model.safetensors").read_bytes()


def test_a_failed_checkpoint_write_leaves_the_previous_checkpoint_and_nothing_half_written(
    tmp_path, corpus, cache, monkeypatch
):
    from accelerate import Accelerator

    output = tmp_path / "run"
    args = [
        *common(corpus, cache),
        "--output-dir",
        str(output),
        "--max-steps",
        "6",
        "--save-steps",
        "3",
        "--eval-freq",
        "3",
    ]
    save_state = Accelerator.save_state
    calls = []

    def crash_on_second_save(self, output_dir=None, **kwargs):
        calls.append(output_dir)
        result = save_state(self, output_dir, **kwargs)
        if len(calls) == 2:
            raise OSError("disk full")  # after the state files, before the checkpoint is complete
        return result

    monkeypatch.setattr(Accelerator, "save_state", crash_on_second_save)
    with pytest.raises(OSError, match="disk full"):
        cli.main(args)
    directory = RunDirectory(output)
    assert [path.name for path in directory.checkpoint_dirs()] == ["checkpoint-3"]
    # The unfinished write is removed (a kill, which leaves it behind, is tests/test_faults.py's).
    assert not list(directory.checkpoints.glob(".tmp-*"))

    monkeypatch.setattr(Accelerator, "save_state", save_state)
    assert train_cli([*args, "--resume"]) == 0
    assert [path.name for path in directory.checkpoint_dirs()] == ["checkpoint-3", "checkpoint-6"]
    assert not list(directory.checkpoints.glob(".tmp-*"))
    assert [record["step"] for record in read_metrics(output)] == [0, 3, 6]


def test_early_stopping_keeps_the_best_model(tmp_path, corpus, cache):
    output = tmp_path / "run"
    # A learning rate this high overfits and then degrades within a few dozen steps.
    status = train_cli(
        [
            *common(corpus, cache),
            "--output-dir",
            str(output),
            "--max-steps",
            "300",
            "--eval-freq",
            "2",
            "--lr",
            "3e-2",
            "--warmup-steps",
            "0",
            "--early-stopping-patience",
            "2",
            "--lr-scheduler",
            "constant",
        ]
    )
    assert status == 0
    summary = json.loads((output / "training_summary.json").read_text())
    records = read_metrics(output)
    best = min(records, key=lambda record: record["val_loss"])
    assert summary["stopped"] == "early-stopped" and summary["steps"] < 300
    assert records[-1]["step"] == best["step"] + 4  # two evaluations without improvement
    assert summary["val_loss"] == best["val_loss"]
    final = load_file(output / "model.safetensors")
    kept = load_file(output / "checkpoints" / "best-model" / "model.safetensors")
    assert final.keys() == kept.keys() and all(torch.equal(final[name], kept[name]) for name in final)
