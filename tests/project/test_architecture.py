"""The layout is the architecture, and stays so: imports only go down the layers, no module
imports itself back through a loop, no import hides inside a function, and modules and
functions stay small enough to read. Read from the code with `ast`, as it is on disk."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.settings import ROOT

PACKAGE = ROOT / "followup"

#: The layers, lowest first: a module may import from its own layer and the ones below.
LAYERS: list[tuple[str, ...]] = [
    ("followup.errors", "followup.logs", "followup.owners"),
    ("followup.domain",),
    ("followup.config",),
    ("followup.storage",),
    ("followup.messages",),
    ("followup.runtime", "followup.processes"),
    ("followup.importing", "followup.planning"),
    ("followup.delivery",),
    ("followup.dryrun",),
    ("followup.service",),
    ("followup.api",),
    ("followup.cli",),
    ("followup", "followup.__main__"),
]

MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80
#: Functions allowed to be longer, each with its reason.
LONG_FUNCTIONS = {
    "followup.storage.migrations.versions.0001_initial_schema:upgrade": (
        "a migration is history: it is never edited once shipped"
    ),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> Iterator[tuple[str, Path, ast.Module]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        yield module_name(path), path, ast.parse(path.read_text(encoding="utf-8"))


def layer(module: str) -> int:
    """The layer of a module: that of the longest prefix listed."""
    best, found = -1, -1
    for number, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, found = len(prefix), number
    assert found >= 0, f"{module} is in no layer: add it to LAYERS"
    return found


def followup_imports(module: str, tree: ast.Module) -> Iterator[tuple[str, int, bool]]:
    """(module imported, line, whether the import is inside a function or class body) for
    every import of a followup module. `from followup.x import y` counts y when y is a
    module of the package."""
    top_level = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        nested = id(node) not in top_level
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "followup":
                    yield alias.name, node.lineno, nested
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] != "followup":
                continue
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                path = ROOT / Path(*candidate.split("."))
                is_module = path.with_suffix(".py").exists() or path.is_dir()
                yield (candidate if is_module else node.module), node.lineno, nested


def test_every_module_is_in_a_layer() -> None:
    for name, _, _ in modules():
        layer(name)


def test_imports_only_go_down_the_layers() -> None:
    upward = [
        f"{path.relative_to(ROOT)}:{line}: {name} (layer {layer(name)}) imports {target} "
        f"(layer {layer(target)})"
        for name, path, tree in modules()
        for target, line, _ in followup_imports(name, tree)
        if layer(target) > layer(name)
    ]
    assert upward == []


def test_no_import_hides_in_a_function() -> None:
    """An import of the package's own code inside a function dodges a loop or a layer."""
    hidden = [
        f"{path.relative_to(ROOT)}:{line}: {target}"
        for name, path, tree in modules()
        for target, line, nested in followup_imports(name, tree)
        if nested
    ]
    assert hidden == []


def test_no_module_imports_itself_back() -> None:
    graph: dict[str, set[str]] = {}
    for name, _, tree in modules():
        graph[name] = {t for t, _, _ in followup_imports(name, tree) if t != name}
    # The package's face re-exports the API; a submodule's import of the package itself
    # (`import followup`) is not a loop through any module.
    graph["followup"] = set()
    visiting: list[str] = []
    done: set[str] = set()
    loops: list[list[str]] = []

    def visit(node: str) -> None:
        if node in done or node not in graph:
            return
        if node in visiting:
            loops.append([*visiting[visiting.index(node) :], node])
            return
        visiting.append(node)
        for target in sorted(graph[node]):
            visit(target)
        visiting.pop()
        done.add(node)

    for node in sorted(graph):
        visit(node)
    assert loops == []


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: module_name(p))
def test_modules_and_functions_are_small(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    lines = len(text.splitlines())
    assert lines <= MAX_MODULE_LINES, f"{path.relative_to(ROOT)}: {lines} lines"
    long = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            size = (node.end_lineno or node.lineno) - node.lineno + 1
            key = f"{module_name(path)}:{node.name}"
            if size > MAX_FUNCTION_LINES and key not in LONG_FUNCTIONS:
                long.append(f"{key} ({size} lines)")
    assert long == []


def test_every_exception_still_needs_its_reason() -> None:
    """An exception whose function is gone or short again is taken off the list."""
    for key in LONG_FUNCTIONS:
        module, _, function = key.partition(":")
        path = ROOT / Path(*module.split(".")).with_suffix(".py")
        tree = ast.parse(path.read_text(encoding="utf-8"))
        sizes = [
            (node.end_lineno or node.lineno) - node.lineno + 1
            for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == function
        ]
        assert sizes and max(sizes) > MAX_FUNCTION_LINES, key


def test_the_architecture_page_names_every_module_and_only_real_ones() -> None:
    """docs/architecture.md draws the layout: every module and folder it names (a path under
    followup/, or a folder of the repository) exists, and every module of the package is
    named."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    named = set(re.findall(r"`((?:[a-z_]+/)*[a-z_]+(?:\.py|/))`", text))
    assert {"domain/decision.py", "storage/ledger.py", "delivery/batch.py"} <= named
    missing = sorted(n for n in named if not ((PACKAGE / n).exists() or (ROOT / n).is_dir()))
    assert missing == [], f"named but not in followup/: {missing}"
    unnamed = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if path.name in ("__init__.py", "__main__.py") or relative.startswith(
            "storage/migrations/"
        ):
            continue
        if relative not in named:
            unnamed.append(relative)
    assert unnamed == [], f"not described in docs/architecture.md: {unnamed}"
