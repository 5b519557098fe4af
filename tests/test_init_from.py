"""gptscratch-train --init-from: a run that starts from a model's weights and tokenizer, every kind of source.

The step-0 evaluation of a run from a model is checked against independent figures: the final validation loss of
the run that wrote the model, and transformers' GPT2LMHeadModel (or its reference for OpenAI's arrays) scoring the
same validation windows.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys

import pytest
import torch
from cli_helpers import assert_one_line_error, run_main
from conftest import REPO_ROOT, write_tiny_bpe
from convert_helpers import gpt2_reference, random_openai_arrays, write_openai_checkpoint
from train_helpers import TINY_MODEL, read_metrics, train_cli, without_timing
from transformers import AutoTokenizer, GPT2LMHeadModel

import train.cli
from convert.gpt2_export import export_gpt2
from train.data import prepare_data

EVAL_WINDOWS = 8  # --eval-iter 2 batches of 4 windows, on one process


def run_args(corpus, cache, *more: str) -> list[str]:
    """The flags every run here shares: the corpus, the cache, and evaluations of EVAL_WINDOWS windows."""
    return ["--data", str(corpus), "--cache-dir", str(cache), "--batch-size", "4", "--eval-iter", "2", *more]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, corpus, cache):
    """The output of an 8-step run of the tiny model, the model every continued run here starts from."""
    output = tmp_path_factory.mktemp("first") / "run"
    args = run_args(
        corpus, cache, *TINY_MODEL, "--max-steps", "8", "--eval-freq", "4", "--early-stopping-patience", "0"
    )
    assert train_cli([*args, "--output-dir", str(output)]) == 0
    return output


def first_val_loss(output) -> float:
    return read_metrics(output)[0]["val_loss"]


def gpt2_val_loss(model: GPT2LMHeadModel, corpus, cache, tokenizer_dir) -> float:
    """transformers' GPT-2 scoring the validation windows a run evaluates: the first EVAL_WINDOWS of the split."""
    data = prepare_data(data=[str(corpus)], cache_dir=cache, tokenizer=str(tokenizer_dir), context_length=32)
    inputs, targets = (torch.stack(parts) for parts in zip(*(data.val[i] for i in range(EVAL_WINDOWS))))
    with torch.no_grad():
        logits = model(inputs).logits
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten()).item()


@pytest.mark.parametrize("engine", ["accelerate", "trainer"])
def test_a_run_from_a_runs_output_starts_at_its_final_validation_loss(
    tmp_path, corpus, cache, first_run, engine, capsys
):
    output = tmp_path / "continued"
    argv = run_args(corpus, cache, "--init-from", str(first_run), "--max-steps", "4", "--eval-freq", "4")
    argv += ["--engine", engine, "--dropout", "0.1", "--output-dir", str(output)]
    assert train_cli(argv) == 0
    assert first_val_loss(output) == pytest.approx(read_metrics(first_run)[-1]["val_loss"], abs=1e-3)
    assert (
        f"model       from {first_run} (its weights and tokenizer): 2 layers, 2 heads, 32 dims"
        in capsys.readouterr().out
    )
    summary = json.loads((output / "training_summary.json").read_text())
    assert summary["init_from"] == str(first_run) and summary["preset"] is None
    assert f"| Started from | {first_run} |" in (output / "README.md").read_text()
    config = json.loads((output / "config.json").read_text())
    assert config["drop_rate"] == 0.1  # the run's dropout, not the source's 0
    assert (output / "tokenizer.json").read_text() == (first_run / "tokenizer.json").read_text()


def test_its_plain_gpt2_export_starts_where_the_run_ended_and_where_gpt2_scores_it(tmp_path, corpus, cache, first_run):
    """A transformers GPT-2 directory: the run's export, scored at step 0 as GPT2LMHeadModel scores it."""
    exported = export_gpt2(first_run, tmp_path / "gpt2")
    output = tmp_path / "continued"
    argv = run_args(corpus, cache, "--init-from", str(exported), "--max-steps", "1", "--eval-freq", "1")
    assert train_cli([*argv, "--output-dir", str(output)]) == 0
    expected = gpt2_val_loss(GPT2LMHeadModel.from_pretrained(exported).eval(), corpus, cache, exported)
    assert first_val_loss(output) == pytest.approx(expected, abs=1e-4)
    assert first_val_loss(output) == pytest.approx(read_metrics(first_run)[-1]["val_loss"], abs=1e-3)


