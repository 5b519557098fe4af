"""gptscratch-train, train.loop and train.trainer: the book's functions, outputs, resume, engines, processes, errors."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from modeling_gptscratch import GPTScratchConfig, GPTScratchForCausalLM
from train import cli
from train import corpus as C
from train import data as D
from train import vocabulary as V
from train import windows as W
from train.checkpoints import RunDirectory
from train.metrics import TIMING_FIELDS

REPO_ROOT = Path(__file__).resolve().parents[1]
# A 2-layer, 32-dimension model with a 300-token tokenizer: hundreds of steps per second on a CPU.
TINY_MODEL = [
    "--n-layers",
    "2",
    "--emb-dim",
    "32",
    "--n-heads",
    "2",
    "--config",
    "context_length=32",
    "--vocab-size",
    "300",
    "--dropout",
    "0",
]


@pytest.fixture(scope="module")
def stream_dataset(tmp_path_factory) -> Path:
    """A local dataset directory of JSON lines, one document a row: datasets streams it offline."""
    from pydoc_data.topics import topics

    root = tmp_path_factory.mktemp("stream-dataset")
    rows = "".join(json.dumps({"text": topics[key][:1500]}) + "\n" for key in sorted(topics)[:60])
    (root / "documents.jsonl").write_text(rows, encoding="utf-8")
    return root


def common(corpus: Path, cache: Path) -> list[str]:
    return ["--data", str(corpus), "--cache-dir", str(cache), *TINY_MODEL, "--batch-size", "4", "--eval-iter", "2"]


def train_cli(argv: list[str]) -> int:
    """gptscratch-train in this process; returns its exit status."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    return exit_info.value.code


def read_metrics(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]


def without_timing(records: list[dict]) -> list[dict]:
    """metrics.jsonl records without the fields a wall clock measures."""
    return [{key: value for key, value in record.items() if key not in TIMING_FIELDS} for record in records]


def subprocess_env() -> dict[str, str]:
    """A child with this process's thread count: float results then match an in-process run bit for bit."""
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()), PYTHONPATH=str(REPO_ROOT))
    return env


# ---------------------------------------------------------------------------------------------------------------------
# The book's functions


def copy_book_weights(book: torch.nn.Module, ours: GPTScratchForCausalLM, config: dict) -> None:
    """The book's GPTModel weights into GPTScratchForCausalLM through the converter's own mapping (an untied head)."""
    from convert.book_checkpoint import book_to_gptscratch

    state = {name: tensor.detach().clone() for name, tensor in book.state_dict().items()}
    ours.load_state_dict(dict(book_to_gptscratch(state, config, tied=False, dtype=torch.float32)))


