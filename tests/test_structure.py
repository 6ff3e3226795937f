"""The package's shape: every module imports, no import circles, layers point one way."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import daemon

PACKAGE = Path(daemon.__file__).parent
MAX_LINES = 300
MAX_TOP_LEVEL = 12
# Each room and the rooms it must never import (what sits above it). Unlisted rooms (cli,
# doctor) are the top and may import anything.
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "daemon.errors": ("daemon.",),
    "daemon.clean": ("daemon.",),
    "daemon.records": ("daemon.fs", "daemon.sidecar", "daemon.pipeline", "daemon.watch",
                       "daemon.service", "daemon.api", "daemon.distributed", "daemon.cli",
                       "daemon.dataset"),
    "daemon.fs": ("daemon.config", "daemon.records", "daemon.sidecar", "daemon.pipeline",
                  "daemon.watch", "daemon.service", "daemon.api", "daemon.distributed",
                  "daemon.dataset"),
    "daemon.config": ("daemon.sidecar", "daemon.pipeline", "daemon.watch", "daemon.service",
                      "daemon.api", "daemon.distributed", "daemon.cli", "daemon.dataset"),
    "daemon.sidecar": ("daemon.pipeline", "daemon.watch", "daemon.service", "daemon.api",
                       "daemon.distributed", "daemon.cli", "daemon.dataset"),
    "daemon.dataset": ("daemon.pipeline", "daemon.watch", "daemon.service", "daemon.api",
                       "daemon.distributed", "daemon.cli"),
    "daemon.pipeline": ("daemon.watch", "daemon.service", "daemon.api", "daemon.distributed",
                        "daemon.cli", "daemon.dataset"),
    "daemon.watch": ("daemon.service", "daemon.api", "daemon.distributed", "daemon.cli"),
    "daemon.service": ("daemon.cli",),
}  # fmt: skip


def module_files() -> dict[str, Path]:
    """Module name -> file, for every module of the package (packages by their __init__)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports_of(path: Path) -> set[str]:
    """The daemon modules a file imports at run time (TYPE_CHECKING blocks left out)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    checking = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for inner in ast.walk(node)
    }
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in checking:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    known = module_files()
    return {name for name in names if name in known and name.startswith("daemon")}


def test_every_module_imports() -> None:
    """Each module of the package imports on its own (no hidden order dependency)."""
    for info in pkgutil.walk_packages([str(PACKAGE)], prefix="daemon."):
        importlib.import_module(info.name)


def test_package_has_no_import_circles() -> None:
    """No chain of run-time imports leads from a module back to itself."""
    graph = {name: imports_of(path) - {name} for name, path in module_files().items()}
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = "open"
        for target in sorted(graph.get(name, ())):
            if target in trail[: len(trail) - 1] or state.get(target) == "open":
                cycle = [*trail[trail.index(target) :], target] if target in trail else trail
                pytest.fail("import circle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, [*trail, target])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


@pytest.mark.parametrize("room", sorted(FORBIDDEN))
def test_layer_imports_nothing_above_it(room: str) -> None:
    """Records and errors at the bottom, stages above, the service and the CLI on top."""
    offences = []
    for name, path in module_files().items():
        if name != room and not name.startswith(room + "."):
            continue
        for target in imports_of(path):
            if any(
                target.startswith(bad) and not target.startswith(room) for bad in FORBIDDEN[room]
            ):
                offences.append(f"{name} imports {target}")
    assert offences == []


def test_modules_are_small_and_the_top_level_is_not_crowded() -> None:
    """No module over 300 lines; at most a dozen modules directly in daemon/."""
    files = module_files()
    long = [f"{name}: {len(p.read_text().splitlines())}" for name, p in files.items()
            if len(p.read_text().splitlines()) > MAX_LINES]  # fmt: skip
    top = [name for name, p in files.items() if p.parent == PACKAGE and p.name != "__init__.py"]
    assert long == []
    assert len(top) <= MAX_TOP_LEVEL, top


def test_every_package_says_what_it_owns_and_may_import() -> None:
    """Each subpackage's __init__ has a docstring naming what it may import."""
    for init in sorted(PACKAGE.glob("*/**/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc, f"{init} has no docstring"
        assert "import" in doc, f"{init}'s docstring does not say what it may import"
