"""Publish a model directory to a local hub directory as a complete, self-contained, versioned model repository.

`gptscratch-push --model DIR --hub-dir HUB --repo-id NAMESPACE/NAME [--format gptscratch|gpt2|gguf|onnx]` writes
`HUB/NAMESPACE/NAME`: weights (safetensors), config, generation config, tokenizer, a model card (README.md) and,
in the default gptscratch format, `modeling_gptscratch.py` with `auto_map`, so `from_pretrained(path,
trust_remote_code=True)` loads it where this project is absent. The other formats publish `gptscratch-export`'s
output instead (convert.export): `--format gpt2` the plain GPT-2 directory (no remote code), `gguf` the GGUF file
`model.gguf` for llama.cpp (tokenizer inside), `onnx` `model.onnx` with its generation config and tokenizer for ONNX
Runtime. The training record (summary, metrics, loss plot) travels along when the directory has one.

Versions: the repository is a git repository with one commit per push. A push builds the new version in a hidden
sibling (a copy of the old history, its objects hard-linked rather than copied, plus the new files, committed there)
and swaps it in by rename, so a reader sees the old repository or the new one, never a mix, and `git log` /
`git show` reach every earlier push. A push killed half-way is tidied up by the next push to the same repo id.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from common.commands import ArgumentParser, run_command
from common.errors import InputError, field
from common.files import check_apart, check_writable, read_json_object
from common.model_card import model_card

PROG = "gptscratch-push"
FORMATS = ("gptscratch", "gpt2", "gguf", "onnx")
# The training record a trained model directory holds beside the model; copied into the repository when present.
TRAINING_FILES = ("training_summary.json", "metrics.jsonl", "loss_plot.png", "loss_plot.pdf")
# The Hub's rule for each part of a repo id: letters, digits, '-', '_', '.', at most 96 characters, starting and
# ending with a letter or digit. It also keeps a part from being '.', '..', empty or a path.
_REPO_PART = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?")
_LICENSE = re.compile(r"[a-z0-9][a-z0-9.+-]*")  # the Hub's license identifiers (apache-2.0, mit, cc-by-4.0, other)
_GIT_IDENTITY = ("-c", "user.name=gptscratch-push", "-c", "user.email=gptscratch-push@localhost")


def repo_path(hub_dir: str | os.PathLike, repo_id: str) -> Path:
    """`HUB/NAMESPACE/NAME` for a valid repo id; an InputError for any id that is not two plain names (so `../x`,
    absolute paths, empty parts and extra parts, which could land outside HUB, are refused)."""
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(_REPO_PART.fullmatch(part) and ".." not in part for part in parts):
        raise InputError(
            f"repo id {repo_id!r} is not NAMESPACE/NAME (two names of letters, digits, '-', '_' or '.', each starting "
            f"and ending with a letter or digit); pass for example {field('repo_id')} alice/tiny-gpt"
        )
    return Path(hub_dir).absolute() / parts[0] / parts[1]


def _git(repo: Path, *args: str) -> str:
    """Runs git in `repo` with a fixed identity and no hooks or signing from the user's setup; returns stdout."""
    # GIT_DIR and friends (set when running inside a git hook) would point git at another repository.
    env = {key: value for key, value in os.environ.items() if not key.startswith("GIT_")}
    command = ["git", *_GIT_IDENTITY, "-c", "commit.gpgsign=false", "-c", "core.hooksPath=/dev/null", *args]
    result = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"git {args[0]} failed in {repo}: {result.stderr.strip()}")
    return result.stdout.strip()


@contextlib.contextmanager
def _repo_lock(target: Path) -> Iterator[None]:
    """Serialises pushes to one repo id: two pushes that both copied the old history would otherwise each commit on
    top of it, and the rename of the second would drop the first one's version."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        lock = open(target.parent / f".{target.name}.lock", "a")
    except OSError as error:
        raise InputError(
            f"cannot write to {target.parent}: {error.strerror}; choose a writable {field('hub_dir')}"
        ) from error
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def read_training_summary(model_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The trainer's `training_summary.json` in `model_dir`, or None for a directory without one (converted)."""
    path = Path(model_dir) / "training_summary.json"
    if not path.exists():
        return None
    return read_json_object(path, "training summary", "fix or remove it")


def _copy_history(repo: Path, staging: Path) -> None:
    """Copies `repo`/.git into `staging` for the next version, hard-linking the object files instead of copying
    them: git never changes an object file once written, and they are the bulk of the folder (every earlier
    version's weights), so a push costs the new version's size, not the whole history's. Where the file system
    refuses hard links, the objects are copied."""
    objects = repo / ".git" / "objects"

    def link_objects(source: str, destination: str) -> None:
        if Path(source).is_relative_to(objects):
            try:
                os.link(source, destination)
                return
            except OSError:
                pass
        shutil.copy2(source, destination)

    shutil.copytree(repo / ".git", staging / ".git", symlinks=True, copy_function=link_objects)


