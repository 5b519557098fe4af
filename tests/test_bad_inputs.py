"""The catalogue of bad input: every command, every kind of mistake a user makes, each one refused the same way.

Each case runs a command's `main` in this process and asserts exit status 2, exactly one stderr line that names the
input, and a file listing of the whole workspace (inputs and output locations) unchanged by the attempt. Output
locations that are read-only or full are real file systems: small tmpfs mounts, made where this machine lets the
tests mount (as root), the cases needing them skipped cleanly elsewhere.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from cli_helpers import assert_one_line_error, file_listing, file_tree, run_clis, run_main
from conftest import PROMPT, REPO_ROOT, ascii_char_tokenizer, byte_level_bpe, tiny_model_for, write_tiny_bpe

import convert.cli
import convert.export
import convert.gpt2_export
import train.cli
import train.prepare
import use.evaluate
import use.generate
import use.push
import use.serve
from common.model_dir import save_model_directory
from convert.gpt2_export import export_gpt2
from use.push import push_to_local_hub

PROGS = {
    "train": (train.cli.main, "gptscratch-train"),
    "convert": (convert.cli.main, convert.cli.PROG),
    "generate": (use.generate.main, use.generate.PROG),
    "eval": (use.evaluate.main, use.evaluate.PROG),
    "push": (use.push.main, use.push.PROG),
    "gpt2-export": (convert.gpt2_export.main, convert.gpt2_export.PROG),
    "export": (convert.export.main, convert.export.PROG),
    "prepare": (train.prepare.main, train.prepare.PROG),
    "serve": (use.serve.main, use.serve.PROG),
}
TINY_TRAIN = [
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
    "--batch-size",
    "4",
    "--eval-iter",
    "1",
]


def mount_tmpfs(directory: Path, options: str) -> None:
    directory.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(directory)], capture_output=True)
    if result.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.decode().strip() or 'not root'})")


def fill(directory: Path) -> None:
    """Writes a file into `directory` until its file system has no byte left."""
    descriptor = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        for block in (1 << 16, 1 << 12, 1 << 9, 1):
            while True:
                try:
                    if os.write(descriptor, b"\0" * block) < block:
                        break
                except OSError:
                    break
    finally:
        os.close(descriptor)


@pytest.fixture(scope="module")
def w(tmp_path_factory) -> SimpleNamespace:
    """The workspace: good inputs, bad ones, and the places outputs go."""
    root = tmp_path_factory.mktemp("workspace")
    text = "Every effort moves you forward. " * 40 + "\n"
    tokenizer = byte_level_bpe(text * 3, vocab_size=300)
    model = save_model_directory(tiny_model_for(tokenizer), tokenizer, root / "model")
    untied = save_model_directory(tiny_model_for(tokenizer, tie_word_embeddings=False), tokenizer, root / "untied")
    from pydoc_data.topics import topics

    corpus = root / "corpus.txt"  # 40 KB of English: enough text for the tiny model's windows
    corpus.write_text("\n".join(topics[key] for key in sorted(topics)[:12])[:40_000], encoding="utf-8")
    paths = dict(
        root=root,
        corpus=corpus,
        model=model,
        untied=untied,
        foreign=export_gpt2(model, root / "gpt2-export"),
        cache=tmp_path_factory.mktemp("cache"),
        hub=root / "hub",
        missing=root / "missing",
    )
    for name, content in {
        "text.txt": text.encode(),
        "empty.txt": b"",
        "png.bin": b"\x89PNG\r\n\x1a\n\x00\x00IHDR",
        "latin1.txt": "café au lait".encode("latin-1"),
        "nul.txt": b"text\x00more text",
        "spaces.txt": b"  \n\n ",
        "not-json.json": b"{vocab_size: 300",
        "array.json": b"[1, 2]",
        "garbage.pth": b"not a torch file at all",
        "unknown-key.yaml": b"batch_size: 8\ncolour: red\n",
        "run.yaml": b"max_steps: 1\n",
        "bad-template.jinja": b"{% for message in messages %}{{ message['content'] }}",
    }.items():
        (root / name).write_bytes(content)
        paths[name.replace(".", "_").replace("-", "_")] = root / name
    for name in ("empty-dir", "used", "not-a-checkpoint"):
        (root / name).mkdir()
        paths[name.replace("-", "_")] = root / name
    (root / "used" / "notes.txt").write_text("mine")

    def spoiled(name: str, spoil) -> Path:
        directory = shutil.copytree(model, root / name)
        spoil(directory)
        return directory

    config = json.loads((model / "config.json").read_text())
    paths.update(
        wider=spoiled("wider", lambda d: (d / "config.json").write_text(json.dumps(config | {"emb_dim": 64}))),
        deeper=spoiled("deeper", lambda d: (d / "config.json").write_text(json.dumps(config | {"n_layers": 3}))),
        shallower=spoiled("shallower", lambda d: (d / "config.json").write_text(json.dumps(config | {"n_layers": 1}))),
        bad_config=spoiled("bad-config", lambda d: (d / "config.json").write_text("{not json")),
        no_tokenizer=spoiled(
            "no-tokenizer", lambda d: [(d / name).unlink() for name in ("tokenizer.json", "tokenizer_config.json")]
        ),
        no_weights=spoiled("no-weights", lambda d: (d / "model.safetensors").unlink()),
        truncated=spoiled("truncated", lambda d: os.truncate(d / "model.safetensors", 100)),
        bad_tokenizer=spoiled("bad-tokenizer", lambda d: (d / "tokenizer.json").write_text('{"a": 1}')),
    )
    # What a conversion reads of OpenAI's checkpoint, present (its contents are never reached here).
    checkpoint = root / "openai-checkpoint"
    checkpoint.mkdir()
    for name in ("hparams.json", "model.ckpt.index", "model.ckpt.data-00000-of-00001", "encoder.json", "vocab.bpe"):
        (checkpoint / name).write_text("{}")
    paths.update(openai_checkpoint=checkpoint)
    # The book's model files, for gptscratch-convert.
    from llms_from_scratch.ch04 import GPTModel

    book = dict(vocab_size=261, context_length=8, emb_dim=16, n_heads=2, n_layers=1, drop_rate=0.0, qkv_bias=False)
    torch.save(GPTModel(book).state_dict(), root / "book.pth")
    (root / "book.json").write_text(json.dumps(book))
    (root / "book-wider.json").write_text(json.dumps(book | {"emb_dim": 32}))
    paths.update(
        book=root / "book.pth",
        book_config=root / "book.json",
        book_wider=root / "book-wider.json",
        bpe=write_tiny_bpe(root / "bpe"),
    )
    return SimpleNamespace(**paths)


@pytest.fixture(scope="module")
def disks(w) -> SimpleNamespace:
    """A read-only tmpfs and a full one (holding a pushed repository, then a file that takes every byte left)."""
    read_only, full = w.root / "read-only", w.root / "full"
    mounted = []
    try:
        mount_tmpfs(read_only, "ro,size=64k")
        mounted.append(read_only)
        mount_tmpfs(full, "size=2m")
        mounted.append(full)
        push_to_local_hub(w.model, full / "hub", "alice/tiny")
        fill(full)
        yield SimpleNamespace(read_only=read_only, full=full, full_hub=full / "hub")
    finally:
        for directory in mounted:
            subprocess.run(["umount", str(directory)], check=True)


def train_args(*argv: str) -> list[str]:
    """gptscratch-train's arguments: the tiny model on the corpus, then the case's own (a later flag wins)."""
    return ["--data", "{corpus}", "--cache-dir", "{cache}", *TINY_TRAIN, *argv]


CASES = {
    # gptscratch-train: data
    "train: missing data file": (
        "train",
        train_args("--data", "{missing}", "--output-dir", "{root}/out"),
        ["--data {missing}: no such file or directory"],
    ),
    "train: empty data file": (
        "train",
        train_args("--data", "{empty_txt}", "--output-dir", "{root}/out"),
        ["--data {empty_txt}: the file is empty"],
    ),
    "train: binary data file": (
        "train",
        train_args("--data", "{png_bin}", "--output-dir", "{root}/out"),
        ["{png_bin} is not UTF-8 text: byte 0x89 at byte offset 0"],
    ),
    "train: Latin-1 data file": (
        "train",
        train_args("--data", "{latin1_txt}", "--output-dir", "{root}/out"),
        ["{latin1_txt} is not UTF-8 text: byte 0xe9 at byte offset 3"],
    ),
    "train: data file with a NUL byte": (
        "train",
        train_args("--data", "{nul_txt}", "--output-dir", "{root}/out"),
        ["{nul_txt} is not text: a NUL byte at byte offset 4"],
    ),
    "train: data directory without files": (
        "train",
        train_args("--data", "{empty_dir}", "--output-dir", "{root}/out"),
        ["--data {empty_dir}: the directory holds no text files"],
    ),
    "train: glob matching nothing": (
        "train",
        train_args("--data", "{root}/*.nothing", "--output-dir", "{root}/out"),
        ["--data {root}/*.nothing: the pattern matches no file"],
    ),
    "train: too little text": (
        "train",
        train_args("--data", "{text_txt}", "--output-dir", "{root}/out"),
        ["the validation split has"],
    ),
    # gptscratch-train: numbers
    "train: batch size 0": (
        "train",
        train_args("--batch-size", "0", "--output-dir", "{root}/out"),
        ["--batch-size 0: must be a positive integer"],
    ),
    "train: batch size not a number": (
        "train",
        train_args("--batch-size", "four", "--output-dir", "{root}/out"),
        ["--batch-size four: expected an integer"],
    ),
    "train: learning rate 0": (
        "train",
        train_args("--lr", "0", "--output-dir", "{root}/out"),
        ["--lr 0.0: must be greater than 0"],
    ),
    "train: learning rate not a number": (
        "train",
        train_args("--lr", "fast", "--output-dir", "{root}/out"),
        ["--lr fast: expected a number"],
    ),
    "train: train ratio above 1": (
        "train",
        train_args("--train-ratio", "1.5", "--output-dir", "{root}/out"),
        ["--train-ratio 1.5: must be between 0 and 1"],
    ),
    "train: dropout 1": (
        "train",
        train_args("--dropout", "1", "--output-dir", "{root}/out"),
        ["--dropout 1.0: must be in"],
    ),
    "train: max steps 0": (
        "train",
        train_args("--max-steps", "0", "--output-dir", "{root}/out"),
        ["--max-steps 0: must be a positive integer"],
    ),
    "train: negative warmup": (
        "train",
        train_args("--warmup-steps", "-1", "--output-dir", "{root}/out"),
        ["--warmup-steps -1: must not be negative"],
    ),
    "train: vocabulary below bytes": (
        "train",
        train_args("--data", "{text_txt}", "--vocab-size", "100", "--output-dir", "{root}/out"),
        ["--vocab-size 100: a byte-level BPE needs"],
    ),
    "train: sample of a trillion tokens": (
        "train",
        train_args("--max-new-tokens", "1000000000000", "--output-dir", "{root}/out"),
        ["--max-new-tokens 1000000000000: must be between 0 and 100,000"],
    ),
    "train: window longer than the model's": (
        "train",
        train_args("--context-length", "64", "--output-dir", "{root}/out"),
        ["--context-length 64 is longer than the model's context_length 32"],
    ),
    # gptscratch-train: names and --config
    "train: unknown preset": (
        "train",
        train_args("--preset", "gpt5", "--output-dir", "{root}/out"),
        ["--preset gpt5: unknown preset"],
    ),
    "train: unknown engine": (
        "train",
        train_args("--engine", "deepspeed", "--output-dir", "{root}/out"),
        ["argument --engine: invalid choice: 'deepspeed'"],
    ),
    "train: a tracker the Trainer has no integration for": (
        "train",
        train_args("--report-to", "aim", "--engine", "trainer", "--output-dir", "{root}/out"),
        ["--report-to aim: transformers' Trainer has no integration for it; use --engine accelerate"],
    ),
    "train: unknown model field": (
        "train",
        train_args("--config", "colour=1", "--output-dir", "{root}/out"),
        ["--config colour: not a model field"],
    ),
    "train: model field of the wrong type": (
        "train",
        train_args("--config", "context_length=abc", "--output-dir", "{root}/out"),
        ["--config context_length=abc: context_length takes an integer"],
    ),
    "train: boolean field that is no boolean": (
        "train",
        train_args("--config", "tie_word_embeddings=maybe", "--output-dir", "{root}/out"),
        ["--config tie_word_embeddings=maybe", "true or false"],
    ),
    "train: --config without =": (
        "train",
        train_args("--config", "context_length", "--output-dir", "{root}/out"),
        ["--config context_length: expected KEY=VALUE"],
    ),
    "train: config file with an unknown option": (
        "train",
        ["--config-file", "{unknown_key_yaml}", "--output-dir", "{root}/out"],
        ["--config-file {unknown_key_yaml}: 'colour' is not an option"],
    ),
    "train: missing config file": (
        "train",
        ["--config-file", "{missing}", "--output-dir", "{root}/out"],
        ["--config-file {missing} does not exist"],
    ),
    "train: missing tokenizer": (
        "train",
        train_args("--tokenizer", "{missing}", "--output-dir", "{root}/out"),
        ["--tokenizer {missing} could not be loaded"],
    ),
    # gptscratch-train: output and checkpoints
    "train: output directory in use": (
        "train",
        train_args("--output-dir", "{used}"),
        ["--output-dir {used} exists and is not empty"],
    ),
    "train: output directory inside the data directory": (
        "train",
        train_args("--data", "{root}", "--output-dir", "{root}/out"),
        ["--output-dir {root}/out lies inside --data {root}"],
    ),
    "train: overwriting the directory that holds the data": (
        "train",
        train_args("--output-dir", "{root}", "--overwrite"),
        ["--output-dir {root} contains --data {corpus}"],
    ),
    "train: overwriting the directory that holds the configuration file": (
        "train",
        ["--config-file", "{run_yaml}", "--output-dir", "{root}", "--overwrite"],
        ["--output-dir {root} contains --config-file {run_yaml}"],
    ),
    "train: cache directory inside the tokenizer's": (
        "train",
        train_args("--tokenizer", "{bpe}", "--cache-dir", "{bpe}/cache", "--output-dir", "{missing}/out"),
        ["--cache-dir {bpe}/cache lies inside --tokenizer {bpe}"],
    ),
    "train: cache directory that is a file": (
        "train",
        train_args("--cache-dir", "{text_txt}", "--output-dir", "{root}/out"),
        ["cache directory {text_txt} cannot be used", "--cache-dir"],
    ),
    "train: a vocabulary no memory holds": (
        "train",
        train_args("--vocab-size", "1000000000", "--output-dir", "{root}/out"),
        ["--vocab-size 1000000000: a byte-level BPE needs at least 257"],
    ),
    "train: a floor learning rate that is not a number": (
        "train",
        train_args("--min-lr", "nan", "--warmup-steps", "0", "--output-dir", "{root}/out"),
        ["--min-lr nan: must be a finite number"],
    ),
    "train: an infinite weight decay": (
        "train",
        train_args("--weight-decay", "inf", "--output-dir", "{root}/out"),
        ["--weight-decay inf: must be a finite number"],
    ),
    "train: a sampling temperature that is not a number": (
        "train",
        train_args("--temperature", "nan", "--output-dir", "{root}/out"),
        ["--temperature nan: must be a finite number"],
    ),
    "train: output directory that is a file": (
        "train",
        train_args("--output-dir", "{text_txt}"),
        ["--output-dir {text_txt} exists and is not a directory"],
    ),
    "train: resume without a checkpoint": (
        "train",
        train_args("--output-dir", "{empty_dir}", "--resume"),
        ["--resume: {empty_dir}/checkpoints holds no complete checkpoint"],
    ),
    "train: resume from a missing checkpoint": (
        "train",
        train_args("--output-dir", "{root}/out", "--resume", "{missing}"),
        ["--resume {missing}: no such checkpoint directory"],
    ),
    "train: resume from a folder that is no checkpoint": (
        "train",
        train_args("--output-dir", "{root}/out", "--resume", "{not_a_checkpoint}"),
        ["--resume {not_a_checkpoint}: not a complete gptscratch checkpoint"],
    ),
    "train: read-only output location": (
        "train",
        train_args("--data", "{text_txt}", "--output-dir", "{read_only}/out"),
        ["--output-dir {read_only}/out is not writable", "read-only file system"],
    ),
    "train: full output location": (
        "train",
        train_args("--output-dir", "{full}/out", "--max-steps", "2"),
        ["cannot write output directory {full}/out: no space left on device", "choose another --output-dir"],
    ),
    # gptscratch-convert
    "convert: missing OpenAI checkpoint": (
        "convert",
        ["--checkpoint-dir", "{missing}", "--output-dir", "{root}/out"],
        ["{missing}"],
    ),
    "convert: output that is the checkpoint": (
        "convert",
        ["--checkpoint-dir", "{openai_checkpoint}", "--output-dir", "{openai_checkpoint}", "--overwrite"],
        ["--output-dir {openai_checkpoint} is --checkpoint-dir {openai_checkpoint}"],
    ),
    "convert: output inside the checkpoint": (
        "convert",
        ["--checkpoint-dir", "{openai_checkpoint}", "--output-dir", "{openai_checkpoint}/model"],
        ["--output-dir {openai_checkpoint}/model lies inside --checkpoint-dir {openai_checkpoint}"],
    ),
    "convert: unknown size": (
        "convert",
        ["--download", "7B", "--models-dir", "{root}/models"],
        ["argument --download: invalid choice: '7B'"],
    ),
    "convert: source without its flags": (
        "convert",
        ["--book-checkpoint", "{book}", "--output-dir", "{root}/out"],
        ["--book-checkpoint needs --book-config"],
    ),
    "convert: book checkpoint that is no torch file": (
        "convert",
        [
            "--book-checkpoint",
            "{garbage_pth}",
            "--book-config",
            "{book_config}",
            "--tokenizer",
            "{bpe}",
            "--output-dir",
            "{root}/out",
        ],
        ["{garbage_pth}", "refused unread"],
    ),
    "convert: book config that is not JSON": (
        "convert",
        [
            "--book-checkpoint",
            "{book}",
            "--book-config",
            "{not_json_json}",
            "--tokenizer",
            "{bpe}",
            "--output-dir",
            "{root}/out",
        ],
        ["{not_json_json} is not valid JSON"],
    ),
    "convert: book config that disagrees with the tensors": (
        "convert",
        [
            "--book-checkpoint",
            "{book}",
            "--book-config",
            "{book_wider}",
            "--tokenizer",
            "{bpe}",
            "--output-dir",
            "{root}/out",
        ],
        ["book checkpoint {book}", "implies [261, 32]"],
    ),
    "convert: shard size that is no size": (
        "convert",
        ["--checkpoint-dir", "{root}", "--output-dir", "{root}/out", "--max-shard-size", "big"],
        ["big"],
    ),
    "convert: unknown dtype": (
        "convert",
        ["--checkpoint-dir", "{root}", "--output-dir", "{root}/out", "--dtype", "int8"],
        ["argument --dtype: invalid choice: 'int8'"],
    ),
    "convert: output directory in use": (
        "convert",
        [
            "--book-checkpoint",
            "{book}",
            "--book-config",
            "{book_config}",
            "--tokenizer",
            "{bpe}",
            "--output-dir",
            "{used}",
        ],
        ["{used} exists and is not empty"],
    ),
    "convert: read-only output location": (
        "convert",
        [
            "--book-checkpoint",
            "{book}",
            "--book-config",
            "{book_config}",
            "--tokenizer",
            "{bpe}",
            "--output-dir",
            "{read_only}/out",
        ],
        ["output directory {read_only}/out is not writable"],
    ),
    "convert: full output location": (
        "convert",
        [
            "--book-checkpoint",
            "{book}",
            "--book-config",
            "{book_config}",
            "--tokenizer",
            "{bpe}",
            "--output-dir",
            "{full}/out",
        ],
        ["cannot write model directory {full}/out: no space left on device (it needs about"],
    ),
    # gptscratch-generate
    "generate: missing model directory": (
        "generate",
        ["--model", "{missing}", "--prompt", "Hi"],
        ["model directory {missing} does not exist"],
    ),
    "generate: config.json that is not JSON": (
        "generate",
        ["--model", "{bad_config}", "--prompt", "Hi"],
        ["{bad_config}/config.json is not valid JSON"],
    ),
    "generate: config wider than the weights": (
        "generate",
        ["--model", "{wider}", "--prompt", "Hi"],
        [
            "{wider}/model.safetensors does not match {wider}/config.json",
            "model.tok_emb.weight is 281 x 32 there, the config makes it 281 x 64",
        ],
    ),
    "generate: config deeper than the weights": (
        "generate",
        ["--model", "{deeper}", "--prompt", "Hi"],
        ["{deeper}/model.safetensors does not match", "n_layers 3", "it has no tensor model.trf_blocks.2."],
    ),
    "generate: config shallower than the weights": (
        "generate",
        ["--model", "{shallower}", "--prompt", "Hi"],
        [
            "{shallower}/model.safetensors does not match",
            "n_layers 1",
            "the config has no place for its tensor model.trf_blocks.1.",
        ],
    ),
    "generate: no weights": (
        "generate",
        ["--model", "{no_weights}", "--prompt", "Hi"],
        ["cannot load the model in {no_weights}"],
    ),
    "generate: truncated weights": (
        "generate",
        ["--model", "{truncated}", "--prompt", "Hi"],
        ["cannot load the model in {truncated}"],
    ),
    "generate: no tokenizer": (
        "generate",
        ["--model", "{no_tokenizer}", "--prompt", "Hi"],
        ["{no_tokenizer} holds no tokenizer"],
    ),
    "generate: a damaged tokenizer.json": (
        "generate",
        ["--model", "{bad_tokenizer}", "--prompt", PROMPT],
        ["{bad_tokenizer} holds no loadable tokenizer (no 'added_tokens')"],
    ),
    "generate: a sampling temperature that is not a number": (
        "generate",
        ["--model", "{model}", "--prompt", PROMPT, "--temperature", "nan"],
        ["--temperature must be a finite number >= 0", "got nan"],
    ),
    "generate: another model type": (
        "generate",
        ["--model", "{foreign}", "--prompt", "Hi"],
        ["{foreign} holds a 'gpt2' model"],
    ),
    "generate: a trillion new tokens": (
        "generate",
        ["--model", "{model}", "--prompt", "Hi", "--max-new-tokens", "1000000000000"],
        ["--max-new-tokens 1000000000000: must be between 0 and 100,000"],
    ),
    "generate: negative new tokens": (
        "generate",
        ["--model", "{model}", "--prompt", "Hi", "--max-new-tokens", "-1"],
        ["--max-new-tokens must be >= 0, got -1"],
    ),
    "generate: negative temperature": (
        "generate",
        ["--model", "{model}", "--prompt", "Hi", "--temperature", "-1"],
        ["--temperature must be a finite number >= 0"],
    ),
    "generate: top-k 0": (
        "generate",
        ["--model", "{model}", "--prompt", "Hi", "--top-k", "0"],
        ["--top-k must be >= 1"],
    ),
    "generate: top-k not a number": (
        "generate",
        ["--model", "{model}", "--prompt", "Hi", "--top-k", "many"],
        ["argument --top-k: invalid int value: 'many'"],
    ),
    "generate: empty prompt": ("generate", ["--model", "{model}", "--prompt", ""], ["encodes to no tokens"]),
    # gptscratch-eval
    "eval: missing data file": (
        "eval",
        ["--model", "{model}", "--data", "{missing}"],
        ["data file {missing} does not exist"],
    ),
    "eval: binary data file": (
        "eval",
        ["--model", "{model}", "--data", "{png_bin}"],
        ["data file {png_bin} is not UTF-8 text"],
    ),
    "eval: blank data file": (
        "eval",
        ["--model", "{model}", "--data", "{spaces_txt}"],
        ["data file {spaces_txt} is empty"],
    ),
    "eval: stride 0": (
        "eval",
        ["--model", "{model}", "--data", "{text_txt}", "--stride", "0"],
        ["--stride must be between 1 and the context length 32, got 0"],
    ),
    "eval: batch size 0": (
        "eval",
        ["--model", "{model}", "--data", "{text_txt}", "--batch-size", "0"],
        ["--batch-size must be >= 1, got 0"],
    ),
    "eval: both modes": (
        "eval",
        ["--model", "{model}", "--data", "{text_txt}", "--tasks", "hellaswag"],
        ["pass exactly one of --data"],
    ),
    "eval: config wider than the weights": (
        "eval",
        ["--model", "{wider}", "--data", "{text_txt}"],
        ["{wider}/model.safetensors does not match"],
    ),
    # gptscratch-push
    "push: repo id that climbs out": (
        "push",
        ["--model", "{model}", "--hub-dir", "{hub}", "--repo-id", "../x"],
        ["repo id '../x' is not NAMESPACE/NAME"],
    ),
    "push: absolute repo id": (
        "push",
        ["--model", "{model}", "--hub-dir", "{hub}", "--repo-id", "/etc/x"],
        ["repo id '/etc/x' is not NAMESPACE/NAME"],
    ),
    "push: repo id with three parts": (
        "push",
        ["--model", "{model}", "--hub-dir", "{hub}", "--repo-id", "a/b/c"],
        ["repo id 'a/b/c' is not NAMESPACE/NAME"],
    ),
    "push: license that is no identifier": (
        "push",
        ["--model", "{model}", "--hub-dir", "{hub}", "--repo-id", "a/b", "--license", "MIT License"],
        ["license 'MIT License' is not a Hub license identifier"],
    ),
    "push: unknown format": (
        "push",
        ["--model", "{model}", "--hub-dir", "{hub}", "--repo-id", "a/b", "--format", "tflite"],
        ["argument --format: invalid choice: 'tflite'"],
    ),
    "push: untied head as GGUF": (
        "push",
        ["--model", "{untied}", "--hub-dir", "{hub}", "--repo-id", "a/b", "--format", "gguf"],
        ["GPT-2 cannot express this model (--model {untied})"],
    ),
    "push: hub directory that is a file": (
        "push",
        ["--model", "{model}", "--hub-dir", "{text_txt}", "--repo-id", "a/b"],
        ["hub directory {text_txt} cannot be used"],
    ),
    "push: repository inside the model directory": (
        "push",
        ["--model", "{model}", "--hub-dir", "{model}", "--repo-id", "a/b"],
        ["the repository {model}/a/b lies inside --model {model}"],
    ),
    "push: missing model": (
        "push",
        ["--model", "{missing}", "--hub-dir", "{hub}", "--repo-id", "a/b"],
        ["model directory {missing} does not exist"],
    ),
    "push: read-only hub": (
        "push",
        ["--model", "{model}", "--hub-dir", "{read_only}/hub", "--repo-id", "a/b"],
        ["hub directory {read_only}/hub is not writable", "read-only file system"],
    ),
    "push: full hub, the previous version kept": (
        "push",
        ["--model", "{model}", "--hub-dir", "{full_hub}", "--repo-id", "alice/tiny"],
        ["cannot write repository {full_hub}/alice/tiny: no space left on device"],
    ),
    # python -m convert.gpt2_export
    "gpt2-export: missing model": (
        "gpt2-export",
        ["--model", "{missing}", "--output-dir", "{root}/out"],
        ["model directory {missing} does not exist"],
    ),
    "gpt2-export: untied head": (
        "gpt2-export",
        ["--model", "{untied}", "--output-dir", "{root}/out"],
        ["GPT-2 cannot express this model"],
    ),
    "gpt2-export: output that is the model, overwritten": (
        "gpt2-export",
        ["--model", "{model}", "--output-dir", "{model}", "--overwrite"],
        ["--output-dir {model} is --model {model}"],
    ),
    "gpt2-export: output directory in use": (
        "gpt2-export",
        ["--model", "{model}", "--output-dir", "{used}"],
        ["{used} exists and is not empty"],
    ),
    "gpt2-export: read-only output location": (
        "gpt2-export",
        ["--model", "{model}", "--output-dir", "{read_only}/out"],
        ["output directory {read_only}/out is not writable"],
    ),
    "gpt2-export: full output location": (
        "gpt2-export",
        ["--model", "{model}", "--output-dir", "{full}/out"],
        ["cannot write GPT-2 directory {full}/out: no space left on device (it needs about"],
    ),
    # gptscratch-serve
    "serve: missing model directory": ("serve", ["{missing}"], ["model directory {missing} does not exist"]),
    "serve: a directory that holds no model": ("serve", ["{empty_dir}"], ["{empty_dir}/config.json does not exist"]),
    "serve: config wider than the weights": (
        "serve",
        ["{wider}"],
        ["{wider}/model.safetensors does not match {wider}/config.json"],
    ),
    "serve: missing chat template": (
        "serve",
        ["{model}", "--chat-template", "{missing}"],
        ["--chat-template {missing} does not exist"],
    ),
    "serve: chat template that is not UTF-8": (
        "serve",
        ["{model}", "--chat-template", "{latin1_txt}"],
        ["--chat-template {latin1_txt} is not UTF-8 text"],
    ),
    "serve: chat template that does not parse": (
        "serve",
        ["{model}", "--chat-template", "{bad_template_jinja}"],
        ["--chat-template {bad_template_jinja} is not a chat template that renders a conversation"],
    ),
    "serve: chat template keyword arguments that are not JSON": (
        "serve",
        ["{model}", "--chat-template-kwargs", "{{colour"],
        ["--chat-template-kwargs {{colour is not valid JSON"],
    ),
    "serve: an option transformers serve does not know": (
        "serve",
        ["{model}", "--colour", "red"],
        ["transformers serve: No such option '--colour'; see transformers serve --help"],
    ),
    # gptscratch-export
    "export: unknown format": (
        "export",
        ["--model", "{model}", "--format", "tflite", "--output", "{root}/out"],
        ["argument --format: invalid choice: 'tflite'"],
    ),
    "export: a dtype the format lacks": (
        "export",
        ["--model", "{model}", "--format", "onnx", "--output", "{root}/out", "--dtype", "q8_0"],
        ["--dtype q8_0: the onnx format is written in f32, f16"],
    ),
    "export: output file that exists": (
        "export",
        ["--model", "{model}", "--format", "gguf", "--output", "{text_txt}"],
        ["output file {text_txt} exists; pass --overwrite"],
    ),
    "export: output directory in use": (
        "export",
        ["--model", "{model}", "--format", "onnx", "--output", "{used}"],
        ["{used} exists and is not empty; pass --overwrite"],
    ),
    "export: GGUF output that is a directory": (
        "export",
        ["--model", "{model}", "--format", "gguf", "--output", "{empty_dir}", "--overwrite"],
        ["--output {empty_dir} is a directory"],
    ),
    "export: untied head as GGUF": (
        "export",
        ["--model", "{untied}", "--format", "gguf", "--output", "{root}/untied.gguf"],
        ["GPT-2 cannot express this model (--model {untied})"],
    ),
    "export: output inside the model directory": (
        "export",
        ["--model", "{model}", "--format", "gguf", "--output", "{model}/model.gguf"],
        ["--output {model}/model.gguf lies inside --model {model}"],
    ),
    "export: output that is the model, overwritten": (
        "export",
        ["--model", "{model}", "--format", "onnx", "--output", "{model}", "--overwrite"],
        ["--output {model} is --model {model}"],
    ),
    "export: missing model": (
        "export",
        ["--model", "{missing}", "--format", "gguf", "--output", "{root}/out.gguf"],
        ["model directory {missing} does not exist"],
    ),
    "export: damaged tokenizer": (
        "export",
        ["--model", "{bad_tokenizer}", "--format", "gguf", "--output", "{root}/out.gguf"],
        ["{bad_tokenizer} holds no loadable tokenizer"],
    ),
    "export: read-only output location": (
        "export",
        ["--model", "{model}", "--format", "gguf", "--output", "{read_only}/model.gguf"],
        ["output file's folder {read_only} is not writable", "read-only file system"],
    ),
    "export: full output location": (
        "export",
        ["--model", "{model}", "--format", "gguf", "--output", "{full}/model.gguf"],
        ["cannot write GGUF file {full}/model.gguf: no space left on device (it needs about"],
    ),
    # gptscratch-prepare
    "prepare: cache inside the data directory": (
        "prepare",
        ["--data", "{root}", "--cache-dir", "{root}/tokens"],
        ["--cache-dir {root}/tokens lies inside --data {root}"],
    ),
    "prepare: a vocabulary no memory holds": (
        "prepare",
        ["--data", "{corpus}", "--vocab-size", "1000000000", "--cache-dir", "{cache}"],
        ["--vocab-size 1000000000"],
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_exit_2_and_changes_no_file(case, w, request, capfd):
    command, argv, names = CASES[case]
    values = vars(w)
    if any("{read_only}" in arg or "{full" in arg for arg in argv):
        values = {**values, **vars(request.getfixturevalue("disks"))}
    before = file_listing(w.root)
    main, prog = PROGS[command]
    result = run_main(main, [arg.format(**values) for arg in argv], capfd)
    assert_one_line_error(result, prog, *(name.format(**values) for name in names))
    assert file_listing(w.root) == before


def test_the_catalogue_covers_every_command_with_at_least_40_inputs():
    assert len(CASES) >= 40 and {command for command, _, _ in CASES.values()} == set(PROGS)


# ---------------------------------------------------------------------------------------------------------------------
# Full and read-only disks, as the libraries report them


@pytest.mark.parametrize("writer", ["open", "torch.save", "safetensors", "save_pretrained"])
def test_a_full_disk_is_one_usage_error_whatever_the_writer(writer, disks, w):
    """Each library words a full disk its own way (torch.save: "unexpected pos ... basic_ios::clear", no errno;
    safetensors: "I/O error: No space left on device"); each becomes the same error naming the file."""
    from safetensors.torch import save_file

    from common.files import OutputWriteError, writing_output

    target = disks.full / f"out-{writer.replace('.', '-')}"
    tensor = torch.zeros(1 << 18)
    write = {
        "open": lambda: target.write_bytes(bytes(1 << 20)),
        "torch.save": lambda: torch.save({"tensor": tensor}, target),
        "safetensors": lambda: save_file({"tensor": tensor}, target),
        "save_pretrained": lambda: tiny_model_for(byte_level_bpe("abc", 260)).save_pretrained(target),
    }[writer]
    with pytest.raises(
        OutputWriteError,
        match=f"cannot write weights {target}: no space left on device \\(it needs "
        "about 1.0 MB; 0 bytes free before writing\\)",
    ):
        with writing_output(target, "weights", size=1 << 20):
            write()
    shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)


def test_other_errors_pass_unchanged_and_read_only_is_named(disks):
    from common.files import OutputWriteError, writing_output

    with pytest.raises(RuntimeError, match="unrelated"):  # not a storage failure: not swallowed
        with writing_output(disks.full / "x"):
            raise RuntimeError("unrelated")
    with pytest.raises(
        OutputWriteError, match=f"cannot write {disks.read_only}/x: read-only file system; choose a writable location"
    ):
        with writing_output(disks.read_only / "x"):
            (disks.read_only / "x").write_text("no")


@pytest.fixture
def small_disk(tmp_path) -> Path:
    disk = tmp_path / "disk"
    mount_tmpfs(disk, "size=2m")
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


def test_a_disk_filling_up_during_training_keeps_the_last_checkpoint(w, small_disk, tmp_path, monkeypatch, capfd):
    """The disk fills after step 4's evaluation: checkpoint 4 cannot be written. One line names it and the space it
    needed; checkpoint 2 is intact, nothing half-written is left; once space is freed, --resume finishes the run
    with the weights of a run the disk never stopped."""
    from safetensors.torch import load_file

    from train.checkpoints import RunDirectory
    from train.context import RunContext

    argv = [arg.format(**vars(w)) for arg in train_args("--max-steps", "6", "--save-steps", "2", "--eval-freq", "2")]
    assert run_main(train.cli.main, [*argv, "--output-dir", tmp_path / "reference"], capfd).returncode == 0

    record_evaluation = RunContext.record_evaluation

    def fill_after_step_4(self, step, *args, **kwargs):
        record = record_evaluation(self, step, *args, **kwargs)
        if step == 4:
            fill(small_disk)
        return record

    monkeypatch.setattr(RunContext, "record_evaluation", fill_after_step_4)
    output = small_disk / "run"
    result = run_main(train.cli.main, [*argv, "--output-dir", output], capfd)
    assert_one_line_error(
        result,
        "gptscratch-train",
        f"cannot write checkpoint {output}/checkpoints/checkpoint-4: no space left on device (it needs about",
        "free before writing)",
        "--output-dir",
    )
    directory = RunDirectory(output)
    assert [path.name for path in directory.checkpoint_dirs()] == ["checkpoint-2"]
    assert not list(directory.checkpoints.glob(".tmp-*")) and not (output / "model.safetensors").exists()
    load_file(directory.checkpoints / "checkpoint-2" / "model.safetensors")  # loadable

    monkeypatch.setattr(RunContext, "record_evaluation", record_evaluation)
    (small_disk / "filler").unlink()
    assert run_main(train.cli.main, [*argv, "--output-dir", output, "--resume"], capfd).returncode == 0
    assert (output / "model.safetensors").read_bytes() == (tmp_path / "reference" / "model.safetensors").read_bytes()


# ---------------------------------------------------------------------------------------------------------------------
# stderr on a terminal: no bar is left under the error (in a pipe, every case above is one line with no bar)


def rendered_screen(output: str) -> list[str]:
    """The lines a terminal shows after printing `output`: a carriage return goes back to the line's start, and
    what follows overwrites what was there."""
    lines = []
    for line in output.replace("\r\n", "\n").split("\n"):
        shown = ""
        for piece in line.split("\r"):
            shown = piece + shown[len(piece) :]
        lines.append(shown.rstrip())
    return [line for line in lines if line]


@pytest.mark.slow
def test_on_a_terminal_the_bar_is_cleared_before_the_error(w, tmp_path):
    """stderr a terminal (a pseudo-terminal here): bars are drawn, and the training bar that is still open when the
    run stops is wiped, so the error line stands alone instead of being glued to the bar."""
    import fcntl
    import pty
    import struct
    import termios

    argv = [
        arg.format(**vars(w))
        for arg in train_args(
            "--lr", "1e30", "--warmup-steps", "0", "--max-steps", "20", "--output-dir", str(tmp_path / "out")
        )
    ]
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 24 x 100: tqdm sizes bars by it
    process = subprocess.Popen(
        [sys.executable, "-m", "train", *argv], cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=follower
    )
    os.close(follower)
    output = b""
    while True:
        try:
            chunk = os.read(leader, 1 << 16)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    os.close(leader)
    assert process.wait(timeout=300) == 1
    text = output.decode("utf-8", "replace")
    assert "training:" in text  # the bar was drawn
    screen = rendered_screen(text)
    assert screen[-1].startswith("gptscratch-train: stopped: the training loss became nan at step 2"), screen[-3:]


# --- the commands that read a model directory, in-process and in fresh interpreters -----------------------------------


def test_bad_input_exits_2_with_one_line_and_writes_nothing(model_dir, tokenizer, tmp_path, capfd):
    """Each command, run in-process on its flags: exit status 2, one stderr line naming the input, nothing written."""
    foreign = export_gpt2(model_dir, tmp_path / "gpt2-dir")
    (tmp_path / "a-file").write_text("not a directory")
    hub = tmp_path / "hub"
    push = ["--model", model_dir, "--hub-dir", hub]
    cases = {
        "repo id ../x": (use.push.main, push + ["--repo-id", "../x"], "'../x' is not NAMESPACE/NAME"),
        "absolute repo id": (use.push.main, push + ["--repo-id", tmp_path / "x"], "is not NAMESPACE/NAME"),
        "empty part": (use.push.main, push + ["--repo-id", "alice//x"], "'alice//x' is not NAMESPACE/NAME"),
        "hub is a file": (use.push.main, push[:-1] + [tmp_path / "a-file", "--repo-id", "a/b"], "is not a directory"),
        "hub under a file": (
            use.push.main,
            push[:-1] + [tmp_path / "a-file" / "hub", "--repo-id", "a/b"],
            "is not a directory",
        ),
        "push missing model": (
            use.push.main,
            ["--model", tmp_path / "absent", "--hub-dir", hub, "--repo-id", "a/b"],
            "does not exist",
        ),
        "generate foreign model": (use.generate.main, ["--model", foreign, "--prompt", PROMPT], "holds a 'gpt2' model"),
        "empty prompt": (use.generate.main, ["--model", model_dir, "--prompt", ""], "encodes to no tokens"),
        # What Python makes of the bytes of a Latin-1 "café" on the command line.
        "prompt that is not UTF-8": (
            use.generate.main,
            ["--model", model_dir, "--prompt", "caf\udce9"],
            "the prompt 'caf\\udce9' is not valid text",
        ),
        "eval missing data": (
            use.evaluate.main,
            ["--model", model_dir, "--data", tmp_path / "absent"],
            "does not exist",
        ),
        "export taken output": (
            convert.gpt2_export.main,
            ["--model", model_dir, "--output-dir", tmp_path],
            "is not empty; pass --overwrite",
        ),
    }
    before = file_tree(tmp_path)
    for main, argv, message in cases.values():
        prog = {
            convert.gpt2_export.main: convert.gpt2_export.PROG,
            use.push.main: use.push.PROG,
            use.generate.main: use.generate.PROG,
            use.evaluate.main: use.evaluate.PROG,
        }[main]
        result = run_main(main, argv, capfd)
        assert_one_line_error(result, prog, message)
    assert file_tree(tmp_path) == before


@pytest.mark.slow
def test_refusals_after_reading_the_model_directory_print_one_line(model_dir, tokenizer, tmp_path):
    """The refusals that come after a model directory is read, run as the user runs them: a fresh interpreter,
    where any library's warning, log line or progress bar would reach stderr before the error."""
    untied = save_model_directory(tiny_model_for(tokenizer, tie_word_embeddings=False), tokenizer, tmp_path / "untied")
    chars = ascii_char_tokenizer()
    unknown_chars = save_model_directory(tiny_model_for(chars), chars, tmp_path / "ascii-model")
    (tmp_path / "a-file").write_text("some text")
    hub = str(tmp_path / "hub")
    cases = {
        "untied as gpt2": (
            ["-m", "use.push", "--model", str(untied), "--hub-dir", hub, "--repo-id", "a/b", "--format", "gpt2"],
            "gptscratch-push",
            "GPT-2 cannot express",
        ),
        "export untied": (
            ["-m", "convert.gpt2_export", "--model", str(untied), "--output-dir", str(tmp_path / "out")],
            "python -m convert.gpt2_export",
            "GPT-2 cannot express",
        ),
        "export untied as GGUF": (
            ["-m", "convert.export", "--model", str(untied), "--format", "gguf", "--output", str(tmp_path / "m.gguf")],
            "gptscratch-export",
            "GPT-2 cannot express",
        ),
        "unknown characters": (
            ["-m", "use.generate", "--model", str(unknown_chars), "--prompt", "naïve"],
            "gptscratch-generate",
            "cannot represent 'ï'",
        ),
        "stride over context": (
            ["-m", "use.evaluate", "--model", str(model_dir), "--data", str(tmp_path / "a-file"), "--stride", "33"],
            "gptscratch-eval",
            "--stride must be between 1 and the context length 32",
        ),
    }
    before = file_tree(tmp_path)
    results = run_clis([command for command, _, _ in cases.values()])
    for (_, prog, message), result in zip(cases.values(), results):
        assert_one_line_error(result, prog, message)
    assert file_tree(tmp_path) == before