def recipe_flags() -> list[str]:
    """docs/fine-tuning.md's recipe (its `gptscratch-train --init-from openai-community/gpt2` command) without its
    model, data and output, so that the test runs the settings the guide gives."""
    guide = (REPO_ROOT / "docs" / "fine-tuning.md").read_text()
    command = re.search(r"^gptscratch-train --init-from openai-community/gpt2 (?:.*\\\n)*.*$", guide, re.M).group(0)
    words = shlex.split(command.replace("\\\n", " "))[1:]
    pairs = list(zip(words[::2], words[1::2], strict=True))
    return [
        word for flag, value in pairs if flag not in ("--init-from", "--data", "--output-dir") for word in (flag, value)
    ]


def test_the_fine_tuning_recipe_continues_a_small_gpt2_on_new_text(tmp_path, cache, first_run):
    """The guide's recipe on a GPT-2 of the test's own (the first run's plain export) and text it has not seen: the
    run starts where GPT2LMHeadModel scores the new text, lowers that loss, stops after the recipe's two epochs, and
    its summary and model card name the source."""
    from pydoc_data.topics import topics

    new_text = tmp_path / "new.txt"
    new_text.write_text("\n".join(topics[key] for key in sorted(topics)[12:40])[:30_000], encoding="utf-8")
    exported = export_gpt2(first_run, tmp_path / "gpt2")
    output = tmp_path / "continued"
    argv = ["--init-from", str(exported), "--data", str(new_text), "--cache-dir", str(cache), *recipe_flags()]
    assert "--lr" in argv and "--epochs" in argv
    assert train_cli([*argv, "--output-dir", str(output)]) == 0
    val_losses = [record["val_loss"] for record in read_metrics(output) if record.get("val_loss") is not None]
    summary = json.loads((output / "training_summary.json").read_text())
    assert val_losses[0] == pytest.approx(summary["initial_val_loss"])
    assert summary["val_loss"] == min(val_losses) < val_losses[0]
    assert summary["epochs"] == pytest.approx(2, abs=0.2) and summary["init_from"] == str(exported)
    assert f"| Started from | {exported} |" in (output / "README.md").read_text()


def test_openais_checkpoint_directory_is_a_source(tmp_path, corpus, cache):
    pytest.importorskip("tensorflow")
    bpe = write_tiny_bpe(tmp_path / "bpe")
    hparams = dict(
        n_vocab=len(json.loads((bpe / "encoder.json").read_text())), n_ctx=32, n_embd=32, n_head=4, n_layer=2
    )
    arrays = random_openai_arrays(hparams, scale=0.1)
    checkpoint = write_openai_checkpoint(tmp_path / "124M", hparams, arrays, bpe)
    output = tmp_path / "continued"
    argv = run_args(corpus, cache, "--init-from", str(checkpoint), "--max-steps", "1", "--eval-freq", "1")
    assert train_cli([*argv, "--output-dir", str(output)]) == 0
    expected = gpt2_val_loss(gpt2_reference(hparams, arrays), corpus, cache, checkpoint)
    assert first_val_loss(output) == pytest.approx(expected, abs=1e-4)
    assert json.loads((output / "config.json").read_text())["n_layers"] == 2


@pytest.mark.slow
def test_a_hub_name_comes_from_the_local_cache_offline(tmp_path, corpus, cache, first_run):
    """`someone/tiny-gpt2` laid out in a Hugging Face cache as the Hub's client keeps a download; the Hub itself is
    unreachable (HF_ENDPOINT points nowhere). A name the cache lacks is one line."""
    exported = export_gpt2(first_run, tmp_path / "gpt2")
    snapshot = tmp_path / "hf-home" / "hub" / "models--someone--tiny-gpt2" / "snapshots" / ("0" * 40)
    shutil.copytree(exported, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    env = {
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_ENDPOINT": "https://hub.invalid",
        "PYTHONPATH": str(REPO_ROOT),
        "PATH": "/usr/bin:/bin",
    }

    def train_from(name: str, output: str) -> subprocess.CompletedProcess[str]:
        argv = run_args(corpus, cache, "--init-from", name, "--max-steps", "1", "--eval-freq", "1")
        command = [sys.executable, "-m", "train", *argv, "--output-dir", str(tmp_path / output)]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)

    result = train_from("someone/tiny-gpt2", "from-hub")
    assert result.returncode == 0, result.stderr
    assert first_val_loss(tmp_path / "from-hub") == pytest.approx(read_metrics(first_run)[-1]["val_loss"], abs=1e-3)
    missing = train_from("someone/not-cached", "missing")
    assert_one_line_error(missing, "gptscratch-train", "--init-from someone/not-cached", "local cache")
    assert not (tmp_path / "missing").exists()


