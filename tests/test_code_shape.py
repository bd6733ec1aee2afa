"""The code's shape that review enforces: no function outside tests/ over 60 lines (from its `def`
to its last line), so a long procedure is read as named steps."""

from __future__ import annotations

import ast
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
