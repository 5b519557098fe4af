"""Sharded training on 2 CPU processes: FSDP2 (applied by gptscratch, as Accelerate shards GPU processes only) and
DeepSpeed ZeRO through Accelerate train like one process with the same global batch, write sharded checkpoints that
resume exactly and end in the usual model directory; launches that would run another strategy are refused."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType
from train_helpers import common, read_metrics, subprocess_env, train_cli
from transformers import AutoModelForCausalLM

from common.errors import InputError
from train.distributed import DEEPSPEED, FSDP, Parallelism, check_options, fsdp_parallelism
from train.options import OptimisationOptions

ACCELERATE = ["accelerate.commands.launch", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
FSDP2 = [
    *ACCELERATE,
    "--num_processes",
    "2",
    "--use_fsdp",
    "--fsdp_version",
    "2",
    "--fsdp_auto_wrap_policy",
    "TRANSFORMER_BASED_WRAP",
    "--fsdp_transformer_layer_cls_to_wrap",
    "TransformerBlock",
]
ZERO3 = [*ACCELERATE, "--num_processes", "2", "--use_deepspeed", "--zero_stage", "3"]
# What DeepSpeed cannot honour: Muon (it hands the optimizer flat slices) and the step guard (it steps inside
# backward).
DEEPSPEED_OPTIONS = [
    "--optimizer",
    "adamw",
    "--skip-loss-zscore",
    "0",
    "--skip-grad-zscore",
    "0",
    "--max-rollbacks",
    "0",
]


def launch(launcher: list[str], args: list[str]) -> subprocess.CompletedProcess:
    """gptscratch-train under `python -m <launcher>`, one thread a process, DeepSpeed on its CPU accelerator."""
    return subprocess.run(
        [sys.executable, "-m", *launcher, "-m", "train", *args],
        env=dict(subprocess_env(), OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", DS_BUILD_OPS="0"),
        capture_output=True,
        text=True,
        timeout=300,
    )


def weights(directory: Path) -> dict[str, torch.Tensor]:
    """The model directory's weights, loaded as a user loads them."""
    return AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=True).state_dict()


def assert_trains_like(sharded: Path, reference: Path, tolerance: float) -> None:
    """The same losses at every evaluation and the same final weights, to float tolerance."""
    ours, theirs = read_metrics(sharded), read_metrics(reference)
    assert [r["tokens_seen"] for r in ours] == [r["tokens_seen"] for r in theirs]
    for mine, other in zip(ours, theirs):
        assert mine["train_loss"] == pytest.approx(other["train_loss"], abs=tolerance)
        assert mine["val_loss"] == pytest.approx(other["val_loss"], abs=tolerance)
    expected = weights(reference)
    for name, tensor in weights(sharded).items():
        torch.testing.assert_close(tensor, expected[name], atol=tolerance, rtol=0, msg=name)


def resume_from(run: Path, step: int, target: Path) -> Path:
    """A copy of `run` that stopped at checkpoint-`step`: its later checkpoints and its model directory gone."""
    shutil.copytree(run / "checkpoints", target / "checkpoints")
    for later in (target / "checkpoints").glob("checkpoint-*"):
        if int(later.name.split("-")[1]) > step:
            shutil.rmtree(later)
    shutil.rmtree(target / "checkpoints" / "best-model", ignore_errors=True)
    return target


