"""train.run: gptscratch-train end to end: outputs, a diverged or finished run, the engines and processes agreeing."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import TINY_MODEL, common, read_metrics, subprocess_env, train_cli

from train.checkpoints import RunDirectory


def test_train_writes_metrics_plot_summary_checkpoints_and_a_loadable_model(tmp_path, corpus, cache, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from common.model_dir import load_model_directory

    output = tmp_path / "run"
    status = train_cli(
        [
            *common(corpus, cache),
            "--output-dir",
            str(output),
            "--max-steps",
            "30",
            "--eval-freq",
            "10",
            "--save-steps",
            "10",
            "--lr",
            "3e-3",
            "--report-to",
            "tensorboard",
        ]
    )
    printed = capsys.readouterr().out
    assert status == 0
    for expected in (
        "Plan",
        "Val perplexity",
        "Sample: 'Every effort moves you",
        "done (completed): 30 steps",
        "reloaded with AutoModelForCausalLM",
    ):
        assert expected in printed

    records = read_metrics(output)
    assert [record["step"] for record in records] == [0, 10, 20, 30]
    assert [record["tokens_seen"] for record in records] == [0, 1280, 2560, 3840]  # 10 steps x 4 windows x 32
    for record in records:
        assert {"step", "epoch", "tokens_seen", "train_loss", "val_loss", "val_perplexity"} <= record.keys()
        assert record["val_perplexity"] == pytest.approx(math.exp(record["val_loss"]))
    assert records[-1]["val_loss"] < records[0]["val_loss"] - 1.0

    summary = json.loads((output / "training_summary.json").read_text())
    assert summary["source"].startswith("topics.txt") and "300 tokens" in summary["tokenizer"]
    assert (summary["steps"], summary["tokens_seen"], summary["val_loss"]) == (30, 3840, records[-1]["val_loss"])
    assert summary["train_perplexity"] == pytest.approx(math.exp(summary["train_loss"]))
    assert {"epochs", "train_loss", "val_perplexity"} <= summary.keys()
    assert (output / "loss_plot.png").read_bytes()[:4] == b"\x89PNG"
    assert (output / "loss_plot.pdf").read_bytes()[:4] == b"%PDF"
    assert list((output / "tensorboard").rglob("events.out.tfevents.*"))

    checkpoints = RunDirectory(output).checkpoint_dirs()
    assert [path.name for path in checkpoints] == ["checkpoint-20", "checkpoint-30"]  # --save-total-limit 2

    model = AutoModelForCausalLM.from_pretrained(output, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(output)
    assert type(model).__name__ == "GPTScratchForCausalLM" and len(tokenizer) == model.config.vocab_size == 300
    final_weights = load_file(checkpoints[-1] / "model.safetensors")
    for name, tensor in final_weights.items():
        assert torch.equal(model.state_dict()[name], tensor), name
    prompt = torch.tensor([tokenizer.encode("The for")])
    assert model.generate(prompt, max_new_tokens=5).shape == (1, prompt.shape[1] + 5)
    loaded, _ = load_model_directory(output)
    assert loaded.config.eos_token_id == tokenizer.eos_token_id


def test_a_small_corpus_is_evaluated_every_epoch_unless_told(tmp_path, corpus, cache, capsys):
    """--eval-freq defaults to 50 steps, or to an epoch where an epoch is shorter (early stopping then sees the
    best model of a text that overfits in a few epochs); a given --eval-freq wins."""
    small = tmp_path / "small.txt"
    small.write_text(corpus.read_text(encoding="utf-8")[:2_000], encoding="utf-8")
    args = [*common(small, cache), "--max-steps", "20", "--early-stopping-patience", "0"]
    assert train_cli([*args, "--output-dir", str(tmp_path / "epochs")]) == 0
    per_epoch = int(re.search(r"(\d+) steps/epoch", capsys.readouterr().out).group(1))
    assert 1 < per_epoch < 20
    steps = [record["step"] for record in read_metrics(tmp_path / "epochs")]
    assert steps == sorted({*range(0, 20, per_epoch), 20})
    assert train_cli([*args, "--output-dir", str(tmp_path / "given"), "--eval-freq", "5"]) == 0
    assert [record["step"] for record in read_metrics(tmp_path / "given")] == [0, 5, 10, 15, 20]


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, corpus, cache, capsys):
    output = tmp_path / "run"
    status = train_cli(
        [
            *common(corpus, cache),
            "--output-dir",
            str(output),
            "--max-steps",
            "10",
            "--lr",
            "1e30",
            "--warmup-steps",
            "0",
            "--save-steps",
            "1",
        ]
    )
    stderr = capsys.readouterr().err
    assert status == 1
    assert "the training loss became nan at step 2" in stderr and "checkpoint-1" in stderr
    assert [path.name for path in RunDirectory(output).checkpoint_dirs()] == ["checkpoint-1"]
    assert not (output / "config.json").exists()


@pytest.mark.slow
def test_a_resume_of_a_run_that_ended_trains_nothing_unless_its_end_moves(tmp_path, corpus, cache, capsys):
    from cli_helpers import file_listing

    output = tmp_path / "run"
    args = [
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
    ]
    assert train_cli(args) == 0
    stopped = json.loads((output / "training_summary.json").read_text())["steps"]
    records = read_metrics(output)
    before = file_listing(output)
    capsys.readouterr()
    assert train_cli([*args, "--resume"]) == 0
    assert capsys.readouterr().out.strip() == (
        f"nothing to do: the run in {output} already finished at step {stopped} (early-stopped) and its model "
        "directory is complete; raise --early-stopping-patience to train further"
    )
    assert file_listing(output) == before

    # Killed after its last checkpoint, before the model directory: the resume writes it (the best model), and
    # evaluates, trains and saves nothing more.
    for name in ("config.json", "model.safetensors", "training_summary.json"):
        (output / name).unlink()
    assert train_cli([*args, "--resume"]) == 0
    assert read_metrics(output) == records
    assert json.loads((output / "training_summary.json").read_text())["steps"] == stopped
    final = load_file(output / "model.safetensors")
    best = load_file(output / "checkpoints" / "best-model" / "model.safetensors")
    assert all(torch.equal(final[name], best[name]) for name in best)
    assert RunDirectory(output).checkpoint_dirs()[-1].name == f"checkpoint-{stopped}"

    # A later end is more to train: the finished run goes on from its last checkpoint.
    assert train_cli([*args, "--resume", "--early-stopping-patience", "50", "--max-steps", str(stopped + 2)]) == 0
    assert [record["step"] for record in read_metrics(output)] == [*(r["step"] for r in records), stopped + 2]


@pytest.mark.slow
def test_trainer_engine_agrees_with_the_accelerate_loop_and_resumes(tmp_path, corpus, cache):
    """Same seed, data and settings: the two engines' evaluations agree to 1e-4.

    Both draw the same initial weights, the same shuffled windows (Accelerate's seedable sampler, seed + epoch),
    the same fused AdamW groups, warmup + cosine schedule and clipping, and the same loss; they differ only in the
    order of float32 reductions (how the loss is averaged and scaled), which we measure at ~1e-6 after 24 steps.
    A real difference (data order, decay groups, schedule, loss definition) moves the losses by more than 1e-2
    within a few steps, so 1e-4 tells the two apart with room to spare.
    """
    args = [
        *common(corpus, cache),
        "--max-steps",
        "24",
        "--eval-freq",
        "4",
        "--save-steps",
        "12",
        "--lr",
        "3e-3",
        "--warmup-steps",
        "4",
        "--grad-accum",
        "2",
    ]
    loop_dir, trainer_dir = tmp_path / "loop", tmp_path / "trainer"
    assert train_cli([*args, "--output-dir", str(loop_dir)]) == 0
    assert train_cli([*args, "--output-dir", str(trainer_dir), "--engine", "trainer"]) == 0
    loop_records, trainer_records = read_metrics(loop_dir), read_metrics(trainer_dir)
    assert [r.keys() for r in trainer_records] == [r.keys() for r in loop_records]
    assert [r["step"] for r in trainer_records] == [0, 4, 8, 12, 16, 20, 24]
    for ours, theirs in zip(loop_records, trainer_records):
        assert (ours["tokens_seen"], ours["epoch"]) == (theirs["tokens_seen"], theirs["epoch"])
        assert ours["train_loss"] == pytest.approx(theirs["train_loss"], abs=1e-4)
        assert ours["val_loss"] == pytest.approx(theirs["val_loss"], abs=1e-4)
    assert loop_records[-1]["val_loss"] < loop_records[0]["val_loss"] - 0.5

    # The same output directory, with the Trainer's checkpoints and perplexity among its eval metrics.
    for name in ("config.json", "model.safetensors", "tokenizer.json", "loss_plot.png", "training_summary.json"):
        assert (trainer_dir / name).is_file()
    last = trainer_dir / "checkpoints" / "checkpoint-24"
    history = json.loads((last / "trainer_state.json").read_text())["log_history"]
    perplexities = [entry["eval_val_perplexity"] for entry in history if "eval_val_perplexity" in entry]
    assert perplexities[-1] == pytest.approx(trainer_records[-1]["val_perplexity"])

    # resume_from_checkpoint: back to step 12, then on to the same end.
    shutil.rmtree(last)
    assert train_cli([*args, "--output-dir", str(trainer_dir), "--engine", "trainer", "--resume"]) == 0
    resumed = read_metrics(trainer_dir)
    assert [r["step"] for r in resumed] == [0, 4, 8, 12, 16, 20, 24]
    for before, after in zip(trainer_records, resumed):
        assert after["val_loss"] == pytest.approx(before["val_loss"], abs=1e-6)


@pytest.mark.slow
def test_document_mask_trains_alike_in_both_engines(tmp_path, cache):
    from pydoc_data.topics import topics

    documents = tmp_path / "documents"
    documents.mkdir()
    for key in sorted(topics)[:40]:  # short documents: several per 32-token window
        (documents / f"{key}.txt").write_text(topics[key][:200], encoding="utf-8")
    args = [
        "--data",
        str(documents),
        "--cache-dir",
        str(cache),
        *TINY_MODEL,
        "--batch-size",
        "4",
        "--eval-iter",
        "2",
        "--max-steps",
        "8",
        "--eval-freq",
        "4",
        "--lr",
        "3e-3",
    ]
    runs = {name: tmp_path / name for name in ("loop", "trainer", "unmasked")}
    assert train_cli([*args, "--document-mask", "--output-dir", str(runs["loop"])]) == 0
    assert train_cli([*args, "--document-mask", "--output-dir", str(runs["trainer"]), "--engine", "trainer"]) == 0
    assert train_cli([*args, "--output-dir", str(runs["unmasked"])]) == 0
    loop, trainer, unmasked = (read_metrics(path) for path in runs.values())
    for ours, theirs in zip(loop, trainer):  # the tolerance of the engine agreement test above, for the same reason
        assert ours["val_loss"] == pytest.approx(theirs["val_loss"], abs=1e-4)
    # The same initial weights score the same windows differently once documents cannot see each other.
    assert abs(loop[0]["val_loss"] - unmasked[0]["val_loss"]) > 1e-3


@pytest.mark.slow
def test_two_processes_match_one_with_the_same_global_batch(tmp_path, corpus, cache):
    """torchrun, 2 CPU processes x batch 2 against 1 process x batch 4: the same windows per step, so the same losses
    up to the order of float additions (gradients averaged by all-reduce, losses gathered)."""
    args = [*common(corpus, cache), "--max-steps", "12", "--eval-freq", "4"]
    single, double = tmp_path / "one", tmp_path / "two"
    assert train_cli([*args, "--batch-size", "4", "--output-dir", str(single)]) == 0
    launched = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "train",
            *args,
            "--batch-size",
            "2",
            "--output-dir",
            str(double),
        ],
        env=dict(subprocess_env(), OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert "2 processes" in launched.stdout
    one, two = read_metrics(single), read_metrics(double)
    assert [r["tokens_seen"] for r in two] == [r["tokens_seen"] for r in one] == [0, 512, 1024, 1536]
    for ours, theirs in zip(one, two):
        assert ours["train_loss"] == pytest.approx(theirs["train_loss"], abs=1e-5)
        assert ours["val_loss"] == pytest.approx(theirs["val_loss"], abs=1e-5)
    assert one[-1]["val_loss"] < one[0]["val_loss"]
