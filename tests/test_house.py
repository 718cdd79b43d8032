"""The house's rules, read from the source: import floors one way, no import cycle between any two modules, no
file over 400 lines. docs/DESIGN.md shows the same table."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "motionmae_ds"
MAX_LINES = 400

# part of the package -> the parts it may import (beside itself); read top-down, the floors of DESIGN.md
MAY_IMPORT: dict[str, set[str]] = {
    "models": set(),
    "data": set(),
    "config": {"models", "data"},
    "runtime": {"config", "models", "data"},
    "checkpoint": {"runtime", "config", "models", "data"},
    "builders": {"checkpoint", "runtime", "config", "models", "data"},
    "eval": {"builders", "checkpoint", "runtime", "config", "models", "data"},
    "train": {"eval", "builders", "checkpoint", "runtime", "config", "models", "data"},
    "tools": {"eval", "builders", "checkpoint", "runtime", "config", "models", "data"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(source: str, this: str, is_package: bool, known: dict[str, Path]) -> set[str]:
    """The package's modules that module ``this`` (its ``source``) imports anywhere (module level or inside a
    function): ``from pkg import name`` counts as importing the submodule ``pkg.name`` when there is one, else
    ``pkg``; relative imports are resolved against ``this``."""
    package = this if is_package else this.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("motionmae_ds"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("motionmae_ds"):
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in known else target)
    found.discard(this)
    return {m for m in found if m in known}


def part_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(path.read_text(), name, path.name == "__init__.py", known) for name, path in known.items()}


def test_every_part_of_the_package_is_in_the_table():
    parts = {part_of(m) for m in modules()} - {""}
    assert parts == set(MAY_IMPORT), f"parts missing from MAY_IMPORT (and DESIGN.md): {parts ^ set(MAY_IMPORT)}"


def test_imports_go_down_the_floors():
    wrong = [f"{m} imports {dep}" for m, deps in import_graph().items() for dep in sorted(deps)
             if part_of(dep) != part_of(m) and part_of(m) and part_of(dep) not in MAY_IMPORT[part_of(m)]]
    assert not wrong, "imports against the floors of docs/DESIGN.md:\n" + "\n".join(wrong)


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
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
                component = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.append(top)
                    if top == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
    return cycles


def test_no_import_cycle_between_any_two_modules():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles (modules that import each other, directly or through others):\n" + "\n".join(
        " <-> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"f"}, "f": set()}
    assert find_cycles(graph) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_imports_are_read_everywhere_and_resolved():
    known = {m: Path() for m in ("motionmae_ds.models", "motionmae_ds.models.vit", "motionmae_ds.models.targets",
                                 "motionmae_ds.train", "motionmae_ds.train.trainer", "motionmae_ds.data.loader")}
    source = ("import os\nfrom . import targets\nfrom .vit import Block\nfrom motionmae_ds.models import build\n"
              "def f():\n    from motionmae_ds.train import trainer\n    import motionmae_ds.data.loader\n")
    found = imports_of(source, "motionmae_ds.models.vit", False, known)
    assert found == {"motionmae_ds.models.targets", "motionmae_ds.models", "motionmae_ds.train.trainer",
                     "motionmae_ds.data.loader"}
    # in a package's __init__, "from . import x" is its own submodule
    assert imports_of("from . import vit\n", "motionmae_ds.models", True, known) == {"motionmae_ds.models.vit"}


@pytest.mark.parametrize("root", ["motionmae_ds", "launch", "bench", "tests"])
def test_no_file_over_400_lines(root):
    long = {str(p.relative_to(REPO)): n for p in sorted((REPO / root).rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines (split them by concern): {long}"


def test_test_modules_have_unique_names():
    # the test folders are not packages: pytest imports each test file by its bare name, so two files of one
    # name stop the whole collection ("import file mismatch")
    names: dict[str, list[str]] = {}
    for p in sorted((REPO / "tests").rglob("*.py")):
        if p.name != "conftest.py":
            names.setdefault(p.name, []).append(str(p.relative_to(REPO)))
    assert not {k: v for k, v in names.items() if len(v) > 1}
