"""convert.openai_checkpoint and gptscratch-convert: OpenAI's GPT-2 checkpoints converted, downloaded, refused.

Equivalence is checked against independent references: transformers' GPT2LMHeadModel given the same arrays (its
Conv1D weights keep TensorFlow's [in, out] layout), and tiktoken for the tokenizer. The checkpoints are built with
TensorFlow in exactly OpenAI's layout; they are shared per module because TensorFlow alone takes seconds to import.
"""

from __future__ import annotations

import http.server
import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import assert_one_line_error, run_main
from conftest import SHARED_DATA, assert_same_logits, tiktoken_gpt2, write_tiny_bpe
from convert_helpers import (
    entries,
    gpt2_reference,
    load_converted,
    random_ids,
    random_openai_arrays,
    run_cli,
    safetensors_tensors,
    write_openai_checkpoint,
)
from transformers import AutoTokenizer, GPT2LMHeadModel

from common.errors import InputError
from convert.book_checkpoint import convert_book_checkpoint
from convert.cli import PROG
from convert.cli import main as cli_main
from convert.openai_checkpoint import (
    CHECKPOINT_FILES,
    convert_openai_checkpoint,
    download_and_convert_openai_checkpoint,
    download_openai_checkpoint,
)

DATA_FILE = "model.ckpt.data-00000-of-00001"


# --- fixtures ---------------------------------------------------------------------------------------------------------


@dataclass
class Checkpoint:
    directory: Path
    hparams: dict[str, int]
    arrays: dict[str, np.ndarray]


@pytest.fixture(scope="module")
def small(tmp_path_factory, bpe_dir) -> Checkpoint:
    """A 2-layer, 32-dim OpenAI-layout checkpoint whose vocabulary is the BPE pair's."""
    pytest.importorskip("tensorflow")
    n_vocab = len(json.loads((bpe_dir / "encoder.json").read_text(encoding="utf-8")))
    hparams = dict(n_vocab=n_vocab, n_ctx=32, n_embd=32, n_head=4, n_layer=2)
    # Scale 0.1 rather than GPT-2's 0.02: a mapping mistake then moves the logits far beyond the tolerance.
    arrays = random_openai_arrays(hparams, scale=0.1)
    return Checkpoint(
        write_openai_checkpoint(tmp_path_factory.mktemp("small") / "124M", hparams, arrays, bpe_dir), hparams, arrays
    )


@pytest.fixture(scope="module")
def converted(small, tmp_path_factory) -> Path:
    return convert_openai_checkpoint(small.directory, tmp_path_factory.mktemp("converted") / "gpt2-small")


@pytest.fixture(scope="module")
def reference(small) -> GPT2LMHeadModel:
    return gpt2_reference(small.hparams, small.arrays)


# --- OpenAI checkpoints -----------------------------------------------------------------------------------------------


def test_openai_checkpoint_logits_match_gpt2lmheadmodel(small, converted, reference):
    ids = random_ids(small.hparams["n_vocab"], small.hparams["n_ctx"])
    with torch.no_grad():
        ours, theirs = load_converted(converted)(ids).logits, reference(ids).logits
    assert theirs.std() > 0.5  # logits large enough that a wrong mapping could not pass as rounding
    assert_same_logits(ours, theirs)


