"""The shared model-directory writer and reader: atomic, readable by others, clear errors."""

from __future__ import annotations

import os

import pytest

from convert.commands import UsageError
from convert.model_dir import atomic_directory, load_model_directory, save_model_directory


def current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def test_a_failed_write_leaves_the_previous_directory_intact(tmp_path):
    target = tmp_path / "out"
    with atomic_directory(target) as staging:
        (staging / "weights").write_text("good")
    with pytest.raises(RuntimeError), atomic_directory(target, overwrite=True) as staging:
        (staging / "weights").write_text("half")
        raise RuntimeError("crash while writing")
    assert (target / "weights").read_text() == "good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary left behind


def test_a_non_empty_output_is_refused_without_overwrite(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep").write_text("mine")
    with pytest.raises(UsageError, match="exists and is not empty; pass --overwrite"):
        with atomic_directory(tmp_path / "out"):
            pass
    assert (tmp_path / "out" / "keep").read_text() == "mine"


def test_saved_directories_get_the_usual_permissions_not_mkdtemps(tiny_model, tmp_path):
    umask = current_umask()
    target = save_model_directory(tiny_model, None, tmp_path / "model")
    assert target.stat().st_mode & 0o777 == 0o777 & ~umask
    for path in target.iterdir():
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path.name


def test_damaged_weights_are_a_usage_error(tiny_model, tmp_path):
    target = save_model_directory(tiny_model, None, tmp_path / "model")
    (target / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(UsageError, match="weights are missing or damaged"):
        load_model_directory(target)


def test_a_foreign_directory_is_named(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(UsageError, match="holds a 'bert' model, not a gptscratch one"):
        load_model_directory(tmp_path)
