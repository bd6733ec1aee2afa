"""The code's shape that review enforces: no function outside tests/ over 60 lines (from its `def`
to its last line), so a long procedure is read as named steps; and no import circle between the
modules of engine/, groklab/, api/ and worker/, so each layer reads from the bottom up."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 60
NOT_CODE = {"tests", "site", "build", "dist", "node_modules"}


def _sources() -> list[Path]:
    return sorted(
        path
        for path in ROOT.rglob("*.py")
        if not any(part in NOT_CODE or part.startswith(".") for part in path.relative_to(ROOT).parts[:-1])
    )


def long_functions(path: Path, root: Path = ROOT) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [
        f"{path.relative_to(root)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > MAX_LINES
    ]


def test_no_function_outside_tests_is_over_60_lines() -> None:
    sources = _sources()
    assert any(p.relative_to(ROOT).as_posix() == "worker/tasks.py" for p in sources)  # it looks where the code is
    found = [entry for path in sources for entry in long_functions(path)]
    assert found == [], "split these into named steps:\n" + "\n".join(found)


def test_the_check_finds_a_long_function(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    (tmp_path / "long.py").write_text(f"def long():\n{body}\n")
    assert long_functions(tmp_path / "long.py", tmp_path) == [f"long.py:1 long ({MAX_LINES + 1} lines)"]


PACKAGES = ("engine", "groklab", "api", "worker")


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(tree: ast.Module, modules: set[str]) -> Iterator[str]:
    """The modules of `modules` that `tree` imports, at its top or inside a function (an import on
    use is still a dependency), but not under `if TYPE_CHECKING:` (a type only, never run)."""
    typing_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for inner in ast.walk(node)
    }
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:  # `from package import module` names the module
                name = f"{node.module}.{alias.name}"
                yield name if name in modules else node.module


def import_cycles(root: Path, packages: tuple[str, ...] = PACKAGES) -> list[list[str]]:
    """Every set of modules that import one another in a circle (a package's __init__ does not
    count as imported by its own modules: Python runs it first anyway)."""
    paths = {_module_name(p, root): p for top in packages for p in (root / top).rglob("*.py") if "__pycache__" not in p.parts}
    edges = {
        name: {m for m in _imported(ast.parse(path.read_text()), set(paths)) if m != name and m in paths}
        for name, path in paths.items()
    }
    cycles = []
    seen: set[str] = set()
    for start in sorted(edges):  # the strongly connected groups, by reachability both ways
        if start in seen:
            continue
        forward = _reachable(start, edges)
        group = sorted(m for m in forward if start in _reachable(m, edges))
        seen.update(group)
        if len(group) > 1:
            cycles.append(group)
    return cycles


def _reachable(start: str, edges: dict[str, set[str]]) -> set[str]:
    found, todo = {start}, [start]
    while todo:
        for nxt in edges[todo.pop()] - found:
            found.add(nxt)
            todo.append(nxt)
    return found


def test_no_import_circle() -> None:
    assert import_cycles(ROOT) == [], "these modules import one another in a circle"


def test_the_check_finds_a_circle_through_an_import_on_use(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "a.py").write_text("from pkg.b import thing\n")
    (tmp_path / "pkg" / "b.py").write_text("def thing():\n    from pkg import a\n")
    (tmp_path / "pkg" / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\n")
    assert import_cycles(tmp_path, ("pkg",)) == [["pkg.a", "pkg.b"]]