def test_converted_directory_is_a_complete_model_directory(small, converted, bpe_dir):
    config = json.loads((converted / "config.json").read_text())
    assert config["model_type"] == "gptscratch" and "AutoModelForCausalLM" in config["auto_map"]
    hparams = small.hparams
    assert (
        config["vocab_size"],
        config["context_length"],
        config["emb_dim"],
        config["n_heads"],
        config["n_layers"],
    ) == (hparams["n_vocab"], hparams["n_ctx"], hparams["n_embd"], hparams["n_head"], hparams["n_layer"])
    assert config["drop_rate"] == 0.0 and config["qkv_bias"] is True and config["tie_word_embeddings"] is True
    assert config["dtype"] == "float32"
    end_of_text = json.loads((bpe_dir / "encoder.json").read_text(encoding="utf-8"))["<|endoftext|>"]
    assert json.loads((converted / "generation_config.json").read_text())["eos_token_id"] == end_of_text
    if bpe_dir == SHARED_DATA / "gpt2-bpe":
        assert end_of_text == 50256
    assert (converted / "modeling_gptscratch.py").is_file()
    assert json.loads((converted / "tokenizer_config.json").read_text())["model_max_length"] == hparams["n_ctx"]
    tensors = safetensors_tensors(converted)
    # One tensor per OpenAI variable; the tied head is stored once, as the token embedding.
    assert len(tensors) == len(small.arrays) and "out_head.weight" not in tensors
    torch.testing.assert_close(
        tensors["model.trf_blocks.1.att.qkv.weight"],
        torch.from_numpy(small.arrays["model/h1/attn/c_attn/w"][0]),
        rtol=0,
        atol=0,
    )
    assert entries(converted.parent) == [converted.name]  # no temporary sibling left behind


def test_converted_directory_loads_with_auto_classes_and_generates_like_gpt2(converted, reference):
    tokenizer = AutoTokenizer.from_pretrained(converted)
    model = load_converted(converted)
    prompt = tokenizer("Every effort moves you", return_tensors="pt").input_ids
    ours = model.generate(prompt, max_new_tokens=8, temperature=0)
    theirs = reference.generate(
        prompt,
        max_new_tokens=8,
        do_sample=False,
        eos_token_id=model.config.eos_token_id,
        pad_token_id=model.config.eos_token_id,
    )
    assert ours.shape[1] > prompt.shape[1]
    assert ours.tolist() == theirs.tolist()
    assert tokenizer.decode(ours[0]).startswith("Every effort moves you")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_dtype_casts_every_tensor(small, converted, tmp_path, dtype, capsys):
    out = tmp_path / "out"
    result = run_main(cli_main, ["--checkpoint-dir", small.directory, "--output-dir", out, "--dtype", dtype], capsys)
    assert result.returncode == 0 and f"wrote model directory {out}" in result.stdout, result.stderr
    assert json.loads((out / "config.json").read_text())["dtype"] == dtype
    ours, full = safetensors_tensors(out), safetensors_tensors(converted)
    assert ours.keys() == full.keys()
    for name, tensor in ours.items():
        assert torch.equal(tensor, full[name].to(getattr(torch, dtype))), name
    assert load_converted(out).dtype == getattr(torch, dtype)


def test_weights_are_sharded_past_max_shard_size(small, converted, tmp_path):
    out = convert_openai_checkpoint(small.directory, tmp_path / "out", max_shard_size="100KB")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    ids = random_ids(small.hparams["n_vocab"], 8)
    with torch.no_grad():
        torch.testing.assert_close(
            load_converted(out)(ids).logits, load_converted(converted)(ids).logits, rtol=0, atol=0
        )


