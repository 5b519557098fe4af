"""OpenAI's GPT-2 TensorFlow checkpoints: download them, check them, convert them into a model directory.

A checkpoint directory holds OpenAI's seven files (`CHECKPOINT_FILES`). Its tensors are read one at a time with
TensorFlow's checkpoint reader, checked against the shapes hparams.json implies (as the book's `assign` does),
renamed to GPTScratch's parameters and assembled by `converted_model`, beside the GPT-2 tokenizer built from
encoder.json and vocab.bpe.

TensorFlow (the `convert` extra) is imported only when converting; TensorFlow, torch and transformers only once the
inputs and the output options have been checked (see convert/weights.py), so that bad input is reported at once.
"""

from __future__ import annotations

import http.client
import math
import os
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from common.errors import InputError, field, first_line
from common.files import check_apart, check_output_directory, read_json_object
from common.model_dir import save_model_directory
from convert.weights import check_dtype, check_shapes, check_shard_size, converted_model, torch_dtype

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

    from modeling_gptscratch import GPTScratchForCausalLM

MODEL_SIZES = ("124M", "355M", "774M", "1558M")
CHECKPOINT_PREFIX = "model.ckpt"
DATA_FILE = "model.ckpt.data-00000-of-00001"
INDEX_FILE = "model.ckpt.index"
# Everything OpenAI publishes per size; `checkpoint` and `model.ckpt.meta` (TensorFlow's bookkeeping and graph) are
# downloaded for completeness but the conversion does not need them.
CHECKPOINT_FILES = ("checkpoint", "encoder.json", "hparams.json", DATA_FILE, INDEX_FILE, "model.ckpt.meta", "vocab.bpe")
REQUIRED_FILES = ("hparams.json", INDEX_FILE, DATA_FILE, "encoder.json", "vocab.bpe")
HPARAMS_KEYS = ("n_vocab", "n_ctx", "n_embd", "n_head", "n_layer")
# OpenAI's public bucket, then the mirror that the book's chapter 5 falls back to.
DOWNLOAD_BASE_URLS = (
    "https://openaipublic.blob.core.windows.net/gpt-2/models",
    "https://f001.backblazeb2.com/file/LLMs-from-scratch/gpt2",
)
DOWNLOAD_CHUNK_BYTES = 1 << 20

# One transformer block: OpenAI's variable under model/h{i}/, GPTScratch's parameter under model.trf_blocks.{i}., and
# the TensorFlow shape as a function of n_embd. OpenAI's linear layers are 1x1 convolutions: weights
# [1, in_features, out_features], which become GPTScratch's Projection weights [in_features, out_features] by
# dropping the 1. c_attn's columns are queries, keys, values, the order of GPTScratch's fused qkv columns.
_BLOCK_VARIABLES = (
    ("ln_1/g", "norm1.weight", lambda e: [e]),
    ("ln_1/b", "norm1.bias", lambda e: [e]),
    ("attn/c_attn/w", "att.qkv.weight", lambda e: [1, e, 3 * e]),
    ("attn/c_attn/b", "att.qkv.bias", lambda e: [3 * e]),
    ("attn/c_proj/w", "att.out_proj.weight", lambda e: [1, e, e]),
    ("attn/c_proj/b", "att.out_proj.bias", lambda e: [e]),
    ("ln_2/g", "norm2.weight", lambda e: [e]),
    ("ln_2/b", "norm2.bias", lambda e: [e]),
    ("mlp/c_fc/w", "ff.layers.0.weight", lambda e: [1, e, 4 * e]),
    ("mlp/c_fc/b", "ff.layers.0.bias", lambda e: [4 * e]),
    ("mlp/c_proj/w", "ff.layers.2.weight", lambda e: [1, 4 * e, e]),
    ("mlp/c_proj/b", "ff.layers.2.bias", lambda e: [e]),
)


def openai_variables(hparams: dict[str, int]) -> dict[str, tuple[str, list[int]]]:
    """Every variable an OpenAI checkpoint with these hparams holds: TF name -> (GPTScratch name, TF shape).

    Ordered as the model reads them: embeddings, blocks, final norm. The output head has no variable of its
    own: OpenAI ties it to `model/wte`.
    """
    e = hparams["n_embd"]
    variables = {
        "model/wte": ("model.tok_emb.weight", [hparams["n_vocab"], e]),
        "model/wpe": ("model.pos_emb.weight", [hparams["n_ctx"], e]),
    }
    for i in range(hparams["n_layer"]):
        for tf_suffix, our_suffix, shape in _BLOCK_VARIABLES:
            variables[f"model/h{i}/{tf_suffix}"] = (f"model.trf_blocks.{i}.{our_suffix}", shape(e))
    variables["model/ln_f/g"] = ("model.final_norm.weight", [e])
    variables["model/ln_f/b"] = ("model.final_norm.bias", [e])
    return variables


