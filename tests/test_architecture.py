"""The house's rules, read from the code (docs/design.md, "Where things live"): no import circle
among the product's modules (lazy and ``TYPE_CHECKING`` imports included), imports only down
the layers, no function longer than a screen, one spelling for the expert key and one version."""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("messages", "agent", "controller", "moe2")
# who may import whom: messages at the ground, agent and controller apart above it, moe2 on top
MAY_IMPORT = {
    "messages": {"messages"},
    "agent": {"agent", "messages"},
    "controller": {"controller", "messages"},
    "moe2": set(PACKAGES),
}
LONGEST_FUNCTION_LINES = 100


def modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


MODULES = modules()


def _resolve(name: str) -> str | None:
    """The product module an import names (the longest known prefix), or None."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imported(module: str, node: ast.AST) -> Iterator[str]:
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            here = module.split(".")
            if MODULES[module].name != "__init__.py":
                here = here[:-1]
            here = here[: len(here) - (node.level - 1)]
            base = ".".join([*here, *([node.module] if node.module else [])])
        for alias in node.names:
            yield f"{base}.{alias.name}" if _resolve(f"{base}.{alias.name}") else base


def import_graph() -> dict[str, set[str]]:
    """Every import of every module, wherever it stands (top, function, TYPE_CHECKING)."""
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        targets = graph.setdefault(module, set())
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            for name in _imported(module, node):
                target = _resolve(name)
                if target is not None and target != module:
                    targets.add(target)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    found.append(sorted(group))
    return found


def test_the_checker_finds_a_circle_and_a_layer_breach() -> None:
    graph = {"a.x": {"a.y"}, "a.y": {"a.z"}, "a.z": {"a.x"}, "b.w": set()}
    assert circles(graph) == [["a.x", "a.y", "a.z"]]


def test_no_import_circle_among_the_products_modules() -> None:
    assert circles(import_graph()) == []


def test_imports_only_go_down_the_layers() -> None:
    breaches = [
        f"{module} imports {target}"
        for module, targets in sorted(import_graph().items())
        for target in sorted(targets)
        if target.split(".")[0] not in MAY_IMPORT[module.split(".")[0]]
    ]
    assert breaches == []


def test_no_function_longer_than_a_screen() -> None:
    long = [
        f"{path.relative_to(ROOT)}::{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path in MODULES.values()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and (node.end_lineno or node.lineno) - node.lineno + 1 > LONGEST_FUNCTION_LINES
    ]
    assert long == []


# "expert@agent" built or split by hand: f"{…}@{…}", .partition("@"), .split("@"), "@" + …
HAND_KEY = re.compile(r"""\}@\{|\.r?partition\(["']@["']\)|\.r?split\(["']@["']|["']@["']\s*\+""")


def test_the_expert_key_is_spelled_in_one_module() -> None:
    spelled = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in MODULES.values()
        if path != ROOT / "messages" / "expert_key.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if HAND_KEY.search(line)
    ]
    assert spelled == []


def test_the_version_is_written_once() -> None:
    written = [
        str(path.relative_to(ROOT))
        for path in MODULES.values()
        if re.search(r"^__version__\s*=", path.read_text(), re.MULTILINE)
    ]
    assert written == ["messages/version.py"]
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {
        "attr": "messages.version.__version__"
    }
