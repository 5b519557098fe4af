"""The project's imports, read from its sources: they run one way, with no circle, in the layers the README draws.

Every import statement counts, those inside functions too: an import moved into a function still ties the modules.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from conftest import REPO_ROOT

PACKAGES = ("common", "train", "convert", "use")


def project_modules() -> dict[str, Path]:
    """Module name -> source file, for the model file and every module of the project's packages."""
    modules = {"modeling_gptscratch": REPO_ROOT / "modeling_gptscratch.py"}
    for package in PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            parts = path.relative_to(REPO_ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imported_project_modules(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules a file imports (`from train import loop` imports train.loop)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        found.update(name for name in names if name in modules)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imported_project_modules(path, modules) - {name} for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A circle of imports as [a, b, ..., a], or None (depth-first search, colouring modules on the current path)."""
    on_path: list[str] = []
    done: set[str] = set()

    def visit(module: str) -> list[str] | None:
        if module in on_path:
            return on_path[on_path.index(module) :] + [module]
        if module in done:
            return None
        on_path.append(module)
        for imported in sorted(graph[module]):
            cycle = visit(imported)
            if cycle:
                return cycle
        on_path.pop()
        done.add(module)
        return None

    for module in sorted(graph):
        cycle = visit(module)
        if cycle:
            return cycle
    return None


def test_the_cycle_finder_finds_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_of_the_project_imports_itself_back():
    graph = import_graph()
    assert len(graph) > 20  # the reader found the project
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_imports_run_down_the_layers():
    graph = import_graph()

    def imports_of(prefix: str) -> set[str]:
        return {
            imported
            for module, imported_set in graph.items()
            if module.split(".")[0] == prefix
            for imported in imported_set
        }

    assert graph["modeling_gptscratch"] == set()  # the model is copied into model directories: it stands alone
    assert {module.split(".")[0] for module in imports_of("common")} <= {"common", "modeling_gptscratch"}
    # A run may start from a model the converters read (--init-from); training never needs what uses a model.
    assert not {module for module in imports_of("train") if module.startswith("use")}
    assert not {module for module in imports_of("convert") if module.startswith(("train", "use"))}
    # Engines get what they need handed in: they never import the orchestration or the command above them.
    for engine in ("train.loop", "train.trainer"):
        assert not graph[engine] & {"train.run", "train.cli"}, engine
    # Options are read and checked before torch loads: the standard library only, below them.
    assert graph["train.options"] <= {"common.errors", "train.checks"}
    assert graph["train.checks"] <= {"common.errors"}


def command_modules() -> set[str]:
    """The command layer: the modules that define a command's `main` or run one (`python -m`), and the helpers
    every command shares."""
    found = {"common.commands", *(name for name in project_modules() if name.endswith(".__main__"))}
    for name, path in project_modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if any(isinstance(node, ast.FunctionDef) and node.name == "main" for node in tree.body):
            found.add(name)
    return found


# A flag of this project's commands: dashes and lower-case words (another program's, such as lm-eval's
# --include_path, has underscores).
FLAG = re.compile(r"(?<![\w-])--[a-z]+(?:-[a-z]+)*(?![\w])")


def test_below_the_command_layer_no_module_spells_a_flag_or_parses_the_command_line():
    """The library names what it was given by field (common.errors.field); only commands speak in flags, so a
    Python caller's errors name the arguments it passed. Docstrings may show command lines; messages may not."""
    commands = command_modules()
    assert {"train.cli", "train.prepare", "convert.cli", "use.generate", "use.evaluate", "use.push"} <= commands
    graph = import_graph()
    for name, path in project_modules().items():
        if name in commands:
            continue
        assert not graph[name] & {"train.cli", "common.commands"}, f"{name} imports the command layer"
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and ast.get_docstring(node) is not None
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                assert not FLAG.search(node.value), f"{name}:{node.lineno} spells a flag: {node.value!r}"


def test_no_file_outside_the_tests_runs_past_its_length():
    """Rooms a reader takes in: 600 lines at most, the model file (which travels alone into every model directory)
    700."""
    for path in [REPO_ROOT / "modeling_gptscratch.py", *project_modules().values(), *REPO_ROOT.glob("benchmarks/*.py")]:
        limit = 700 if path.name == "modeling_gptscratch.py" else 600
        lines = len(path.read_text(encoding="utf-8").splitlines())
        assert lines <= limit, f"{path.relative_to(REPO_ROOT)} has {lines} lines"


def test_tokenising_workers_import_only_what_tokenising_needs():
    """Spawned tokenising workers import train.tokenizing alone: it must not pull in torch, transformers or datasets
    (hundreds of megabytes and seconds per worker); tiktoken, which encodes, is a dependency as light as tokenizers."""
    tree = ast.parse((REPO_ROOT / "train" / "tokenizing.py").read_text(encoding="utf-8"))
    imported = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    imported |= {
        node.module.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
    }
    standard = {"__future__", "os", "json", "collections", "dataclasses"}
    # tiktoken_ext: tiktoken's own encodings' definitions, shipped in the tiktoken package.
    assert imported <= standard | {"numpy", "tokenizers", "tiktoken", "tiktoken_ext"}, imported


def test_the_options_standard_library_copy_of_the_preset_names_matches_the_model():
    from modeling_gptscratch import PRESETS
    from train.options import PRESET_NAMES

    assert PRESET_NAMES == tuple(PRESETS)
