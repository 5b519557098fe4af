"""use.push: gptscratch-push to a local hub, a complete versioned repository with its model card, and its refusals."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
import torch
from cli_helpers import assert_one_line_error, file_tree, run_main
from conftest import PROMPT, TEXT, assert_same_logits, byte_level_bpe, run_without_project, tiny_model_for
from transformers import AutoModelForCausalLM

import use.push
from common.errors import InputError
from common.model_dir import load_model_directory, save_model_directory
from use.generate import generate_text
from use.push import push_to_local_hub, repo_path


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory, tokenizer) -> Path:
    """A trained model directory as the trainer leaves it: model files plus summary, metrics, plots, checkpoints."""
    directory = save_model_directory(
        tiny_model_for(tokenizer, seed=1), tokenizer, tmp_path_factory.mktemp("models") / "trained"
    )
    summary = {
        "source": "the-verdict.txt",
        "tokenizer": "gpt2",
        "steps": 1234,
        "epochs": 3,
        "tokens_seen": 567890,
        "train_loss": 3.21012,
        "val_loss": 4.56034,
        "train_perplexity": 24.7812,
        "val_perplexity": 95.6243,
    }
    (directory / "training_summary.json").write_text(json.dumps(summary), encoding="utf-8")
    (directory / "metrics.jsonl").write_text('{"step": 1234, "val_loss": 4.56034}\n', encoding="utf-8")
    (directory / "loss_plot.png").write_bytes(b"\x89PNG\r\n\x1a\nplot")
    (directory / "loss_plot.pdf").write_bytes(b"%PDF-1.4 plot")
    (directory / "checkpoints" / "step-1234").mkdir(parents=True)
    (directory / "checkpoints" / "step-1234" / "optimizer.bin").write_bytes(b"state")
    return directory


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()


def test_push_writes_a_complete_repository_with_the_training_record(trained_dir, tmp_path):
    before = file_tree(trained_dir)
    repo = push_to_local_hub(trained_dir, tmp_path / "hub", "alice/tiny-gpt")
    assert repo == tmp_path / "hub" / "alice" / "tiny-gpt"
    files = {p.name for p in repo.iterdir()}
    assert {
        "model.safetensors",
        "config.json",
        "generation_config.json",
        "modeling_gptscratch.py",
        "tokenizer.json",
        "tokenizer_config.json",
        "README.md",
        "training_summary.json",
        "metrics.jsonl",
        "loss_plot.png",
        "loss_plot.pdf",
        ".git",
    } <= files
    assert "checkpoints" not in files
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(repo.stat().st_mode) == 0o777 & ~umask  # readable as any folder, not mkdtemp's 0700
    assert stat.S_IMODE((repo / "model.safetensors").stat().st_mode) == 0o666 & ~umask
    assert (repo / "loss_plot.png").read_bytes() == (trained_dir / "loss_plot.png").read_bytes()
    config = json.loads((repo / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_gptscratch.GPTScratchForCausalLM"
    card = (repo / "README.md").read_text()
    metadata = card.split("---\n")[1]
    for line in ("library_name: transformers", "pipeline_tag: text-generation", "license: apache-2.0", "- gptscratch"):
        assert line in metadata.splitlines()
    for fact in (
        "the-verdict.txt",
        "| Steps | 1,234 |",
        "| Epochs | 3 |",
        "| Tokens seen | 567,890 |",
        "| Final training loss | 3.2101 |",
        "| Final validation loss | 4.5603 |",
        "| Final training perplexity | 24.78 |",
        "| Final validation perplexity | 95.62 |",
        "](loss_plot.png)",
        "trust_remote_code=True",
        "`git show <commit>:config.json`",
    ):
        assert fact in card
    assert "worktree" not in card  # a worktree would put a second checkout inside the hub
    assert git(repo, "rev-list", "--count", "HEAD") == "1"
    assert git(repo, "log", "--format=%s") == "Push trained (gptscratch)"  # the folder's name, not its path
    assert git(repo, "status", "--porcelain") == ""
    assert file_tree(trained_dir) == before
    assert [p.name for p in tmp_path.iterdir()] == ["hub"]


def test_card_of_a_converted_directory_says_what_is_known(model_dir, tmp_path):
    repo = push_to_local_hub(model_dir, tmp_path / "hub", "openai/gpt2-tiny", license="mit")
    card = (repo / "README.md").read_text()
    assert "license: mit" in card
    assert "No training record" in card and "not known" in card
    assert "| Layers / heads / embedding size | 2 / 4 / 32 |" in card
    assert "loss_plot" not in card and "Tokens seen" not in card
    assert not (repo / "training_summary.json").exists()


def test_push_again_replaces_atomically_and_keeps_earlier_versions(model_dir, trained_dir, tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    repo = push_to_local_hub(model_dir, hub, "alice/tiny-gpt")
    first_weights = (repo / "model.safetensors").read_bytes()
    push_to_local_hub(trained_dir, hub, "alice/tiny-gpt")
    assert (repo / "model.safetensors").read_bytes() == (trained_dir / "model.safetensors").read_bytes()
    assert (repo / "model.safetensors").read_bytes() != first_weights
    assert git(repo, "rev-list", "--count", "HEAD") == "2"
    first = subprocess.run(["git", "show", "HEAD~1:model.safetensors"], cwd=repo, capture_output=True, check=True)
    assert first.stdout == first_weights
    assert git(repo, "show", "--name-only", "--format=", "HEAD~1").count("training_summary.json") == 0

    # A push that fails half-way leaves the last good version in place and no staging folder behind.
    head, tree = git(repo, "rev-parse", "HEAD"), file_tree(repo)
    with monkeypatch.context() as patch:
        patch.setattr("use.push.model_card", lambda *args, **kwargs: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            push_to_local_hub(model_dir, hub, "alice/tiny-gpt")
    assert git(repo, "rev-parse", "HEAD") == head and file_tree(repo) == tree
    assert sorted(p.name for p in (hub / "alice").iterdir()) == [".tiny-gpt.lock", "tiny-gpt"]


def test_a_push_links_the_history_and_recovers_from_a_killed_one(model_dir, trained_dir, tmp_path):
    hub = tmp_path / "hub"
    repo = push_to_local_hub(model_dir, hub, "alice/tiny-gpt")
    blob = git(repo, "rev-parse", "HEAD:model.safetensors")
    first_weights = repo / ".git" / "objects" / blob[:2] / blob[2:]
    inode = first_weights.stat().st_ino
    # A push killed between its two renames: the repository moved aside, the next version half-staged.
    (hub / "alice" / ".tiny-gpt.old-killed").mkdir()
    os.replace(repo, hub / "alice" / ".tiny-gpt.old-killed" / "tiny-gpt")
    (hub / "alice" / ".tiny-gpt.tmp-killed").mkdir()
    (hub / "alice" / ".tiny-gpt.tmp-killed" / "model.safetensors").write_bytes(b"half")

    push_to_local_hub(trained_dir, hub, "alice/tiny-gpt")
    assert sorted(p.name for p in (hub / "alice").iterdir()) == [".tiny-gpt.lock", "tiny-gpt"]
    assert git(repo, "rev-list", "--count", "HEAD") == "2"  # the history was put back, then pushed onto
    assert git(repo, "log", "--format=%s") == "Push trained (gptscratch)\nPush converted (gptscratch)"
    # The first version's weights are the same file, linked into the new repository rather than copied.
    assert first_weights.stat().st_ino == inode


@pytest.mark.slow
def test_pushed_repositories_load_without_the_project(model_dir, tokenizer, tmp_path, capsys):
    hub = tmp_path / "hub"
    repo = push_to_local_hub(model_dir, hub, "alice/tiny-gpt")
    # The plain GPT-2 one through the command: --format reaches the Python API.
    pushed = run_main(
        use.push.main,
        ["--model", model_dir, "--hub-dir", hub, "--repo-id", "alice/tiny-gpt2", "--format", "gpt2"],
        capsys,
    )
    gpt2_repo = hub / "alice" / "tiny-gpt2"
    assert pushed.returncode == 0 and f"pushed alice/tiny-gpt2 to {gpt2_repo}" in pushed.stdout, pushed.stderr
    code = f"""
