"""convert.book_checkpoint: the book's model.pth files converted, with the book's GPTModel's logits, and refusals."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from cli_helpers import assert_one_line_error
from conftest import assert_same_logits, write_tiny_bpe
from convert_helpers import entries, load_converted, random_ids, run_cli, safetensors_tensors
from transformers import AutoTokenizer

from convert.book_checkpoint import convert_book_checkpoint
from convert.cli import PROG
from convert.cli import main as cli_main


@pytest.mark.parametrize(
    "file_name, qkv_bias, tied", [("model.pth", False, False), ("model_and_optimizer.pth", True, True)]
)
def test_book_checkpoint_logits_match_the_books_model(bpe_dir, tmp_path, file_name, qkv_bias, tied):
    from llms_from_scratch.ch04 import GPTModel

    vocab_size = len(json.loads((bpe_dir / "encoder.json").read_text(encoding="utf-8")))
    book_config = dict(
        vocab_size=vocab_size, context_length=16, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.1, qkv_bias=qkv_bias
    )
    torch.manual_seed(0)
    book = GPTModel(book_config)
    optimizer = torch.optim.AdamW(book.parameters(), lr=4e-4, weight_decay=0.1)
    book(random_ids(vocab_size, 8)).sum().backward()
    optimizer.step()  # the optimizer state a model_and_optimizer.pth carries
    with torch.no_grad():
        for parameter in book.parameters():  # the book initialises norms to 1/0: move every tensor off its default
            parameter.add_(torch.randn_like(parameter) * 0.1)
        if tied:  # as after the book's load_weights_into_gpt, which copies wte into out_head
            book.out_head.weight.copy_(book.tok_emb.weight)
    checkpoint = tmp_path / file_name
    if file_name == "model.pth":
        torch.save(book.state_dict(), checkpoint)
    else:
        torch.save({"model_state_dict": book.state_dict(), "optimizer_state_dict": optimizer.state_dict()}, checkpoint)
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(book_config))
    out = tmp_path / "out"
    # Through the command, in-process: the flags reach the Python API.
    with pytest.raises(SystemExit) as exit_info:
        cli_main(
            [
                "--book-checkpoint",
                str(checkpoint),
                "--book-config",
                str(config_file),
                "--tokenizer",
                str(bpe_dir),
                "--output-dir",
                str(out),
            ]
        )
    assert exit_info.value.code == 0

    model = load_converted(out)
    assert model.config.tie_word_embeddings is tied and model.config.qkv_bias is qkv_bias
    assert ("out_head.weight" in safetensors_tensors(out)) is not tied
    ids = random_ids(vocab_size, 16)
    book.eval()
    with torch.no_grad():
        assert_same_logits(model(ids).logits, book(ids))
    assert model.generation_config.eos_token_id == AutoTokenizer.from_pretrained(out).eos_token_id


def test_book_config_may_be_given_inline(bpe_dir, tmp_path):
    from llms_from_scratch.ch04 import GPTModel

    book_config = dict(
        vocab_size=300, context_length=8, emb_dim=16, n_heads=2, n_layers=1, drop_rate=0.0, qkv_bias=False
    )
    torch.manual_seed(0)
    torch.save(GPTModel(book_config).state_dict(), tmp_path / "model.pth")
    tokenizer = write_tiny_bpe(tmp_path / "bpe")  # 261 tokens: fits the 300-row embedding
    out = convert_book_checkpoint(tmp_path / "model.pth", json.dumps(book_config), tokenizer, tmp_path / "out")
    assert load_converted(out).config.vocab_size == 300


# --- bad input: exit status 2, one line naming the input, nothing written ---------------------------------------------


class _RunsAShellCommand:
    """Unpickling this runs `touch`: a stand-in for a malicious checkpoint."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _book_files(tmp_path: Path) -> dict[str, Path]:
    """A valid book checkpoint, config and tokenizer, from which each bad-input case spoils one thing."""
    from llms_from_scratch.ch04 import GPTModel

    config = dict(vocab_size=300, context_length=8, emb_dim=16, n_heads=2, n_layers=1, drop_rate=0.0, qkv_bias=False)
    torch.save(GPTModel(config).state_dict(), tmp_path / "model.pth")
    (tmp_path / "config.json").write_text(json.dumps(config))
    return dict(
        checkpoint=tmp_path / "model.pth", config=tmp_path / "config.json", tokenizer=write_tiny_bpe(tmp_path / "bpe")
    )


def _pickled_program(files: dict[str, Path], tmp_path: Path) -> None:
    torch.save({"model_state_dict": _RunsAShellCommand(tmp_path / "pwned")}, files["checkpoint"])


def _not_a_torch_file(files: dict[str, Path], tmp_path: Path) -> None:
    files["checkpoint"].write_bytes(pickle.dumps(list(range(10))))


def _wider_config(files: dict[str, Path], tmp_path: Path) -> None:
    config = json.loads(files["config"].read_text())
    files["config"].write_text(json.dumps(config | {"emb_dim": 32}))


def _non_empty_output(files: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")


BOOK_BAD_INPUTS = {
    "missing checkpoint": (lambda files, tmp: files["checkpoint"].unlink(), ["model.pth", "does not exist"]),
    "checkpoint that runs code when unpickled": (
        _pickled_program,
        ["model.pth", "holds more than tensors and is refused unread", "posix.system"],
    ),
    "checkpoint that is not a torch file": (_not_a_torch_file, ["model.pth", "refused unread"]),
    "config that disagrees with the tensors": (
        _wider_config,
        ["tok_emb.weight has shape [300, 16]", "implies [300, 32]", "--book-config"],
    ),
    "config that is not JSON": (
        lambda files, tmp: files["config"].write_text("{vocab_size: 300"),
        ["config.json is not valid JSON"],
    ),
    "config that is a binary file": (
        lambda files, tmp: files["config"].write_bytes(b"PK\x03\x04\xff\xfe"),
        ["book config", "config.json is not UTF-8 text (byte offset 4)", "GPT_CONFIG_124M"],
    ),
    "missing tokenizer directory": (
        lambda files, tmp: shutil.rmtree(files["tokenizer"]),
        ["bpe does not exist", "encoder.json and vocab.bpe"],
    ),
    "output that exists and is not empty": (_non_empty_output, ["out exists and is not empty", "--overwrite"]),
}


@pytest.mark.parametrize("case", BOOK_BAD_INPUTS)
def test_bad_book_input_exits_2_and_writes_nothing(tmp_path, case):
    files = _book_files(tmp_path)
    spoil, names = BOOK_BAD_INPUTS[case]
    spoil(files, tmp_path)
    result = run_cli(
        "--book-checkpoint",
        files["checkpoint"],
        "--book-config",
        files["config"],
        "--tokenizer",
        files["tokenizer"],
        "--output-dir",
        tmp_path / "out",
    )
    assert_one_line_error(result, PROG, *names)
    assert entries(tmp_path / "out") == (["keep.txt"] if case == "output that exists and is not empty" else [])
    assert not (tmp_path / "pwned").exists() and not any(name.startswith(".out") for name in entries(tmp_path))