def check_checkpoint_directory(checkpoint_dir: str | os.PathLike) -> Path:
    """`checkpoint_dir` as a Path if it holds the files a conversion reads, else an InputError naming what is
    missing."""
    directory = Path(checkpoint_dir)
    if not directory.is_dir():
        raise InputError(
            f"checkpoint directory {directory} does not exist; pass the directory holding OpenAI's GPT-2 files, "
            f"or fetch them with {field('download')} SIZE {field('models_dir')} DIR"
        )
    if not (directory / INDEX_FILE).is_file():
        raise InputError(
            f"{directory} holds no TensorFlow checkpoint ({INDEX_FILE} is missing); pass the directory holding "
            f"OpenAI's files ({', '.join(CHECKPOINT_FILES)})"
        )
    for name in REQUIRED_FILES:
        if not (directory / name).is_file():
            raise InputError(
                f"{directory / name} is missing; the checkpoint directory needs all of OpenAI's files "
                f"({', '.join(CHECKPOINT_FILES)}): download them again"
            )
    return directory


def read_hparams(path: str | os.PathLike) -> dict[str, int]:
    """OpenAI's hparams.json: n_vocab, n_ctx, n_embd, n_head, n_layer as positive integers, n_head dividing n_embd."""
    hparams = read_json_object(path, "hparams file", "download it again")
    for key in HPARAMS_KEYS:
        value = hparams.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise InputError(f"{path}: {key} must be a positive integer, got {value!r}; download it again")
    if hparams["n_embd"] % hparams["n_head"]:
        raise InputError(
            f"{path}: n_embd ({hparams['n_embd']}) is not divisible by n_head ({hparams['n_head']}); download it again"
        )
    return {key: hparams[key] for key in HPARAMS_KEYS}


def _import_tensorflow() -> Any:
    """TensorFlow, or an InputError saying how to install it."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # TensorFlow's C++ start-up notes (oneDNN, "could not find cuda drivers") go to file descriptor 2 before any log
    # setting applies; they are hidden so that a failing command still prints only its one-line error.
    sys.stderr.flush()
    saved_stderr = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import tensorflow as tf
    except ImportError as error:
        raise InputError(
            f"reading OpenAI's checkpoints needs TensorFlow, which is not installed ({error}); "
            "pip install 'gptscratch[convert]'"
        ) from error
    finally:
        os.dup2(saved_stderr, 2)
        os.close(saved_stderr)
        os.close(devnull)
    return tf


def open_checkpoint(checkpoint_dir: Path, hparams: dict[str, int]) -> Any:
    """TensorFlow's reader for the checkpoint, after checking every variable's name and shape against `hparams`
    and the data file's size against the index: nothing is read from the data file yet."""
    tf = _import_tensorflow()
    try:
        reader = tf.train.load_checkpoint(str(checkpoint_dir / CHECKPOINT_PREFIX))
    except (tf.errors.OpError, ValueError) as error:
        raise InputError(
            f"{checkpoint_dir / INDEX_FILE} is not a readable TensorFlow checkpoint index ({first_line(error)}); "
            "download it again"
        ) from error
    shapes = reader.get_variable_to_shape_map()
    settings = ", ".join(f"{key}={value}" for key, value in hparams.items())
    check_shapes(
        shapes,
        {name: shape for name, (_, shape) in openai_variables(hparams).items()},
        source=f"checkpoint {checkpoint_dir}",
        described_by=f"its hparams.json ({settings})",
        fix="hparams.json must come from the same model size as the checkpoint; download it again",
    )
    dtypes = reader.get_variable_to_dtype_map()
    needed = sum(math.prod(shape) * dtypes[name].size for name, shape in shapes.items())
    data_file = checkpoint_dir / DATA_FILE
    if data_file.stat().st_size < needed:
        raise InputError(
            f"{data_file} is truncated: {data_file.stat().st_size} bytes where its index needs {needed}; "
            f"download it again ({field('download')} resumes a partial file)"
        )
    return reader


def _read_tensors(
    reader: Any, variables: dict[str, tuple[str, list[int]]], dtype: torch.dtype
) -> Iterator[tuple[str, torch.Tensor]]:
    """(GPTScratch name, tensor) for each checkpoint variable, read one at a time and converted to `dtype`."""
    import tensorflow as tf
    import torch

    for tf_name, (name, shape) in variables.items():
        try:
            tensor = torch.from_numpy(reader.get_tensor(tf_name))
        except tf.errors.OpError as error:
            raise InputError(
                f"{DATA_FILE} is damaged: reading {tf_name} failed ({first_line(error)}); download it again"
            ) from error
        if len(shape) == 3:  # a 1x1 convolution [1, in, out] -> Projection's [in, out]
            tensor = tensor[0]
        yield name, tensor.to(dtype).contiguous()