def push_to_local_hub(
    model_dir: str | os.PathLike,
    hub_dir: str | os.PathLike,
    repo_id: str,
    format: str = "gptscratch",
    license: str = "apache-2.0",
    message: str | None = None,
) -> Path:
    """Publishes `model_dir` as `hub_dir/NAMESPACE/NAME` and returns that path.

    format "gptscratch": save_pretrained's files (safetensors, config.json with auto_map, generation_config.json,
    modeling_gptscratch.py) and the tokenizer; "gpt2", "gguf", "onnx": that export (see convert.export), GGUF as
    `model.gguf`, each in its default dtype. Every format gets a README.md model card and, when `model_dir` has them,
    training_summary.json, metrics.jsonl and the loss plots. A repeated push replaces the repository atomically as a
    new git commit. Bad input (repo id, hub directory, model directory, a model GPT-2 cannot express for gpt2 and
    gguf) raises InputError before anything is written.
    """
    if format not in FORMATS:
        raise InputError(f"format {format!r} is unknown; choose one of: {', '.join(FORMATS)}")
    if not _LICENSE.fullmatch(license):
        raise InputError(f"license {license!r} is not a Hub license identifier; pass e.g. apache-2.0, mit or other")
    target = repo_path(hub_dir, repo_id)
    check_apart(target, {"model": [model_dir]}, named=f"the repository {target}")
    check_writable(hub_dir, "hub directory", "hub_dir")
    if target.exists() and not (target / ".git").is_dir() and (not target.is_dir() or any(target.iterdir())):
        raise InputError(
            f"{target} exists and is not a repository written by gptscratch-push; move it or pick another repo id"
        )
    if shutil.which("git") is None:
        raise InputError("git is not installed; install it (the local hub keeps each push as a git commit)")
    # Imported only now: the checks above refuse a mistyped repo id or hub directory at once, not after the
    # seconds that torch and transformers take to load.
    from common.files import atomic_directory, recover_interrupted_writes
    from common.model_dir import load_model_weights, read_model_directory, weights_size, with_chat_template
    from convert.export import GGUF_FILE, check_export, refuse_untied_head, weights_dtype, write_export

    model_dir = Path(model_dir)
    config, tokenizer = read_model_directory(model_dir)
    if format in ("gpt2", "gguf"):
        refuse_untied_head(config, f"{field('model')} {model_dir}")  # before the weights load
    summary = read_training_summary(model_dir)
    present = [name for name in TRAINING_FILES if (model_dir / name).is_file()]
    dtype = None if format == "gptscratch" else check_export(format, None)
    loaded_as = None if format == "gptscratch" else weights_dtype(format, dtype)
    model = load_model_weights(model_dir, config, **({"dtype": loaded_as} if loaded_as else {}))

    with _repo_lock(target):
        recover_interrupted_writes(target)  # under the lock: any staging folder left now is a dead push's
        # The new files, and git's copy of them in its objects (weights barely compress).
        with atomic_directory(target, overwrite=True, what="repository", size=2 * weights_size(model)) as staging:
            if (target / ".git").is_dir():
                _copy_history(target, staging)
            else:
                _git(staging, "init", "--quiet", "--initial-branch=main")
            if format == "gptscratch":
                model.save_pretrained(staging)
                with_chat_template(tokenizer).save_pretrained(staging)
            else:
                path = staging / GGUF_FILE if format == "gguf" else staging
                write_export(format, model, tokenizer, path, dtype, name=repo_id.split("/")[1])
            for name in present:
                shutil.copy2(model_dir / name, staging / name)
            card = model_card(
                repo_id, model, tokenizer, summary, "loss_plot.png" in present, format, license, repo_id=repo_id
            )
            (staging / "README.md").write_text(card, encoding="utf-8")
            _git(staging, "add", "--all")
            # The directory's name, not its path: the history is published, the pusher's file system is not.
            default_message = f"Push {model_dir.absolute().name} ({format})"
            # --allow-empty: pushing unchanged files is still a push, and every push is one version.
            _git(staging, "commit", "--quiet", "--allow-empty", "-m", message or default_message)
    return target


def build_parser() -> argparse.ArgumentParser:
    """The flags of `gptscratch-push`: the model directory, where it goes (hub directory and repo id) and how
    (format, license, commit message)."""
    parser = ArgumentParser(
        prog=PROG, description="Publish a model directory to a local hub directory as a versioned model repository."
    )
    parser.add_argument("--model", required=True, help="model directory (trained or converted)")
    parser.add_argument(
        "--hub-dir", required=True, help="root of the local hub; the repository goes to HUB/NAMESPACE/NAME"
    )
    parser.add_argument("--repo-id", required=True, help="NAMESPACE/NAME, e.g. alice/tiny-gpt")
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="gptscratch",
        help="gptscratch (default: this project's model file, trust_remote_code=True), gpt2 (plain GPT2LMHeadModel), "
        "gguf (llama.cpp) or onnx (ONNX Runtime)",
    )
    parser.add_argument("--license", default="apache-2.0", help="license id for the model card (default apache-2.0)")
    parser.add_argument("--message", default=None, help="commit message of this version")
    return parser


def _main(argv: Sequence[str] | None) -> None:
    args = build_parser().parse_args(argv)
    target = push_to_local_hub(args.model, args.hub_dir, args.repo_id, args.format, args.license, args.message)
    commit = _git(target, "rev-parse", "--short", "HEAD")
    versions = _git(target, "rev-list", "--count", "HEAD")
    print(f"pushed {args.repo_id} to {target} (commit {commit}, version {versions})")


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of `gptscratch-push` (also `python -m use.push`); `argv` defaults to the command line."""
    run_command(PROG, lambda: _main(argv))


if __name__ == "__main__":
    main()
