"""The bad-input contract, for classes of input rather than instances: generated option values, configuration files,
damaged model directories and corpus bytes, each given to the commands that take them.

For every example, a command either works (exit 0, its promised output) or refuses: exit status 2, one line on stderr
naming the input, no input changed, nothing half-written. Hypothesis draws the examples (`tests/conftest.py` sets the
profile: a bounded, repeatable number in `make test`, many more with HYPOTHESIS_PROFILE=long).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import yaml
from cli_helpers import file_listing, run_main
from conftest import PROMPT, TEXT, byte_level_bpe, tiny_model_for
from hypothesis import given
from hypothesis import strategies as st

import convert.gpt2_export
import train.cli
import train.prepare
import use.evaluate
import use.generate
import use.push
from common.model_dir import save_model_directory

TEXTS = st.sampled_from(["", "abc", "1e-3", "nan", "inf", "-1", "0", "10m", "1,000", "0x10", " 7 ", "true", "é"])
NUMBERS = st.one_of(st.integers(-(10**7), 10**7), st.floats(allow_nan=True, allow_infinity=True), TEXTS)
# The flags whose values the command reads as numbers or names, with the value kinds that try them.
TRAIN_FLAGS = {
    "lr": NUMBERS,
    "min-lr": NUMBERS,
    "weight-decay": NUMBERS,
    "warmup-steps": NUMBERS,
    "batch-size": NUMBERS,
    "max-steps": NUMBERS,
    "eval-iter": NUMBERS,
    "temperature": NUMBERS,
    "top-k": NUMBERS,
    "max-new-tokens": NUMBERS,
    "dropout": NUMBERS,
    "train-ratio": NUMBERS,
    "vocab-size": NUMBERS,
    "context-length": NUMBERS,
    "stride": NUMBERS,
    "muon-momentum": NUMBERS,
    "decay-ratio": NUMBERS,
    "max-grad-norm": NUMBERS,
    "peak-flops": NUMBERS,
    "skip-loss-zscore": NUMBERS,
    "spike-window": NUMBERS,
    "max-time": NUMBERS,
    "lr-scheduler": st.one_of(st.sampled_from(["cosine", "wsd", "linear", "constant"]), TEXTS),
    "preset": st.one_of(st.sampled_from(["tiny", "gpt2-124m"]), TEXTS),
}
# A configuration file's values: any JSON value, of any type, for a real option name or a made-up one.
JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(10**6), 10**6), st.floats(allow_nan=True), TEXTS),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(["n_layers", "x"]), inner)),
    max_leaves=4,
)
FILE_KEYS = st.sampled_from(
    ["lr", "batch_size", "dry_run", "dedup", "qkv_bias", "data", "config", "max_time", "preset", "top_k", "colour"]
)


def workspace_listing(root: Path) -> dict:
    """Every file of the workspace but the token cache, where a fitted tokenizer or token files may rightly appear."""
    return {path: stamp for path, stamp in file_listing(root).items() if not path.startswith("cache")}


def no_half_written(root: Path) -> None:
    """No temporary sibling of an atomic write is left anywhere under `root`."""
    leftovers = [path for path in root.rglob("*") if ".tmp-" in path.name or ".model-tmp-" in path.name]
    assert not leftovers, leftovers


def assert_contract(result, prog: str, names: list[str], output: Path | None = None) -> None:
    """Exit 0, or exit 2 with one line `PROG: error: ...` naming one of `names`; never anything else."""
    assert result.returncode in (0, 2), result.stderr[-2000:]
    if result.returncode == 2:
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), result.stderr[-2000:]
        assert any(name in lines[0] for name in names), (names, lines[0])
        if output is not None:
            assert not output.exists(), f"a refused command left {output}"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, corpus) -> Path:
    root = tmp_path_factory.mktemp("workspace")
    shutil.copy(corpus, root / "corpus.txt")
    (root / "cache").mkdir()
    return root


@given(
    values=st.dictionaries(st.sampled_from(sorted(TRAIN_FLAGS)), st.none(), min_size=1, max_size=3).flatmap(
        lambda chosen: st.fixed_dictionaries({name: TRAIN_FLAGS[name] for name in chosen})
    )
)
def test_any_option_values_are_a_plan_or_one_line_naming_a_flag(workspace, capfd, values):
    before = workspace_listing(workspace)
    flags = [f"--{name}={value}" for name, value in values.items()]
    argv = ["--data", workspace / "corpus.txt", "--cache-dir", workspace / "cache", "--output-dir", workspace / "out"]
    result = run_main(train.cli.main, [*argv, "--vocab-size=300", *flags, "--dry-run"], capfd)
    assert_contract(result, "gptscratch-train", [f"--{name}" for name in values] + ["--output-dir", "--data"])
    if result.returncode == 0:
        assert "Plan" in result.stdout and "stability" in result.stdout
    assert workspace_listing(workspace) == before  # a dry run, or a refusal, writes nothing
    no_half_written(workspace)


@given(
    values=st.dictionaries(FILE_KEYS, JSON_VALUES, min_size=1, max_size=3), suffix=st.sampled_from([".json", ".yaml"])
)
def test_any_configuration_file_is_a_plan_or_one_line_naming_the_file(
    workspace, tmp_path_factory, capfd, values, suffix
):
    folder = tmp_path_factory.mktemp("config")
    config_file = folder / f"run{suffix}"
    text = json.dumps(values) if suffix == ".json" else yaml.safe_dump(values)
    config_file.write_text(text, encoding="utf-8")
    before = workspace_listing(workspace)
    argv = ["--data", workspace / "corpus.txt", "--cache-dir", workspace / "cache", "--output-dir", workspace / "out"]
    result = run_main(train.cli.main, ["--config-file", config_file, *argv, "--vocab-size=300", "--dry-run"], capfd)
    assert_contract(result, "gptscratch-train", ["--config-file", *(f"--{key}".replace("_", "-") for key in values)])
    assert workspace_listing(workspace) == before
    assert config_file.read_text(encoding="utf-8") == text  # the input is read, never changed


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    tokenizer = byte_level_bpe(TEXT, vocab_size=300)
    return save_model_directory(tiny_model_for(tokenizer), tokenizer, tmp_path_factory.mktemp("models") / "model")


def damage_strategy(model_dir: Path):
    """A way to damage a copy of the model directory: a file deleted, cut short, overwritten with other bytes, or a
    config.json field given another value."""
    names = sorted(path.name for path in model_dir.iterdir())
    return st.one_of(
        st.tuples(st.just("delete"), st.sampled_from(names), st.just(None)),
        st.tuples(st.just("truncate"), st.sampled_from(names), st.floats(0, 1)),
        st.tuples(st.just("garbage"), st.sampled_from(names), st.binary(max_size=64)),
        st.tuples(
            st.just("config"),
            st.sampled_from(
                [
                    "vocab_size",
                    "n_layers",
                    "emb_dim",
                    "n_heads",
                    "context_length",
                    "model_type",
                    "tie_word_embeddings",
                    "layer_norm_eps",
                    "drop_rate",
                    "qkv_bias",
                ]
            ),
            JSON_VALUES,
        ),
    )


def damage(directory: Path, kind: str, name: str, detail) -> None:
    path = directory / name if kind != "config" else directory / "config.json"
    if kind == "delete":
        path.unlink()
    elif kind == "truncate":
        path.write_bytes(path.read_bytes()[: math.floor(detail * path.stat().st_size)])
    elif kind == "garbage":
        path.write_bytes(detail)
    else:
        values = json.loads(path.read_text(encoding="utf-8"))
        values[name] = detail
        path.write_text(json.dumps(values), encoding="utf-8")


COMMANDS = {
    "generate": (use.generate.main, use.generate.PROG),
    "eval": (use.evaluate.main, use.evaluate.PROG),
    "export": (convert.gpt2_export.main, convert.gpt2_export.PROG),
    "push": (use.push.main, use.push.PROG),
}


@given(data=st.data(), command=st.sampled_from(sorted(COMMANDS)))
def test_a_damaged_model_directory_works_or_is_one_line_naming_it(model_dir, tmp_path_factory, capfd, data, command):
    """Whatever is damaged, every command that reads a model directory refuses it in one line naming it (or, where
    the damage does not matter to it, works), changes nothing in it, and leaves no half-written output."""
    root = tmp_path_factory.mktemp("damaged")
    damaged = root / "model"
    shutil.copytree(model_dir, damaged)
    kind, name, detail = data.draw(damage_strategy(model_dir))
    damage(damaged, kind, name, detail)
    text = root / "text.txt"
    text.write_text(TEXT, encoding="utf-8")
    output = root / "output"
    argv = {
        "generate": ["--model", damaged, "--prompt", PROMPT, "--max-new-tokens", "3"],
        "eval": ["--model", damaged, "--data", text],
        "export": ["--model", damaged, "--output-dir", output],
        "push": ["--model", damaged, "--hub-dir", output, "--repo-id", "alice/tiny"],
    }[command]
    before = file_listing(damaged)
    main, prog = COMMANDS[command]
    result = run_main(main, argv, capfd)
    assert_contract(result, prog, [str(damaged), "the prompt"])
    assert file_listing(damaged) == before
    if command in ("export", "push") and result.returncode == 2:
        assert not output.exists() or not any((output / "alice").glob("tiny*")), list(output.rglob("*"))
    no_half_written(root)


@given(
    contents=st.lists(st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode)), min_size=1, max_size=3)
)
def test_any_corpus_bytes_are_prepared_or_one_line_naming_the_file(tmp_path_factory, capfd, contents):
    """Files of any bytes (text, not UTF-8, NUL bytes, empty) are tokenised or refused naming one of them; the
    cache holds complete entries only."""
    root = tmp_path_factory.mktemp("corpus-bytes")
    files = []
    for index, content in enumerate(contents):
        files.append(root / f"part-{index}.txt")
        files[-1].write_bytes(content)
    before = file_listing(root)
    cache = tmp_path_factory.mktemp("cache")
    result = run_main(train.prepare.main, ["--data", *files, "--vocab-size", "300", "--cache-dir", cache], capfd)
    assert_contract(result, train.prepare.PROG, [str(root)])
    if result.returncode == 0:
        assert "token files" in result.stdout
    assert file_listing(root) == before
    no_half_written(cache)