def convert_openai_checkpoint(
    checkpoint_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    dtype: str = "float32",
    overwrite: bool = False,
    max_shard_size: str | int = "2GB",
) -> Path:
    """Converts one of OpenAI's GPT-2 TensorFlow checkpoints into a model directory; returns its path.

    checkpoint_dir: OpenAI's files (hparams.json, model.ckpt.index, model.ckpt.data-00000-of-00001, encoder.json,
    vocab.bpe; `checkpoint` and `model.ckpt.meta` are not needed). Tensors arrive as wte [n_vocab, n_embd],
    wpe [n_ctx, n_embd], 1x1-convolution weights [1, in, out] and vectors [n]; they leave as nn.Embedding /
    Projection weights ([in, out]) in `dtype` (float32, bfloat16 or float16).

    The config is hparams.json's (vocab_size=n_vocab, context_length=n_ctx, emb_dim=n_embd, n_heads=n_head,
    n_layers=n_layer) with qkv bias, dropout 0 and the head tied to the token embedding; the generation config
    stops at `<|endoftext|>` (50256). Weights are sharded past `max_shard_size` (e.g. "500MB"). Bad input (a
    missing file, a truncated data file, hparams that disagree with the tensors, a non-empty `output_dir` without
    `overwrite`, an unknown dtype or shard size) is an InputError raised before anything is written, and before
    TensorFlow is imported where the files and options alone show it; on any error `output_dir` is left as it was.
    """
    checkpoint_dir = check_checkpoint_directory(checkpoint_dir)
    check_apart(output_dir, {"checkpoint_dir": [checkpoint_dir]}, named=f"{field('output_dir')} {output_dir}")
    check_dtype(dtype)
    check_shard_size(max_shard_size)
    check_output_directory(output_dir, overwrite)
    model, tokenizer = load_openai_checkpoint(checkpoint_dir, dtype)
    return save_model_directory(model, tokenizer, output_dir, overwrite=overwrite, max_shard_size=max_shard_size)


def load_openai_checkpoint(
    checkpoint_dir: str | os.PathLike, dtype: str = "float32"
) -> tuple[GPTScratchForCausalLM, PreTrainedTokenizerBase]:
    """One of OpenAI's GPT-2 checkpoints as a GPTScratch model in `dtype` and GPT-2's tokenizer (see
    `convert_openai_checkpoint`); what `--init-from` reads when it is given such a directory."""
    checkpoint_dir = check_checkpoint_directory(checkpoint_dir)
    hparams = read_hparams(checkpoint_dir / "hparams.json")
    reader = open_checkpoint(checkpoint_dir, hparams)
    config = dict(
        vocab_size=hparams["n_vocab"],
        context_length=hparams["n_ctx"],
        emb_dim=hparams["n_embd"],
        n_heads=hparams["n_head"],
        n_layers=hparams["n_layer"],
        drop_rate=0.0,
        qkv_bias=True,
        tie_word_embeddings=True,
    )
    tensors = _read_tensors(reader, openai_variables(hparams), torch_dtype(dtype))
    return converted_model(config, tensors, checkpoint_dir)


# ---------------------------------------------------------------------------------------------------------------------
# Download: the seven files per size, each into a `.part` file that is renamed only once its size is right.


def _open_download(url: str, offset: int, timeout: float) -> tuple[Any, int, int | None]:
    """Opens `url` from byte `offset`; returns (response, the offset it actually starts at, the file's total size).

    A server that ignores the Range header answers 200 with the whole file: the download then starts over at 0.
    A 206 answer's Content-Range says where it starts; one without a readable Content-Range is an HTTPException.
    """
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    if response.status == 206:
        content_range = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", response.headers.get("Content-Range", "").strip())
        if content_range is None:
            response.close()
            raise http.client.HTTPException("a partial answer without a readable Content-Range")
        start, total = content_range.groups()
        return response, int(start), int(total) if total.isdigit() else None
    length = response.headers.get("Content-Length")
    return response, 0, int(length) if length is not None and length.isdigit() else None


