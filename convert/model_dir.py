"""The one model directory format: what `save_pretrained` writes, written atomically, and loaded with clear errors."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from modeling_gptscratch import GPTScratchConfig, GPTScratchForCausalLM, load_tokenizer
from safetensors import SafetensorError
from transformers import PreTrainedTokenizerBase

from convert.commands import UsageError


def check_output_directory(target: str | os.PathLike, overwrite: bool = False) -> Path:
    """The absolute `target` if a model directory may be written there, else a UsageError; writes nothing.

    `atomic_directory` checks this too; a command that reads for minutes before writing calls it first as well,
    so a refused output is reported before that work instead of after it.
    """
    target = Path(target).absolute()
    if target.exists() and not target.is_dir():
        raise UsageError(f"output {target} exists and is not a directory; choose another path")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise UsageError(f"output directory {target} exists and is not empty; pass --overwrite or choose another")
    return target


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yields an empty temporary sibling of `target`; renames it to `target` only when the block succeeds.

    A crash or error leaves `target` as it was (absent, or the previous good version) and removes the temporary.
    An existing non-empty `target` is refused unless `overwrite`, in which case it is replaced at the end.
    """
    target = check_output_directory(target, overwrite)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    except OSError as error:
        raise UsageError(f"cannot write to {target.parent}: {error.strerror}; choose a writable location") from error
    try:
        yield staging
        _give_default_permissions(staging)
        if target.exists():
            # Two renames: the old version is moved aside before the new one takes its name.
            retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, retired / target.name)
            os.replace(staging, target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _give_default_permissions(staging: Path) -> None:
    """Gives the staged tree the modes a plain mkdir/open would (0777/0666 less the umask) instead of mkdtemp's
    private 0700 and the 0600 of writers that go through temporary files: outputs are there to be read.
    A .git folder keeps the modes git chose."""
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)
    for path in staging.rglob("*"):
        if ".git" not in path.relative_to(staging).parts and not path.is_symlink():
            path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def save_model_directory(
    model: GPTScratchForCausalLM,
    tokenizer: PreTrainedTokenizerBase | None,
    target: str | os.PathLike,
    overwrite: bool = False,
    max_shard_size: str = "2GB",
) -> Path:
    """Writes a complete model directory atomically: config.json (with auto_map), model.safetensors (sharded past
    `max_shard_size`), generation_config.json, modeling_gptscratch.py and, if given, the tokenizer files."""
    with atomic_directory(target, overwrite=overwrite) as staging:
        model.save_pretrained(staging, max_shard_size=max_shard_size)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
    return Path(target)


def load_model_directory(
    directory: str | os.PathLike, **from_pretrained_kwargs
) -> tuple[GPTScratchForCausalLM, PreTrainedTokenizerBase]:
    """Loads a model directory (trained or converted) and its tokenizer, with a clear error for anything else."""
    directory = Path(directory)
    config_file = directory / "config.json"
    if not directory.is_dir():
        raise UsageError(f"model directory {directory} does not exist; pass a directory written by gptscratch")
    if not config_file.is_file():
        raise UsageError(f"{directory} holds no config.json; pass a model directory written by gptscratch")
    try:
        model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UsageError(f"{config_file} is not valid JSON ({error}); the model directory is damaged") from error
    if model_type != GPTScratchConfig.model_type:
        raise UsageError(
            f"{directory} holds a {model_type!r} model, not a gptscratch one; pass a directory written by gptscratch"
        )
    try:
        model = GPTScratchForCausalLM.from_pretrained(directory, **from_pretrained_kwargs)
    except (OSError, ValueError, SafetensorError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UsageError(f"cannot load the model in {directory} ({first_line}); the weights are missing or damaged, "
                         "save or convert the model again") from error
    try:
        tokenizer = load_tokenizer(directory)
    except (OSError, ValueError) as error:
        raise UsageError(f"{directory} holds no loadable tokenizer ({error}); save one beside the model") from error
    return model, tokenizer