import json, torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, pipeline
repo, gpt2_repo, prompt = {str(repo)!r}, {str(gpt2_repo)!r}, {PROMPT!r}
config = AutoConfig.from_pretrained(repo, trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained(repo)
model = AutoModelForCausalLM.from_pretrained(repo, trust_remote_code=True)
ids = tokenizer(prompt, return_tensors="pt").input_ids
generated = pipeline("text-generation", model=repo, trust_remote_code=True)(prompt, max_new_tokens=5, do_sample=False)
gpt2 = AutoModelForCausalLM.from_pretrained(gpt2_repo)  # no remote code
with torch.no_grad():
    logits, gpt2_logits = model(ids).logits, gpt2(ids).logits
print(json.dumps({{
    "config": type(config).__name__, "model": type(model).__name__, "gpt2": type(gpt2).__name__,
    "ids": ids[0].tolist(), "logits": logits[0, -1].tolist(), "gpt2_logits": gpt2_logits[0, -1].tolist(),
    "generated": generated[0]["generated_text"],
}}))
"""
    result = run_without_project(code, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert (loaded["config"], loaded["model"], loaded["gpt2"]) == (
        "GPTScratchConfig",
        "GPTScratchForCausalLM",
        "GPT2LMHeadModel",
    )
    model, _ = load_model_directory(model_dir)
    ids = torch.tensor([loaded["ids"]])
    assert loaded["ids"] == tokenizer(PROMPT)["input_ids"]
    with torch.no_grad():
        expected = model(ids).logits[0, -1]
    assert_same_logits(torch.tensor(loaded["logits"]), expected)
    assert_same_logits(torch.tensor(loaded["gpt2_logits"]), expected)
    assert loaded["generated"] == generate_text(model, PROMPT, 5, tokenizer=tokenizer)


@pytest.mark.parametrize("repo_id", ["a/b/c", "a", "a/", "./b", "a/b..c", "a/-b", "a\\b/c"])
def test_repo_ids_that_are_not_two_plain_names_are_refused(repo_id, tmp_path):
    with pytest.raises(InputError, match="is not NAMESPACE/NAME"):
        repo_path(tmp_path, repo_id)


def test_an_unwritable_hub_directory_is_refused(model_dir, tmp_path, monkeypatch, capfd):
    # os.access, not chmod: the tests may run as root, whom permissions do not stop.
    monkeypatch.setattr("use.push.os.access", lambda path, mode: False)
    argv = ["--model", model_dir, "--hub-dir", tmp_path / "hub", "--repo-id", "alice/tiny-gpt"]
    assert_one_line_error(
        run_main(use.push.main, argv, capfd),
        use.push.PROG,
        f"hub directory {tmp_path / 'hub'} is not writable",
        "choose a writable --hub-dir",
    )
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def fitted_dir(tmp_path_factory) -> Path:
    """A trained-looking model directory with a fitted tokenizer of 320 tokens (GPT-2's would slow each GGUF read)."""
    tokenizer = byte_level_bpe(TEXT, vocab_size=320)
    directory = save_model_directory(tiny_model_for(tokenizer), tokenizer, tmp_path_factory.mktemp("fitted") / "run")
    (directory / "training_summary.json").write_text(json.dumps({"steps": 7}), encoding="utf-8")
    return directory


def test_push_as_gguf_publishes_the_file_and_a_card_saying_how_to_run_it(fitted_dir, tmp_path):
    repo = push_to_local_hub(fitted_dir, tmp_path / "hub", "alice/tiny-gguf", format="gguf")
    assert {path.name for path in repo.iterdir()} == {".git", "model.gguf", "README.md", "training_summary.json"}
    card = (repo / "README.md").read_text()
    assert "library_name: gguf" in card and "- gguf" in card and "llama-cli -m model.gguf" in card
    assert "| Architecture | GPT-2 (GGUF architecture `gpt2`) |" in card and "| Steps | 7 |" in card
    assert git(repo, "log", "--format=%s") == "Push run (gguf)"
    model, tokenizer = load_model_directory(fitted_dir)
    loaded = AutoModelForCausalLM.from_pretrained(repo, gguf_file="model.gguf")
    ids = torch.tensor([tokenizer(PROMPT)["input_ids"]])
    with torch.no_grad():
        assert_same_logits(loaded(ids).logits, model(ids).logits)


@pytest.mark.slow
def test_push_as_onnx_publishes_what_onnx_runtime_needs_and_the_cards_code_runs(fitted_dir, tmp_path, monkeypatch):
    repo = push_to_local_hub(fitted_dir, tmp_path / "hub", "alice/tiny-onnx", format="onnx")
    files = {path.name for path in repo.iterdir()}
    assert {"model.onnx", "tokenizer.json", "README.md", "training_summary.json"} <= files
    assert "model.safetensors" not in files and "config.json" not in files
    card = (repo / "README.md").read_text()
    assert "library_name: onnx" in card and "- onnx" in card
    code = card.split("```python\n")[1].split("```")[0]
    monkeypatch.chdir(repo)
    namespace: dict = {}
    exec(code, namespace)  # the card's example, as a reader would paste it
    model, tokenizer = load_model_directory(fitted_dir)
    with torch.no_grad():
        expected = model(torch.tensor([tokenizer(PROMPT)["input_ids"]])).logits
    torch.testing.assert_close(torch.from_numpy(namespace["logits"]), expected, rtol=0, atol=1e-4)