def test_train_model_simple_matches_the_books_on_the_same_weights(corpus, cache, monkeypatch, capsys):
    """train_model_simple + create_dataloader on GPTScratchForCausalLM reproduce chapter 5's losses."""
    from llms_from_scratch import ch04, ch05

    from train.book import calc_loss_loader, train_model_simple

    text = corpus.read_text(encoding="utf-8")[:12_000]
    local = C.local_corpus([str(corpus)])
    tokenizer = V.train_bpe_tokenizer(C.training_text(local, C.scan_corpus(local, progress=False), 0.9), 300)
    cfg = {
        "vocab_size": 300,
        "context_length": 32,
        "emb_dim": 32,
        "n_heads": 4,
        "n_layers": 2,
        "drop_rate": 0.0,
        "qkv_bias": True,
    }
    torch.manual_seed(123)
    book_model = ch04.GPTModel(cfg)
    our_model = GPTScratchForCausalLM(GPTScratchConfig(**cfg, tie_word_embeddings=False))
    copy_book_weights(book_model, our_model, cfg)
    split_idx = int(0.9 * len(text))

    def run(model, train_function):
        torch.manual_seed(123)
        train_loader = W.create_dataloader(text[:split_idx], tokenizer, batch_size=2, max_length=32, stride=32)
        val_loader = W.create_dataloader(
            text[split_idx:], tokenizer, batch_size=2, max_length=32, stride=32, shuffle=False, drop_last=False
        )
        optimizer = torch.optim.AdamW(model.parameters(), lr=4e-4, weight_decay=0.1)
        return train_function(
            model,
            train_loader,
            val_loader,
            optimizer,
            "cpu",
            num_epochs=2,
            eval_freq=10,
            eval_iter=2,
            start_context="The",
            tokenizer=tokenizer,
        ), val_loader

    # The book prints samples through tiktoken's encode signature; the losses are what is compared.
    monkeypatch.setattr(ch05, "generate_and_print_sample", lambda *args: None)
    (book_train, book_val, book_tokens), _ = run(book_model, ch05.train_model_simple)
    capsys.readouterr()
    (our_train, our_val, our_tokens), val_loader = run(our_model, train_model_simple)
    printed = capsys.readouterr().out
    assert our_tokens == book_tokens and len(our_train) >= 8
    torch.testing.assert_close(our_train, book_train, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(our_val, book_val, rtol=1e-4, atol=1e-4)
    assert our_val[-1] < our_val[0] - 0.5
    assert "Ep 2 (Step 000" in printed and printed.count("The") >= 2  # progress lines, and a sample per epoch
    full_val = calc_loss_loader(val_loader, our_model.eval(), "cpu")
    assert abs(full_val - ch05.calc_loss_loader(val_loader, book_model.eval(), "cpu")) < 1e-4


# ---------------------------------------------------------------------------------------------------------------------
# The command and its outputs


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


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, corpus, cache, capsys):
    output = tmp_path / "run"
    assert train_cli([*common(corpus, cache), "--output-dir", str(output), "--dry-run", "--max-steps", "7"]) == 0
    printed = capsys.readouterr().out
    config = GPTScratchConfig.from_preset("tiny", n_layers=2, emb_dim=32, n_heads=2, context_length=32, vocab_size=300)
    total = sum(p.numel() for p in GPTScratchForCausalLM(config).parameters())
    without_embeddings = total - 300 * 32 - 32 * 32
    assert f"{total:,}" in printed and f"{without_embeddings:,} without embeddings" in printed
    assert f"Chinchilla-optimal for {total / 1e6:.2f} M parameters (20 tokens/parameter) is {20 * total:,}" in printed
    assert "this run sees 896;" in printed  # 7 steps x 4 windows x 32 tokens
    for expected in ("weights", "gradients", "activations", "steps/epoch", "7 steps (max steps)"):
        assert expected in printed
    # Muon's one fp32 momentum for the blocks' matrices (12 x 32^2 each), AdamW's two moments for the rest.
    matrices = 2 * 12 * 32 * 32
    assert f"optimizer states {(8 * (total - matrices) + 4 * matrices) / 2**20:.1f} MiB" in printed
    assert not output.exists()


def test_an_output_directory_inside_the_data_directory_is_left_out_of_the_data(tmp_path, corpus, cache, capsys):
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(corpus, data / "topics.txt")
    args = [
        "--data",
        str(data),
        "--cache-dir",
        str(cache),
        *TINY_MODEL,
        "--batch-size",
        "4",
        "--eval-iter",
        "1",
        "--max-steps",
        "2",
        "--eval-freq",
        "2",
    ]
    assert train_cli([*args, "--output-dir", str(data / "run")]) == 0
    first = capsys.readouterr().out
    # The run's weights, checkpoints, metrics and plots now lie inside the data directory: the next run on that
    # directory reads the same text as the first, and says what it left out.
    assert train_cli([*args, "--output-dir", str(tmp_path / "second"), "--dry-run"]) == 0
    second = capsys.readouterr().out
    assert f"--data {data}: left out {data / 'run'} (model files and run or model directories are not text)" in second
    plan = lambda printed: [line for line in printed.splitlines() if line.startswith(("  data", "  split"))]  # noqa
    assert plan(second) == plan(first) and len(plan(first)) == 2


def test_config_values_take_the_model_fields_types(tmp_path, corpus, cache):
    """--config tie_word_embeddings=False unties the head (it was the string "False", and the head stayed tied);
    numbers become ints and floats, from the command line and from a config file alike."""
    from train.cli import parse_arguments
    from train.model_config import typed_model_options
    from train.options import ModelOptions

    output = tmp_path / "run"
    assert (
        train_cli(
            [
                *common(corpus, cache),
                "--output-dir",
                str(output),
                "--max-steps",
                "1",
                "--config",
                "tie_word_embeddings=False",
                "--config",
                "layer_norm_eps=1e-6",
            ]
        )
        == 0
    )
    config = json.loads((output / "config.json").read_text())
    assert config["tie_word_embeddings"] is False and config["layer_norm_eps"] == 1e-6
    weights = load_file(output / "model.safetensors")
    assert not torch.equal(weights["out_head.weight"], weights["model.tok_emb.weight"])  # a head of its own

    config_file = tmp_path / "run.yaml"
    config_file.write_text("config:\n  qkv_bias: no\n  n_layers: 3\n  drop_rate: 0\n", encoding="utf-8")
    from_file = typed_model_options(parse_arguments(["--config-file", str(config_file), "--output-dir", "x"]).model)
    assert from_file.config == {"qkv_bias": False, "n_layers": 3, "drop_rate": 0}
    spelled = {"True": True, "false": False, "1": True, "0": False}
    for text, value in spelled.items():
        options = typed_model_options(ModelOptions(config={"use_cache": text}))
        assert options.config["use_cache"] is value
    assert typed_model_options(ModelOptions(config={"drop_rate": "0.25"})).config == {"drop_rate": 0.25}