@pytest.mark.slow
def test_fsdp2_on_cpu_processes_with_muon_trains_like_one_process_and_resumes_exactly(tmp_path, corpus, cache):
    """Muon (the default) gathers each matrix for its Newton-Schulz step, so 2 FSDP2 processes x batch 2 make the
    updates of 1 process x batch 4; the checkpoints hold each process's shards, and a resume from the first lands
    on the uninterrupted run's weights."""
    args = [*common(corpus, cache), "--max-steps", "6", "--eval-freq", "3", "--save-steps", "3"]
    assert train_cli([*args, "--batch-size", "4", "--output-dir", str(tmp_path / "one")]) == 0
    sharded = launch(FSDP2, [*args, "--batch-size", "2", "--output-dir", str(tmp_path / "fsdp")])
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    assert (
        "parallelism FSDP2 (torch's fully_shard, applied by gptscratch: Accelerate shards GPU processes only) over "
        "2 CPU processes, gloo: parameters, gradients and optimizer states sharded" in sharded.stdout
    )
    checkpoint = tmp_path / "fsdp" / "checkpoints" / "checkpoint-3"
    assert sorted(path.name for path in (checkpoint / "sharded").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert not list(checkpoint.glob("*.safetensors"))  # no gathered copy: each process wrote its shards
    assert_trains_like(tmp_path / "fsdp", tmp_path / "one", tolerance=1e-5)

    resumed = resume_from(tmp_path / "fsdp", 3, tmp_path / "resumed")
    again = launch(FSDP2, [*args, "--batch-size", "2", "--output-dir", str(resumed), "--resume", "latest"])
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from" in again.stdout and "at step 3" in again.stdout
    expected = weights(tmp_path / "fsdp")
    for name, tensor in weights(resumed).items():
        assert torch.equal(tensor, expected[name]), name


@pytest.mark.slow
def test_deepspeed_zero3_on_cpu_processes_trains_like_one_process_and_resumes_exactly(tmp_path, corpus, cache):
    """DeepSpeed's batch (micro-batch x accumulation x processes) and clipping are the run's: 2 ZeRO-3 processes x
    batch 2 x 2 accumulated, clipped at 0.5, make the updates of 1 process x batch 4 x 2; its checkpoints resume
    exactly, and the model directory holds the gathered float32 weights."""
    args = [
        *common(corpus, cache),
        *DEEPSPEED_OPTIONS,
        "--grad-accum",
        "2",
        "--max-grad-norm",
        "0.5",
        "--max-steps",
        "4",
        "--eval-freq",
        "2",
        "--save-steps",
        "2",
    ]
    assert train_cli([*args, "--batch-size", "4", "--output-dir", str(tmp_path / "one")]) == 0
    zero3 = launch(ZERO3, [*args, "--batch-size", "2", "--output-dir", str(tmp_path / "zero3")])
    assert zero3.returncode == 0, zero3.stderr[-3000:]
    assert (
        "parallelism DeepSpeed ZeRO stage 3 through Accelerate over 2 CPU processes, gloo: parameters, gradients and "
        "optimizer states sharded; global batch 2 windows x 2 processes x 2 accumulated = 8 windows a step"
        in zero3.stdout
    )
    assert read_metrics(tmp_path / "zero3")[-1]["grad_norm"] > 0.5  # the clipping took effect
    assert_trains_like(tmp_path / "zero3", tmp_path / "one", tolerance=1e-5)

    resumed = resume_from(tmp_path / "zero3", 2, tmp_path / "resumed")
    again = launch(ZERO3, [*args, "--batch-size", "2", "--output-dir", str(resumed), "--resume", "latest"])
    assert again.returncode == 0, again.stderr[-3000:]
    assert "at step 2" in again.stdout
    expected = weights(tmp_path / "zero3")
    for name, tensor in weights(resumed).items():
        assert torch.equal(tensor, expected[name]), name


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}, "FSDP2 asked (ACCELERATE_USE_FSDP) without a launcher"),
        ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}, "DeepSpeed ZeRO stage 2 asked"),
    ],
)
def test_a_sharding_strategy_asked_of_one_process_is_refused(
    tmp_path, corpus, cache, capsys, monkeypatch, variables, named
):
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    output = tmp_path / "run"
    assert train_cli([*common(corpus, cache), "--max-steps", "1", "--output-dir", str(output)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and named in lines[0] and "accelerate launch --use_" in lines[0], lines
    assert not output.exists()


@pytest.mark.slow
def test_accelerate_launch_of_several_processes_that_starts_one_is_refused(tmp_path, corpus, cache):
    """accelerate launch --num_processes 2 without --multi_gpu (or FSDP, DeepSpeed) starts one process."""
    output = tmp_path / "run"
    launched = launch(
        [*ACCELERATE, "--num_processes", "2"], [*common(corpus, cache), "--max-steps", "1", "--output-dir", str(output)]
    )
    assert "returned non-zero exit status 2" in launched.stderr  # the launcher's report of our exit status
    ours = [line for line in launched.stderr.splitlines() if line.startswith("gptscratch-train: ")]
    assert len(ours) == 1 and "asked for several processes but started one" in ours[0], launched.stderr[-2000:]
    assert "--multi_gpu --num_processes N" in ours[0]
    assert not output.exists()


CPU_PROCESSES = {"processes": 2, "device": "cpu", "backend": "gloo"}


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("FSDP_VERSION", "1"),
        ("FSDP_AUTO_WRAP_POLICY", "SIZE_BASED_WRAP"),
        ("FSDP_OFFLOAD_PARAMS", "true"),
        ("FSDP_ACTIVATION_CHECKPOINTING", "true"),
    ],
)
def test_fsdp_settings_the_cpu_sharding_does_not_honour_are_refused(monkeypatch, setting, value):
    monkeypatch.setenv(setting, value)
    with pytest.raises(InputError, match=f"on CPU processes.*launch with {setting} "):
        fsdp_parallelism(SimpleNamespace(distributed_type=DistributedType.MULTI_CPU), CPU_PROCESSES)


def test_fsdp_on_cpu_processes_is_applied_by_the_package():
    parallelism = fsdp_parallelism(SimpleNamespace(distributed_type=DistributedType.MULTI_CPU), CPU_PROCESSES)
    assert (parallelism.strategy, parallelism.fsdp_version, parallelism.shards_itself) == (FSDP, 2, True)
    assert parallelism.share("parameters") == parallelism.share("optimizer states") == 0.5


@pytest.mark.parametrize(
    ("parallelism", "options", "refused"),
    [
        (Parallelism(DEEPSPEED, zero_stage=2, **CPU_PROCESSES), {}, "muon under DeepSpeed ZeRO stage 2"),
        (Parallelism(FSDP, fsdp_version=1, device="cuda", processes=2), {}, "muon under FSDP1"),
        (
            Parallelism(DEEPSPEED, zero_stage=1, **CPU_PROCESSES),
            {"optimizer": "adamw"},
            "DeepSpeed applies each update inside its backward pass",
        ),
        (Parallelism(FSDP, fsdp_version=2, shards_itself=True, **CPU_PROCESSES), {"engine": "trainer"}, "engine"),
    ],
)
def test_options_a_strategy_cannot_honour_are_refused(parallelism, options, refused):
    with pytest.raises(InputError, match=refused) as refusal:
        check_options(parallelism, OptimisationOptions(**options))
    assert "\n" not in str(refusal.value)