def test_overwrite_replaces_a_non_empty_output(small, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("from an earlier run")
    with pytest.raises(InputError, match="pass overwrite"):
        convert_openai_checkpoint(small.directory, out)
    assert entries(out) == ["stale.txt"]
    convert_openai_checkpoint(small.directory, out, overwrite=True)
    assert "stale.txt" not in entries(out) and (out / "config.json").is_file()
    assert entries(tmp_path) == ["out"]


def test_hparams_describing_another_model_name_the_variable(small, tmp_path):
    """More layers in hparams.json than in the checkpoint: the first missing variable is named (in-process)."""
    directory = shutil.copytree(small.directory, tmp_path / "ckpt")
    (directory / "hparams.json").write_text(json.dumps(small.hparams | {"n_layer": 3}))
    with pytest.raises(InputError, match=r"lacks model/h2/ln_1/g \(shape \[32\]\).*n_layer=3.*and 11 more"):
        convert_openai_checkpoint(directory, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unexpected_variable_is_refused(small, bpe_dir, tmp_path):
    arrays = small.arrays | {"model/h0/attn/extra": np.zeros(3, np.float32)}
    directory = write_openai_checkpoint(tmp_path / "ckpt", small.hparams, arrays, bpe_dir)
    with pytest.raises(InputError, match=r"holds model/h0/attn/extra \(shape \[3\]\)"):
        convert_openai_checkpoint(directory, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- tokenizer --------------------------------------------------------------------------------------------------------


TOKENIZER_CASES = [
    "Hello, world",
    "naïve café, Ünïcödé — “quotes” ‘single’ … 日本語のテキスト 😀🤖, Ελληνικά, русский",
    "  two leading spaces, trailing spaces   ",
    "tabs\tand\nnewlines\n\n\r\n and \u00a0 non-breaking \u2003 em spaces",
    "   \n\n   ",
    "<|endoftext|>",
    "one document<|endoftext|>the next<|endoftext|> <|endoftext|>\n",
    "numbers 1234567 3.14159 and contractions: it's we're they've I'm you'll he'd",
]


def test_converted_tokenizer_ids_equal_gpt2(gpt2_bpe_dir, verdict_text, converted, bpe_dir):
    assert bpe_dir == gpt2_bpe_dir  # the converted directory was built from OpenAI's files
    tokenizer = AutoTokenizer.from_pretrained(converted)
    reference = tiktoken_gpt2(gpt2_bpe_dir)
    assert tokenizer.encode("Hello, world") == [15496, 11, 995]  # GPT-2's published IDs
    assert tokenizer.encode("<|endoftext|>") == [50256] and len(tokenizer) == 50257
    for text in [verdict_text, *TOKENIZER_CASES]:
        ids = tokenizer.encode(text)
        assert ids == reference.encode(text, allowed_special="all"), text[:60]
        assert tokenizer.decode(ids) == text


# --- downloads --------------------------------------------------------------------------------------------------------


@dataclass
class FileServer:
    """A local server of the small checkpoint's files. `requests`: the (path, Range header) of every request.
    `cuts`: {path: n} makes the next answer for path stop after n bytes while announcing the full length, as a
    dropped connection does. `honours_range`: False makes it answer every request 200 with the whole file."""

    url: str
    requests: list[tuple[str, str | None]]
    cuts: dict[str, int]
    honours_range: bool = True


@pytest.fixture
def file_server(small) -> Iterator[FileServer]:
    """Serves the small checkpoint's files as /124M/NAME on 127.0.0.1 with HTTP Range support."""
    files = {f"/124M/{name}": (small.directory / name).read_bytes() for name in CHECKPOINT_FILES}
    state = FileServer("", [], {})

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests.append((self.path, self.headers.get("Range")))
            body = files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            asked = self.headers["Range"] and state.honours_range
            start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-")) if asked else 0
            if start:
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(body) - start))
            self.end_headers()
            self.wfile.write(body[start : state.cuts.pop(self.path, len(body))])

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()
    server.server_close()


def test_download_checks_sizes_and_resumes_a_partial_file(small, file_server, tmp_path):
    url, requests, cuts = file_server.url, file_server.requests, file_server.cuts
    data_size = (small.directory / DATA_FILE).stat().st_size
    cuts[f"/124M/{DATA_FILE}"] = data_size // 3
    with pytest.raises(InputError, match=rf"got {data_size // 3} of {data_size} bytes.*kept and the next run resumes"):
        download_openai_checkpoint("124M", tmp_path, base_urls=[url])
    target = tmp_path / "124M"
    assert (target / f"{DATA_FILE}.part").stat().st_size == data_size // 3
    assert not (target / DATA_FILE).exists()  # a short file never gets its final name

    assert download_openai_checkpoint("124M", tmp_path, base_urls=[url]) == target
    assert [range_ for path, range_ in requests if path == f"/124M/{DATA_FILE}"] == [None, f"bytes={data_size // 3}-"]
    assert entries(target) == sorted(CHECKPOINT_FILES)
    for name in CHECKPOINT_FILES:
        assert (target / name).read_bytes() == (small.directory / name).read_bytes(), name
    served = len(requests)
    download_openai_checkpoint("124M", tmp_path, base_urls=[url])
    assert len(requests) == served  # complete files are not fetched again


def test_a_server_that_ignores_range_restarts_the_partial_file(small, file_server, tmp_path):
    """A 200 answer to a Range request holds the whole file: it replaces the .part instead of being appended."""
    file_server.honours_range = False
    target = tmp_path / "124M"
    target.mkdir()
    data = (small.directory / DATA_FILE).read_bytes()
    (target / f"{DATA_FILE}.part").write_bytes(b"\0" * (len(data) // 3))  # not even a prefix of the file
    download_openai_checkpoint("124M", tmp_path, base_urls=[file_server.url])
    assert (f"/124M/{DATA_FILE}", f"bytes={len(data) // 3}-") in file_server.requests
    assert (target / DATA_FILE).read_bytes() == data
    assert not (target / f"{DATA_FILE}.part").exists()


def test_cli_downloads_then_converts(file_server, converted, tmp_path):
    url = file_server.url
    result = run_cli("--download", "124M", "--models-dir", tmp_path / "models", "--base-url", url)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "models" / "gpt2-124m"
    assert f"wrote model directory {out}" in result.stdout
    ours, expected = safetensors_tensors(out), safetensors_tensors(converted)
    assert ours.keys() == expected.keys() and all(torch.equal(ours[name], expected[name]) for name in ours)


def test_download_offline_fails_at_once_and_writes_nothing(tmp_path):
    result = run_cli(
        "--download",
        "124M",
        "--models-dir",
        tmp_path / "models",
        "--base-url",
        "http://gptscratch-offline-test.invalid",
        timeout=60,
    )
    assert_one_line_error(
        result, PROG, "cannot download checkpoint", "gptscratch-offline-test.invalid", "check the network connection"
    )
    assert entries(tmp_path) == []


# --- bad input: exit status 2, one line naming the input, nothing written ---------------------------------------------


def _copy_without(small: Checkpoint, tmp_path: Path, name: str) -> Path:
    directory = shutil.copytree(small.directory, tmp_path / "ckpt")
    (directory / name).unlink()
    return directory


def _truncated(small: Checkpoint, tmp_path: Path) -> Path:
    directory = shutil.copytree(small.directory, tmp_path / "ckpt")
    with open(directory / DATA_FILE, "r+b") as file:
        file.truncate((directory / DATA_FILE).stat().st_size // 2)
    return directory


def _wider_hparams(small: Checkpoint, tmp_path: Path) -> Path:
    directory = shutil.copytree(small.directory, tmp_path / "ckpt")
    (directory / "hparams.json").write_text(json.dumps(small.hparams | {"n_embd": 64}))
    return directory


def _only_tokenizer_files(small: Checkpoint, tmp_path: Path) -> Path:
    directory = tmp_path / "ckpt"
    directory.mkdir()
    for name in ("encoder.json", "vocab.bpe"):
        shutil.copy(small.directory / name, directory)
    return directory


OPENAI_BAD_INPUTS = {
    "missing directory": (lambda small, tmp: tmp / "nowhere", ["nowhere", "does not exist"]),
    "no checkpoint in the directory": (_only_tokenizer_files, ["ckpt", "holds no TensorFlow checkpoint"]),
    "missing hparams.json": (lambda small, tmp: _copy_without(small, tmp, "hparams.json"), ["hparams.json is missing"]),
    "missing encoder.json": (lambda small, tmp: _copy_without(small, tmp, "encoder.json"), ["encoder.json is missing"]),
    "truncated data file": (_truncated, [DATA_FILE, "is truncated", "download it again"]),
    "hparams disagree with the tensors": (
        _wider_hparams,
        ["model/wte has shape [{n_vocab}, 32]", "implies [{n_vocab}, 64]", "n_embd=64"],
    ),
}


@pytest.mark.parametrize("case", OPENAI_BAD_INPUTS)
def test_bad_openai_input_exits_2_and_writes_nothing(small, tmp_path, case):
    make_directory, names = OPENAI_BAD_INPUTS[case]
    checkpoint_dir = make_directory(small, tmp_path)
    result = run_cli("--checkpoint-dir", checkpoint_dir, "--output-dir", tmp_path / "out")
    assert_one_line_error(result, PROG, *(name.format(**small.hparams) for name in names))
    assert "out" not in entries(tmp_path) and not any(name.startswith(".out") for name in entries(tmp_path))


def test_cli_flag_mistakes_exit_2_with_one_line(small, tmp_path, capsys):
    cases = {
        ("--checkpoint-dir", str(small.directory)): "--checkpoint-dir needs --output-dir",
        ("--download", "124M"): "--download needs --models-dir",
        ("--download", "7B", "--models-dir", str(tmp_path)): "invalid choice: '7B'",
        (
            "--checkpoint-dir",
            str(small.directory),
            "--output-dir",
            str(tmp_path / "out"),
            "--tokenizer",
            str(tmp_path),
        ): "--tokenizer does not go with --checkpoint-dir",
        ("--checkpoint-dir", str(small.directory), "--book-checkpoint", "model.pth"): "not allowed with argument",
        (
            "--checkpoint-dir",
            str(small.directory),
            "--output-dir",
            str(tmp_path / "out"),
            "--max-shard-size",
            "lots",
        ): "--max-shard-size 'lots' is not a size; pass e.g. 500MB",
        (
            "--checkpoint-dir",
            str(small.directory),
            "--output-dir",
            str(tmp_path / "out"),
            "--max-shard-size",
            "0MB",
        ): "--max-shard-size '0MB' is not a size",
    }
    for argv, message in cases.items():
        with pytest.raises(SystemExit) as exit_info:
            cli_main(list(argv))
        stderr = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 2 and len(stderr) == 1 and message in stderr[0], (argv, stderr)
    assert entries(tmp_path) == []


def test_download_refuses_a_non_empty_output_before_downloading(tmp_path):
    out = tmp_path / "models" / "gpt2-124m"
    out.mkdir(parents=True)
    (out / "keep.txt").write_text("mine")
    # An unreachable URL: the refusal must come first, before any download is attempted.
    with pytest.raises(InputError, match="is not empty; pass overwrite"):
        download_and_convert_openai_checkpoint("124M", tmp_path / "models", base_urls=["http://unused.invalid"])
    assert entries(tmp_path / "models") == ["gpt2-124m"] and entries(out) == ["keep.txt"]


def test_the_python_api_checks_options_and_output_before_reading_checkpoints(small, tmp_path, monkeypatch):
    def must_not_read(*args, **kwargs):
        raise AssertionError("the checkpoint was read before the options were checked")

    monkeypatch.setattr("convert.openai_checkpoint.open_checkpoint", must_not_read)
    monkeypatch.setattr("convert.book_checkpoint.load_book_state_dict", must_not_read)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    book_config = dict(
        vocab_size=300, context_length=8, emb_dim=16, n_heads=2, n_layers=1, drop_rate=0.0, qkv_bias=False
    )
    bpe = write_tiny_bpe(tmp_path / "bpe")
    refusals = {
        "max_shard_size 'lots' is not a size": dict(max_shard_size="lots"),
        "dtype 'float64' is not supported": dict(dtype="float64"),
    }
    for message, options in refusals.items():
        with pytest.raises(InputError, match=message):
            convert_openai_checkpoint(small.directory, tmp_path / "out", **options)
        with pytest.raises(InputError, match=message):
            convert_book_checkpoint(tmp_path / "model.pth", book_config, bpe, tmp_path / "out", **options)
    with pytest.raises(InputError, match="is not empty; pass overwrite"):
        convert_openai_checkpoint(small.directory, taken)
    with pytest.raises(InputError, match="is not empty; pass overwrite"):
        convert_book_checkpoint(tmp_path / "model.pth", book_config, bpe, taken)
    assert entries(tmp_path) == ["bpe", "taken"] and entries(taken) == ["keep.txt"]


def test_missing_tensorflow_says_how_to_install_it(small, tmp_path):
    # None in sys.modules makes `import tensorflow` raise ImportError, as on a machine without it.
    code = (
        "import sys; sys.modules['tensorflow'] = None; from convert.cli import main; "
        f"main(['--checkpoint-dir', {str(small.directory)!r}, '--output-dir', {str(tmp_path / 'out')!r}])"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert_one_line_error(result, PROG, "needs TensorFlow", "pip install 'gptscratch[convert]'")
    assert entries(tmp_path) == []


# --- the real 124M shapes ---------------------------------------------------------------------------------------------


def _peak_rss_bytes(code: str) -> int:
    """Runs Python `code` in a fresh interpreter and returns its peak resident memory (VmHWM).

    Measured inside the child: a forked child's ru_maxrss would start from this test process's own size.
    """
    report = (
        "\nimport sys\n"
        "print(next(line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM:')), "
        "file=sys.stderr)\n"
    )
    # The command ends in sys.exit: run it in a try block so the report still runs.
    wrapped = (
        "try:\n" + "".join(f"    {line}\n" for line in code.splitlines()) + "except SystemExit as e:\n"
        "    assert not e.code, e.code\n" + report
    )
    result = subprocess.run([sys.executable, "-c", wrapped], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return int(result.stderr.strip().splitlines()[-1]) * 1024  # VmHWM is in kB


@pytest.mark.slow
def test_gpt2_124m_shapes_convert_within_memory_and_match(bpe_dir, tmp_path, capsys):
    hparams = dict(n_vocab=50257, n_ctx=1024, n_embd=768, n_head=12, n_layer=12)
    # GPT-2's own initialisation scale: through 12 random layers, larger weights grow logits into the hundreds,
    # where float32 rounding alone exceeds 1e-5.
    arrays = random_openai_arrays(hparams, seed=2, scale=0.02)
    checkpoint = write_openai_checkpoint(tmp_path / "124M", hparams, arrays, bpe_dir)
    model_bytes = (checkpoint / DATA_FILE).stat().st_size
    out = tmp_path / "gpt2-124m"

    if not Path("/proc/self/status").is_file():
        pytest.skip("peak memory is read from /proc (Linux)")
    # Peak memory of the conversion, less that of a process that only imports what the conversion imports.
    # common.model_dir imports torch and transformers lazily, so the baseline names them.
    baseline = _peak_rss_bytes("import tensorflow, torch, transformers, modeling_gptscratch, convert.cli")
    peak = _peak_rss_bytes(
        f"from convert.cli import main\nmain(['--checkpoint-dir', {str(checkpoint)!r}, '--output-dir', {str(out)!r}])"
    )
    with capsys.disabled():
        print(
            f"\n124M conversion: model {model_bytes / 2**20:.0f} MiB, peak RSS {peak / 2**20:.0f} MiB, "
            f"imports alone {baseline / 2**20:.0f} MiB, conversion's own {(peak - baseline) / 2**20:.0f} MiB "
            f"({(peak - baseline) / model_bytes:.2f}x the model)"
        )
    assert peak - baseline < 1.5 * model_bytes

    ids = random_ids(hparams["n_vocab"], 24, batch=1)
    with torch.no_grad():
        ours = load_converted(out)(ids).logits
        theirs = gpt2_reference(hparams, arrays)(ids).logits
    assert theirs.std() > 0.1
    assert_same_logits(ours, theirs)
