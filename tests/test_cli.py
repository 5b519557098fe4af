"""train.cli: gptscratch-train's command line, its config files and --config values, and its one-line refusals."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import TINY_MODEL, common, train_cli


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
    # The file's AdamW sets the rate tuned for it; Muon's default is twice as high (test_optimization.py).
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
