"""The shared model-directory writer and reader: atomic, readable by others, clear errors."""

from __future__ import annotations

import os
import re

import pytest
from conftest import byte_level_tokenizer
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

from common.errors import InputError
from common.files import atomic_directory, read_json_object, recover_interrupted_writes
from common.model_dir import load_model_directory, save_model_directory


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
    with pytest.raises(InputError, match="exists and is not empty; pass overwrite"):
        with atomic_directory(tmp_path / "out"):
            pass
    assert (tmp_path / "out" / "keep").read_text() == "mine"


def test_saved_directories_get_the_usual_permissions_not_mkdtemps(tiny_model, tmp_path):
    umask = current_umask()
    target = save_model_directory(tiny_model, None, tmp_path / "model")
    assert target.stat().st_mode & 0o777 == 0o777 & ~umask
    for path in target.iterdir():
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path.name


def word_tokenizer() -> PreTrainedTokenizerFast:
    """A two-word tokenizer: enough for a model directory to be complete."""
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"[UNK]": 0, "word": 1}, unk_token="[UNK]")), unk_token="[UNK]"
    )


def test_damaged_weights_are_a_usage_error(tiny_model, tmp_path):
    target = save_model_directory(tiny_model, word_tokenizer(), tmp_path / "model")
    (target / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(InputError, match="weights are missing or damaged"):
        load_model_directory(target)


def test_a_directory_without_a_tokenizer_is_refused_in_one_line_before_its_weights_load(tiny_model, tmp_path):
    target = save_model_directory(tiny_model, None, tmp_path / "model")
    (target / "model.safetensors").write_bytes(b"damaged too, but the cheaper check comes first")
    with pytest.raises(InputError) as error:
        load_model_directory(target)
    assert "holds no tokenizer" in str(error.value) and "tokenizer.save_pretrained" in str(error.value)
    assert len(str(error.value).splitlines()) == 1


@pytest.mark.parametrize(
    "content, problem",
    [
        (b"[1, 2]", "holds an array, not a JSON object"),
        (b'"gptscratch"', "holds a string, not a JSON object"),
        (b'{"model_type": ', "is not valid JSON (Expecting value: line 1"),
        (b"\x89PNG\r\n\x1a\n\x00\xff", "is not UTF-8 text (byte offset 0)"),
    ],
)
def test_a_damaged_config_is_named_with_the_fix(tmp_path, content, problem):
    (tmp_path / "config.json").write_bytes(content)
    with pytest.raises(InputError, match=re.escape(f"model config {tmp_path / 'config.json'} {problem}") + ".*; pass"):
        load_model_directory(tmp_path)


def test_read_json_object_names_missing_files_and_directories(tmp_path):
    with pytest.raises(InputError) as missing:
        read_json_object(tmp_path / "absent.json", "training summary", "fix it")
    assert str(missing.value) == f"training summary {tmp_path / 'absent.json'} does not exist; fix it"
    with pytest.raises(InputError) as directory:
        read_json_object(tmp_path, "training summary", "fix it")
    assert str(directory.value) == f"training summary {tmp_path} is a directory, not a file; fix it"
    (tmp_path / "ok.json").write_text('{"a": [1]}', encoding="utf-8")
    assert read_json_object(tmp_path / "ok.json", "training summary", "fix it") == {"a": [1]}


def test_a_write_killed_between_its_two_renames_is_put_back(tmp_path):
    """A process killed after moving the old version aside and before renaming the new one in leaves no target,
    the old version in a retired sibling and the new one half-written in a staging sibling."""
    target = tmp_path / "repo"
    with atomic_directory(target) as staging:
        (staging / "weights").write_text("good")
    (tmp_path / ".repo.old-crash").mkdir()
    os.replace(target, tmp_path / ".repo.old-crash" / "repo")
    (tmp_path / ".repo.tmp-crash").mkdir()
    (tmp_path / ".repo.tmp-crash" / "weights").write_text("half")
    (tmp_path / ".other.tmp-alive").mkdir()  # another directory's staging: not ours to touch
    recover_interrupted_writes(target)
    assert (target / "weights").read_text() == "good"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.tmp-alive", "repo"]


def test_a_foreign_directory_is_named(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(InputError, match="holds a 'bert' model, not a gptscratch one"):
        load_model_directory(tmp_path)


def test_a_saved_tokenizer_carries_the_plain_chat_template_and_the_callers_is_untouched(tiny_model, tmp_path):
    """A chat to a base model reads as plain text: each message as 'Role: content', then 'Assistant:'."""
    from transformers import AutoTokenizer

    from common.model_dir import with_chat_template

    tokenizer = byte_level_tokenizer()
    save_model_directory(tiny_model, tokenizer, tmp_path / "model")
    assert tokenizer.chat_template is None
    saved = AutoTokenizer.from_pretrained(tmp_path / "model")
    chat = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hello"}, {"type": "image"}]},
    ]
    text = saved.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    assert text == "System: Be brief.\n\nUser: Hello\n\nAssistant:"
    saved.chat_template = "{{ messages[0]['content'] }}"
    assert with_chat_template(saved) is saved  # a tokenizer's own template is kept
