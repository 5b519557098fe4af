"""Checks shared by the command tests: how a refusal must look, running a command's `main` in-process or in a
fresh interpreter, and fingerprints of what a command wrote."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import REPO_ROOT


def assert_one_line_error(result: subprocess.CompletedProcess[str], prog: str, *names: str) -> None:
    """Exit status 2 and exactly one stderr line, `PROG: error: ...`, naming each of `names`.

    Strict on purpose: a traceback, a warning or a progress bar before the error (tqdm's carriage returns count as
    line breaks here) all fail it.
    """
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), result.stderr
    for name in names:
        assert name in lines[0], (name, lines[0])


def run_main(
    main: Callable[[Sequence[str]], None], argv: Sequence[object], capture: pytest.CaptureFixture[str]
) -> subprocess.CompletedProcess[str]:
    """Runs a command's `main` on `argv` (paths become strings) in this process, so no seconds go to importing
    torch again, and returns its exit status and what it printed (`capture` is capsys or capfd), as a finished
    subprocess would."""
    argv = [str(arg) for arg in argv]
    capture.readouterr()  # drop what earlier steps of the test printed
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capture.readouterr()
    return subprocess.CompletedProcess(argv, exit_info.value.code or 0, captured.out, captured.err)


def file_listing(root: Path) -> dict[str, tuple[int, int] | None]:
    """Every path under root; for files their size and modification time (folders' own times move whenever a
    temporary file comes and goes, so they are left out). Equal before and after: nothing was written."""
    return {
        str(path.relative_to(root)): (path.stat().st_size, path.stat().st_mtime_ns) if path.is_file() else None
        for path in sorted(root.rglob("*"))
    }


def file_tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under root with its size and modification time: a fingerprint of what was written."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Runs `python ARGS` in a fresh interpreter (seconds to import torch and transformers: tests using it are slow)."""
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)


def run_clis(commands: list[list[str]]) -> list[subprocess.CompletedProcess[str]]:
    """Runs independent commands two at a time (each spends seconds importing torch and transformers)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(lambda command: run_cli(*command), commands))
