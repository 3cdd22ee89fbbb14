"""The package's layers import one way, and its reliance on Warp internals stays in one module."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import warp as wp

ROOT = Path(__file__).resolve().parents[1]
# Source folders and the package names they install as (see pyproject.toml).
SOURCES = {"diffenvs": ROOT / "diffenvs", "diffenvs.tasks": ROOT / "tasks", "diffenvs.baselines": ROOT / "baselines",
           "diffenvs.configs": ROOT / "configs"}
# Lower layers first; a module may import its own layer and the ones before it, never a later one.
LAYERS = [
    ("utilities", ("diffenvs.warp_util", "diffenvs.config", "diffenvs.render", "diffenvs.registration", "diffenvs.configs")),
    ("physics", ("diffenvs.sim",)),
    ("tape and task interface", ("diffenvs.task", "diffenvs.autodiff")),
    ("envs", ("diffenvs.env",)),
    ("interop", ("diffenvs.torch",)),
    ("tasks", ("diffenvs.tasks",)),
    ("baselines and CLI", ("diffenvs.baselines", "diffenvs.cli", "diffenvs.bench")),
]
HEAVY = ("torch", "stable_baselines3", "matplotlib", "ray")


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            if package == "diffenvs" and path.relative_to(folder).parts[0] in ("tasks", "baselines", "configs"):
                continue
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def layer_of(module: str) -> int | None:
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    return None


def imports(path: Path, *, top_level_only: bool = False) -> list[tuple[str, int]]:
    """(module, line) of every import in ``path``, inside functions too unless ``top_level_only``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.module, node.lineno)] + [(f"{node.module}.{a.name}", node.lineno) for a in node.names]
    return found


def test_every_module_has_a_layer():
    assert [name for name in modules() if name != "diffenvs" and layer_of(name) is None] == []


def test_layers_import_downwards_only():
    wrong = []
    for name, path in modules().items():
        mine = layer_of(name)
        if mine is None:  # the package's __init__ (registers the ids)
            continue
        for imported, line in imports(path):
            theirs = layer_of(imported)
            if theirs is not None and theirs > mine:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {name} ({LAYERS[mine][0]}) imports {imported} ({LAYERS[theirs][0]})")
    assert wrong == []


def test_the_layer_check_catches_an_upward_import(tmp_path):
    bad = tmp_path / "solver.py"
    bad.write_text("def f():\n    from diffenvs.autodiff import Trajectory\n", encoding="utf-8")
    assert [layer_of(m) for m, _ in imports(bad)] == [2, 2]  # found inside a function, and above physics


def test_the_core_package_imports_no_learning_library_at_module_level():
    wrong = [f"{name} imports {imported}" for name, path in modules().items()
             if not name.startswith(("diffenvs.baselines", "diffenvs.cli", "diffenvs.bench"))
             and name != "diffenvs.torch"  # the PyTorch interop, imported only by who asks for it
             for imported, _ in imports(path, top_level_only=True) if imported.split(".")[0] in HEAVY]
    assert wrong == []


def test_warp_internals_are_used_by_one_module_only():
    users = sorted(str(path.relative_to(ROOT)) for path in [*modules().values(), *(ROOT / "benchmarks").glob("*.py")]
                   if "_src" in path.read_text(encoding="utf-8"))
    assert users == ["diffenvs/warp_util.py"]


def test_warp_internals_still_behave_as_assumed():
    """Fails loudly when a Warp release moves what :mod:`diffenvs.warp_util` relies on."""
    from diffenvs.warp_util import forget_reads, record_adjoint, recording_tape, type_size_in_bytes

    assert type_size_in_bytes(wp.vec3) == 12 and type_size_in_bytes(wp.float64) == 8
    x = wp.array(np.array([1.0, 2.0]), dtype=float, requires_grad=True)
    calls = []
    assert recording_tape() is None and not record_adjoint(lambda: calls.append(1), [x])
    tape = wp.Tape()
    with tape:
        assert recording_tape() is tape
        assert record_adjoint(lambda: calls.append(1), [x])
    tape.backward()
    assert calls == [1]
    forget_reads(tape)  # walks the tape's launch records without error


@pytest.mark.parametrize("path", sorted((ROOT / "tasks").rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_task_files_stay_readable(path):
    assert len(path.read_text(encoding="utf-8").splitlines()) <= 420