def test_a_resumed_run_from_a_model_reproduces_the_uninterrupted_one(tmp_path, corpus, cache, first_run):
    output = tmp_path / "continued"
    argv = run_args(corpus, cache, "--init-from", str(first_run), "--max-steps", "6", "--eval-freq", "2")
    argv += ["--save-steps", "3", "--output-dir", str(output)]
    assert train_cli(argv) == 0
    uninterrupted, weights = read_metrics(output), (output / "model.safetensors").read_bytes()
    shutil.rmtree(output / "checkpoints" / "checkpoint-6")
    assert train_cli([*argv, "--resume"]) == 0
    assert without_timing(read_metrics(output)) == without_timing(uninterrupted)
    assert (output / "model.safetensors").read_bytes() == weights


@pytest.mark.parametrize(
    "flags, names",
    [
        (["--preset", "gpt2-124m"], ["--preset gpt2-124m", "n_layers 2"]),
        (["--n-layers", "3"], ["--n-layers 3", "n_layers 2"]),
        (["--config", "layer_norm_eps=1e-6"], ["--config layer_norm_eps=1e-06"]),
        (["--context-length", "64"], ["--context-length 64", "context_length 32"]),
        (["--vocab-size", "500"], ["--vocab-size 500", "the model's tokenizer ("]),
        (["--min-frequency", "3"], ["--min-frequency 3"]),
    ],
)
def test_options_that_contradict_the_model_are_refused_naming_both(
    tmp_path, corpus, cache, first_run, flags, names, capsys
):
    argv = run_args(corpus, cache, "--init-from", first_run, *flags, "--output-dir", tmp_path / "out")
    result = run_main(train.cli.main, argv, capsys)
    assert_one_line_error(result, "gptscratch-train", f"--init-from {first_run}", *names)
    assert not (tmp_path / "out").exists()


def test_options_that_repeat_the_model_pass(tmp_path, corpus, cache, first_run, capsys):
    """The model's own shape, tokenizer and vocabulary, and shorter windows, are no contradiction."""
    vocabulary = json.loads((first_run / "config.json").read_text())["vocab_size"]
    argv = run_args(corpus, cache, "--init-from", first_run, "--n-layers", "2", "--emb-dim", "32", "--context-length")
    argv += [
        "16",
        "--tokenizer",
        first_run,
        "--vocab-size",
        str(vocabulary),
        "--dry-run",
        "--output-dir",
        tmp_path / "out",
    ]
    result = run_main(train.cli.main, argv, capsys)
    assert result.returncode == 0, result.stderr
    assert "context 16, stride 16" in result.stdout


def test_a_source_that_is_no_model_is_one_line_and_nothing_is_written(tmp_path, corpus, cache, first_run, capsys):
    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({"model_type": "llama"}))
    damaged = tmp_path / "damaged"
    shutil.copytree(first_run, damaged)
    config = json.loads((damaged / "config.json").read_text())
    (damaged / "config.json").write_text(json.dumps({**config, "emb_dim": 64}))
    cases = {
        tmp_path / "missing": "is neither a model directory nor a hub name",
        corpus.parent: "is not a model directory",
        llama: "holds a 'llama' model",
        damaged: "does not match",
        first_run / "metrics.jsonl": "is neither a model directory nor a hub name",
    }
    for source, message in cases.items():
        argv = run_args(corpus, cache, "--init-from", source, "--output-dir", tmp_path / "out")
        assert_one_line_error(
            run_main(train.cli.main, argv, capsys), "gptscratch-train", f"--init-from {source}", message
        )
    assert not (tmp_path / "out").exists()


def test_a_tokenizer_larger_than_the_models_vocabulary_is_refused(tmp_path, corpus, cache, first_run, capsys):
    source = shutil.copytree(first_run, tmp_path / "source")
    tokenizer = AutoTokenizer.from_pretrained(source)
    rows = len(tokenizer)  # the fitted tokenizer's size is the model's vocabulary
    tokenizer.add_tokens([f"<extra_{i}>" for i in range(20)])
    tokenizer.save_pretrained(source)
    argv = run_args(corpus, cache, "--init-from", source, "--output-dir", tmp_path / "out")
    result = run_main(train.cli.main, argv, capsys)
    assert_one_line_error(result, "gptscratch-train", f"--init-from {source}", f"{rows + 20} tokens", f"{rows} rows")


def test_the_output_directory_may_not_be_the_source(tmp_path, corpus, cache, first_run, capsys):
    before = sorted(path.name for path in first_run.iterdir())
    for output in (first_run, first_run / "continued"):
        argv = run_args(corpus, cache, "--init-from", first_run, "--overwrite", "--output-dir", output)
        assert_one_line_error(run_main(train.cli.main, argv, capsys), "gptscratch-train", "--init-from")
    assert sorted(path.name for path in first_run.iterdir()) == before