def _download_file(urls: Sequence[str], destination: Path, timeout: float) -> None:
    """Downloads the first of `urls` that answers into `destination`, through `destination`.part.

    A `.part` left by an interrupted run is resumed with an HTTP Range request; the answer is written from the byte
    the server says it starts at (the start of the file when it ignores the Range), so a `.part` is never added to
    twice. The file gets its final name only when its size equals the size the server announced; a connection that
    drops midway keeps the `.part` for the next run. The directory is created only once a server has answered, so
    an offline run writes nothing.
    """
    partial = destination.with_name(destination.name + ".part")
    failures = []
    for url in urls:
        offset = partial.stat().st_size if partial.exists() else 0
        try:
            response, start, total = _open_download(url, offset, timeout)
        except urllib.error.HTTPError as error:
            if error.code == 416:  # the .part is not a prefix of this file (longer than it): start over
                partial.unlink()
                failures.append(f"{url} (HTTP 416 for the partial file; it was removed, run again)")
            else:
                failures.append(f"{url} (HTTP {error.code} {error.reason})")
            continue
        except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
            reason = error.reason if isinstance(error, urllib.error.URLError) else error
            failures.append(f"{url} ({reason})")
            continue
        if start > offset:  # a gap between what is held and what is sent: nothing to append to
            response.close()
            failures.append(f"{url} (answered from byte {start}, but only {offset} bytes are held)")
            continue
        with response:
            try:
                destination.parent.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise InputError(
                    f"cannot create {destination.parent} ({error.strerror}); choose a writable {field('models_dir')}"
                ) from error
            with (
                open(partial, "r+b" if start else "wb") as file,
                tqdm(
                    total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024, desc=destination.name
                ) as bar,
            ):
                file.seek(start)
                file.truncate()  # whatever the .part held past `start` is what this answer sends again
                try:
                    while chunk := response.read(DOWNLOAD_CHUNK_BYTES):
                        file.write(chunk)
                        bar.update(len(chunk))
                except (OSError, http.client.HTTPException) as error:
                    failures.append(f"{url} (stopped after {file.tell()} bytes: {first_line(error)})")
                    continue
        size = partial.stat().st_size
        if total is not None and size != total:
            if size > total:
                partial.unlink()
            failures.append(f"{url} (got {size} of {total} bytes)")
            continue
        os.replace(partial, destination)
        return
    kept = f"; {partial.name} is kept and the next run resumes it" if partial.exists() else ""
    raise InputError(
        f"cannot download {destination.name}: {'; '.join(failures)}{kept}; check the network connection, or put "
        f"OpenAI's files in {destination.parent} by hand and pass {field('checkpoint_dir')} {destination.parent}"
    )


def download_openai_checkpoint(
    size: str, models_dir: str | os.PathLike, base_urls: Sequence[str] = DOWNLOAD_BASE_URLS, timeout: float = 30.0
) -> Path:
    """Downloads OpenAI's seven files for GPT-2 `size` (124M, 355M, 774M or 1558M) into `models_dir`/`size`.

    Files already there are kept (a file gets its final name only after its size checked out); a partial download
    resumes. Each of `base_urls` is tried in turn (`{base_url}/{size}/{file}`). Offline, this fails with one
    InputError and leaves nothing behind. Returns the checkpoint directory, ready for `convert_openai_checkpoint`.
    """
    if size not in MODEL_SIZES:
        raise InputError(f"unknown GPT-2 size {size!r}; choose one of {', '.join(MODEL_SIZES)}")
    directory = Path(models_dir) / size
    for name in CHECKPOINT_FILES:
        if not (directory / name).is_file():
            _download_file([f"{url.rstrip('/')}/{size}/{name}" for url in base_urls], directory / name, timeout)
    return directory


def download_and_convert_openai_checkpoint(
    size: str,
    models_dir: str | os.PathLike,
    output_dir: str | os.PathLike | None = None,
    base_urls: Sequence[str] = DOWNLOAD_BASE_URLS,
    dtype: str = "float32",
    overwrite: bool = False,
    max_shard_size: str | int = "2GB",
) -> Path:
    """Downloads GPT-2 `size` into `models_dir`/`size` (see `download_openai_checkpoint`), then converts it into
    `output_dir` (by default `models_dir`/gpt2-`size`, e.g. models/gpt2-124m); returns the model directory.

    The output directory, dtype and shard size are checked before the download starts, so a refusal costs no
    download.
    """
    output_dir = Path(models_dir) / f"gpt2-{size.lower()}" if output_dir is None else Path(output_dir)
    check_dtype(dtype)
    check_shard_size(max_shard_size)
    check_output_directory(output_dir, overwrite)
    check_apart(output_dir, {"models_dir": [Path(models_dir) / size]}, named=f"{field('output_dir')} {output_dir}")
    checkpoint_dir = download_openai_checkpoint(size, models_dir, base_urls=base_urls)
    return convert_openai_checkpoint(
        checkpoint_dir, output_dir, dtype=dtype, overwrite=overwrite, max_shard_size=max_shard_size
    )
