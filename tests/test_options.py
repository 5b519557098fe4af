"""train.options and train.option_values: the groups, each field declared once, values typed from flags and files,
and errors that name the field as its caller knows it (its name from Python, its flag from the command line)."""

from __future__ import annotations

import dataclasses
import json

import pytest
from cli_helpers import assert_one_line_error, run_main

from common.errors import InputError, field, spelling
from train import cli
from train.option_values import coerce, fields_from_file
from train.options import (
    FIELDS,
    GROUPS,
    DataOptions,
    ModelOptions,
    OptimisationOptions,
    TrainOptions,
    resume_differences,
)


def test_every_field_lives_in_one_group_and_from_fields_puts_it_there():
    names = [spec.name for options, _ in GROUPS.values() for spec in dataclasses.fields(options)]
    assert len(names) == len(set(names)) == len(FIELDS)  # a name is one field, in one group
    options = TrainOptions.from_fields(output_dir="out", batch_size=8, preset="gpt2-124m", data=["a.txt"], lr=1e-3)
    assert options.run.output_dir == "out" and options.optimisation.batch_size == 8
    assert options.model.preset == "gpt2-124m" and options.data.data == ["a.txt"]
    assert options.fields()["lr"] == 1e-3
    assert TrainOptions.from_fields(**options.fields()) == options  # run.json's flat form comes back whole


def test_the_learning_rate_defaults_to_the_optimizers_own():
    assert OptimisationOptions().lr == 4e-3 and OptimisationOptions(optimizer="adamw").lr == 1.5e-3
    assert OptimisationOptions(optimizer="adamw", lr=1e-2).lr == 1e-2


def test_an_unknown_field_is_refused_with_the_nearest_name():
    with pytest.raises(InputError, match=r"batchsize is not an option \(did you mean batch_size\?\)"):
        TrainOptions.from_fields(output_dir="out", batchsize=8)


def test_errors_name_the_field_from_python_and_the_flag_from_the_command_line(tmp_path, capfd):
    """The library speaks in fields; only a command spells them as flags (common.errors.spelling)."""
    options = TrainOptions.from_fields(output_dir=str(tmp_path / "out"), warmup_steps=-1)
    with pytest.raises(InputError, match=r"^warmup_steps -1: must not be negative$"):
        options.check()
    with spelling(lambda name: "--" + name.replace("_", "-")):
        assert field("max_steps") == "--max-steps"
    assert field("max_steps") == "max_steps"
    result = run_main(cli.main, ["--output-dir", str(tmp_path / "out"), "--warmup-steps", "-1"], capfd)
    assert_one_line_error(result, "gptscratch-train", "--warmup-steps -1: must not be negative")


@pytest.mark.parametrize("name", ["lr", "min_lr", "weight_decay", "max_grad_norm", "dropout", "peak_flops"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_non_finite_number_is_refused_by_name(name, value, tmp_path, capfd):
    options = TrainOptions.from_fields(output_dir="out", **{name: float(value)})
    with pytest.raises(InputError, match=rf"^{name} {value}: must be a finite number$"):
        options.check()
    flag = "--" + name.replace("_", "-")
    result = run_main(cli.main, ["--output-dir", str(tmp_path / "out"), f"{flag}={value}"], capfd)
    assert_one_line_error(result, "gptscratch-train", f"{flag} {value}: must be a finite number")
    assert not (tmp_path / "out").exists()


def test_every_number_field_is_checked_for_finiteness():
    numbers = [name for name, spec in FIELDS.items() if spec.metadata["kind"] == "number"]
    assert len(numbers) >= 10
    for name in numbers:
        with pytest.raises(InputError, match=rf"^{name} nan: must be a finite number$"):
            TrainOptions.from_fields(output_dir="out", **{name: float("nan")}).check()


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("lr", [0.1], "lr [0.1]: takes a number"),
        ("batch_size", True, "batch_size true: takes an integer"),
        ("batch_size", 8.5, "batch_size 8.5: takes an integer"),
        ("dry_run", "yes", 'dry_run "yes": takes true or false'),
        ("dedup", "false", 'dedup "false": takes true or false'),
        ("qkv_bias", "false", 'qkv_bias "false": takes true, false or null'),
        ("data", [1, 2], "data [1, 2]: takes text or a list of texts"),
        ("preset", 124, "preset 124: takes text"),
        ("config", ["n_layers=4"], 'config ["n_layers=4"]: takes a mapping of model fields'),
    ],
)
def test_a_file_value_is_typed_as_strictly_as_its_flag(name, value, message):
    with pytest.raises(InputError) as error:
        coerce(name, value)
    assert str(error.value).startswith(message)


def test_file_values_that_read_as_their_flag_would_are_taken():
    assert coerce("lr", "1e-3") == 1e-3  # YAML reads 1e-3 as text; the flag reads it as a number
    assert coerce("batch_size", "8") == 8 and coerce("lr", 2) == 2.0
    assert coerce("dry_run", True) is True and coerce("qkv_bias", None) is None
    assert coerce("data", "one.txt") == ["one.txt"] and coerce("max_time", 90) == "90"


def test_a_config_file_refuses_a_bad_value_naming_the_file_and_its_key(tmp_path, capfd):
    config_file = tmp_path / "run.json"
    config_file.write_text(json.dumps({"dry_run": "yes"}))
    with pytest.raises(InputError, match=r'^config_file .*run.json: dry_run "yes": takes true or false$'):
        fields_from_file(config_file)
    config_file.write_text(json.dumps({"lr": float("nan")}))  # JSON's NaN, as Python's json writes it
    result = run_main(cli.main, ["--config-file", str(config_file), "--output-dir", str(tmp_path / "out")], capfd)
    assert_one_line_error(result, "gptscratch-train", f"--config-file {config_file}: lr nan: must be a finite number")
    assert not (tmp_path / "out").exists()


def test_a_config_file_switch_set_to_true_works_and_false_leaves_it_off(tmp_path, capfd, corpus, cache):
    config_file = tmp_path / "run.yaml"
    config_file.write_text("dry_run: true\nqkv_bias: false\nlr: 1e-3\n")
    values = fields_from_file(config_file)
    assert values == {"dry_run": True, "qkv_bias": False, "lr": 1e-3}
    argv = ["--config-file", config_file, "--output-dir", tmp_path / "out", "--data", corpus, "--cache-dir", cache]
    result = run_main(cli.main, [*argv, "--vocab-size", "300"], capfd)
    assert result.returncode == 0 and "qkv_bias=False" in result.stdout and "lr 0.001 cosine" in result.stdout
    assert not (tmp_path / "out").exists()  # a dry run writes nothing


def test_a_resumed_run_may_change_only_the_fields_that_do_not_shape_its_numbers():
    original = TrainOptions.from_fields(output_dir="a", max_steps=10, lr=1e-3)
    longer = original.replace(output_dir="b", max_steps=20, eval_freq=5)
    assert resume_differences(longer, original) == []
    assert resume_differences(original.replace(lr=2e-3, batch_size=8), original) == ["batch_size", "lr"]


def test_model_options_put_the_shape_fields_over_config():
    options = ModelOptions(n_layers=4, config={"n_layers": 6, "context_length": 64})
    assert options.overrides() == {"n_layers": 4, "context_length": 64}


def test_the_corpus_fields_are_what_prepare_takes():
    import inspect

    from train.data import prepare_tokens

    parameters = set(inspect.signature(prepare_tokens).parameters) - {"progress", "log"}
    assert set(DataOptions().corpus_fields()) == parameters