def test_gptscratch_prepare_makes_the_token_files_a_run_then_maps(tmp_path, corpus, capsys, monkeypatch):
    from train import prepare

    data_flags = ["--data", str(corpus), "--cache-dir", str(tmp_path / "cache"), "--vocab-size", "300"]
    with pytest.raises(SystemExit) as exit_info:
        prepare.main(data_flags)
    printed = capsys.readouterr().out
    assert exit_info.value.code == 0
    entry = next((tmp_path / "cache" / "gptscratch-tokens").iterdir())
    assert printed.startswith("prepared in ") and f"token files  {entry} (" in printed and "uint16" in printed

    def no_reading(*args, **kwargs):
        raise AssertionError("the run read the corpus again")

    monkeypatch.setattr(D, "scan_corpus", no_reading)
    assert train_cli([*data_flags, *TINY_MODEL, "--output-dir", str(tmp_path / "run"), "--dry-run"]) == 0
    assert f"token files {entry} (" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        prepare.main([*data_flags, "--train-ratio", "2"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "gptscratch-prepare: error: --train-ratio 2.0: must be between 0 and 1 (0.9 keeps 10% for validation)"
    )


def test_min_frequency_decides_how_many_tokens_a_small_corpus_gets(tmp_path, corpus, cache, capsys):
    """On 36 KB of text, merging every pair (--min-frequency 1) gives more tokens than the default, pairs seen
    twice; both stop short of --vocab-size."""
    sizes = []
    for flags in ([], ["--min-frequency", "1"]):
        assert (
            train_cli(
                [
                    "--data",
                    str(corpus),
                    "--cache-dir",
                    str(cache),
                    "--output-dir",
                    str(tmp_path / "run"),
                    "--vocab-size",
                    "8192",
                    "--dry-run",
                    *flags,
                ]
            )
            == 0
        )
        printed = capsys.readouterr().out
        sizes.append(int(re.search(r"BPE fitted on the training split \((\d+) tokens\)", printed).group(1)))
    assert sizes[0] < sizes[1] < 8192


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


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_a_config_file_sets_the_options_and_flags_win(tmp_path, corpus, cache, capsys, suffix):
    values = {
        "data": [str(corpus)],
        "cache_dir": str(cache),
        "n_layers": 2,
        "emb_dim": 32,
        "n_heads": 2,
        "config": {"context_length": 32},
        "vocab_size": 300,
        "dropout": 0.0,
        "batch_size": 4,
        "max_steps": 7,
        "lr_scheduler": "cosine",
        "optimizer": "adamw",
        "dry_run": True,
    }
    config_file = tmp_path / f"run{suffix}"
    if suffix == ".json":
        config_file.write_text(json.dumps(values), encoding="utf-8")
    else:
        import yaml

        config_file.write_text(yaml.safe_dump(values), encoding="utf-8")
    output = tmp_path / "run"
    assert train_cli(["--config-file", str(config_file), "--output-dir", str(output), "--max-steps", "5"]) == 0
    printed = capsys.readouterr().out
    assert "5 steps (max steps)" in printed  # the flag wins over the file's 7
    # The file's AdamW sets the rate tuned for it; Muon's default is twice as high (test_speed).
    assert (
        "lr 0.0015 cosine to 0.00015" in printed and "context_length=32, n_layers=2, n_heads=2, emb_dim=32" in printed
    )
    assert "this run sees 640;" in printed  # 5 steps x 4 windows x 32 tokens: the file's batch and context
    assert not output.exists()


@pytest.mark.parametrize(
    "content, expected",
    [
        ("batch_size: 8\ncolour: red\n", "--config-file {file}: 'colour' is not an option"),
        ("batch_size: eight\n", "--config-file {file}: batch_size eight: expected an integer"),
        ("[1, 2]\n", "--config-file {file} does not hold a mapping"),
        ("batch_size: [\n", "--config-file {file} is not valid YAML"),
    ],
)
def test_a_bad_config_file_is_one_line_naming_it(tmp_path, capsys, content, expected):
    config_file = tmp_path / "run.yaml"
    config_file.write_text(content, encoding="utf-8")
    assert train_cli(["--config-file", str(config_file), "--output-dir", str(tmp_path / "out")]) == 2
    stderr = capsys.readouterr().err.strip().splitlines()
    assert len(stderr) == 1 and expected.format(file=config_file) in stderr[0], stderr


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


# ---------------------------------------------------------------------------------------------------------------------
# The Trainer engine


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


# ---------------------------------------------------------------------------------------------------------------------
# Streamed datasets


@pytest.mark.slow
def test_a_streamed_run_resumed_from_a_checkpoint_reproduces_the_uninterrupted_run(
    tmp_path, stream_dataset, cache, capsys
):
    """--streaming tokenises as it trains; a checkpoint keeps the stream's position (the dataset's, the tokens in
    hand, the shuffle buffer and its generator), so resuming from it gives the same metrics and weights, bit for
    bit (but for what the wall clock measures), as the run that went on."""
    args = [
        "--dataset",
        str(stream_dataset),
        "--streaming",
        "--cache-dir",
        str(cache),
        *TINY_MODEL,
        "--batch-size",
        "4",
        "--eval-iter",
        "2",
        "--max-steps",
        "12",
        "--eval-freq",
        "3",
        "--save-steps",
        "6",
        "--shuffle-buffer",
        "64",
        "--dropout",
        "0.1",
        "--lr",
        "3e-3",
        "--output-dir",
        str(tmp_path / "run"),
    ]
    assert train_cli(args) == 0
    printed = capsys.readouterr().out
    assert "(streamed)" in printed and "shuffle buffer of 64" in printed
    records = read_metrics(tmp_path / "run")
    weights = (tmp_path / "run" / "model.safetensors").read_bytes()
    assert [record["step"] for record in records] == [0, 3, 6, 9, 12]
    assert records[-1]["val_loss"] < records[0]["val_loss"] - 0.2  # it learns (still warming up at step 12)
    checkpoints = tmp_path / "run" / "checkpoints"
    assert (checkpoints / "checkpoint-6" / "stream_state_0.npz").is_file()

    shutil.rmtree(checkpoints / "checkpoint-12")  # as if killed after the save at step 6
    assert train_cli([*args, "--resume"]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert without_timing(read_metrics(tmp_path / "run")) == without_timing(records)
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == weights


# ---------------------------------------------------------------------------------------------------------------------
# --document-mask


def test_document_positions_restart_at_each_separator_and_keep_attention_inside_documents():
    from train.loss import window_logits

    eos = 7
    window = torch.tensor([[5, 6, eos, 8, 9, 3, eos, 4], [eos, 1, 2, 3, 4, 5, 6, 8]])
    assert W.document_position_ids(window, eos).tolist() == [[0, 1, 0, 1, 2, 3, 0, 1], [0, 1, 2, 3, 4, 5, 6, 7]]
    torch.manual_seed(0)
    model = GPTScratchForCausalLM(
        GPTScratchConfig(vocab_size=10, context_length=8, emb_dim=16, n_heads=2, n_layers=2, drop_rate=0.0)
    ).eval()
    with torch.no_grad():
        logits = window_logits(model, window, eos)
        for start, end in ((0, 2), (2, 6), (6, 8)):  # each document alone, its positions counted from 0
            torch.testing.assert_close(
                logits[0, start:end], model(window[:1, start:end]).logits[0], rtol=1e-5, atol=1e-6
            )
        torch.testing.assert_close(logits[1], model(window[1:]).logits[0], rtol=1e-5, atol=1e-6)  # one document
        assert not torch.allclose(window_logits(model, window, None)[0, 2:6], logits[0, 2:6], atol=1e-3)


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


# ---------------------------------------------------------------------------------------------------------------------
# Data parallelism


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


# ---------------------------------------------------------------------------------------------------------------------
# Bad input: one line naming the input, exit status 2, nothing written


@pytest.fixture
def bad_files(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "binary.bin").write_bytes(b"text then \x89PNG\r\n\x1a\n\x00\x00")
    (tmp_path / "tiny.txt").write_text("Only a few words here.", encoding="utf-8")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("not a run", encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"--data": "missing.txt"}, "--data missing.txt: no such file or directory"),
        ({"--data": "empty.txt"}, "--data empty.txt: the file is empty"),
        ({"--data": "binary.bin"}, "binary.bin is not UTF-8 text: byte 0x89 at byte offset 10"),
        ({"--data": "tiny.txt"}, "the training split has"),
        ({"--context-length": "64"}, "--context-length 64 is longer than the model's context_length 32"),
        ({"--batch-size": "100000"}, "--batch-size 100000 (x 1 processes x 1 accumulation steps) is larger than"),
        ({"--preset": "gpt5"}, "--preset gpt5: unknown preset; choose one of: tiny, gpt2-124m"),
        ({"--engine": "deepspeed"}, "argument --engine: invalid choice: 'deepspeed'"),
        ({"--resume": None}, "--resume: {tmp}/out/checkpoints holds no complete checkpoint"),
        ({"--resume": "nowhere"}, "--resume nowhere: no such checkpoint directory"),
        ({"--output-dir": "used"}, "--output-dir {tmp}/used exists and is not empty; pass --overwrite"),
        ({"--vocab-size": "100"}, "--vocab-size 100: a byte-level BPE needs at least 257"),
        ({"--min-frequency": "0"}, "--min-frequency 0: must be a positive integer"),
        ({"--config": "colour=1"}, "--config colour: not a model field"),
        ({"--train-ratio": "1.5"}, "--train-ratio 1.5: must be between 0 and 1"),
        ({"--tokenizer": "no/such/dir"}, "--tokenizer no/such/dir could not be loaded"),
        ({"--dataset": "someone/no-such-dataset"}, "--dataset someone/no-such-dataset: could not load it"),
        ({"--max-steps": "0"}, "--max-steps 0: must be a positive integer"),
        ({"--streaming": None}, "--streaming streams a --dataset NAME; local files (--data) are tokenised once"),
        ({"--dataset": "someone/data", "--streaming": None}, "--streaming needs --max-steps N"),
        (
            {"--dataset": "someone/data", "--streaming": None, "--max-steps": "5", "--engine": "trainer"},
            "--engine trainer does not take --streaming: the Trainer resumes a stream by reading it again",
        ),
        (
            {"--dataset": "someone/no-such-dataset", "--streaming": None, "--max-steps": "5"},
            "--dataset someone/no-such-dataset --streaming: could not load it from the Hugging Face Hub",
        ),
        ({"--max-time": "10x"}, "--max-time 10x: expected a positive duration in seconds (90) or with a unit"),
        ({"--max-time": "0s"}, "--max-time 0s: expected a positive duration"),
        (
            {"--min-lr": "1e-5", "--lr-scheduler": "constant"},
            "--min-lr 1e-05: --lr-scheduler constant has no floor; use cosine or wsd",
        ),
        ({"--min-lr": "5e-3", "--lr-scheduler": "wsd"}, "--min-lr 0.005 must be below --lr 0.004"),
        ({"--optimizer": "sgd"}, "argument --optimizer: invalid choice: 'sgd'"),
        ({"--attention-dropout": "1"}, "--attention-dropout 1.0: must be in [0, 1)"),
        ({"--muon-momentum": "1"}, "--muon-momentum 1.0: must be in [0, 1)"),
        ({"--peak-flops": "0"}, "--peak-flops 0.0: must be greater than 0"),
    ],
)
def test_bad_input_is_one_line_and_exit_status_2(bad_files, corpus, cache, capsys, monkeypatch, change, expected):
    monkeypatch.chdir(bad_files)
    values = {"--data": str(corpus), "--output-dir": "out"}
    values.update(change)
    if "--dataset" in change:
        del values["--data"]
    argv = ["--cache-dir", str(cache), *TINY_MODEL, "--batch-size", "4"]
    for flag, value in values.items():
        argv += [flag] if value is None else [flag, value]
    assert train_cli(argv) == 2
    stderr = capsys.readouterr().err
    last_line = stderr.rstrip("\n").split("\n")[-1]  # earlier output can only be progress bars (\r-rewritten)
    assert stderr.count("error:") == 1 and last_line.startswith("gptscratch-train: error: ")
    assert expected.format(tmp=bad_files) in last_line
    assert not (bad_files / "out").exists()  # nothing written
