"""No module of pullgate is imported inside a function to dodge a cycle (read from the
source; import-linter's contracts run in tests/integration/test_layers.py)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


PACKAGE = ROOT / "proxy"


def _function_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    found = []
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            for node in ast.walk(fn):
                if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "proxy" for a in node.names):
                    found.append(node)
                elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "proxy":
                    found.append(node)
    return found


def test_an_import_inside_a_function_says_why_it_is_lazy() -> None:
    """Only a real reason (startup cost, an optional driver) keeps an import in a
    function, and a comment saying "lazy" (on the line, or above its block of imports) gives it."""
    unexplained = []
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = path.read_text(encoding="utf-8").splitlines()
        for node in _function_imports(ast.parse("\n".join(lines))):
            if "# lazy" in lines[node.lineno - 1].lower():
                continue
            i = node.lineno - 2  # the line above the import, 0-based
            while i >= 0 and lines[i].strip().startswith(("from ", "import ")):
                i -= 1  # up through the block of imports it belongs to
            if i < 0 or "lazy" not in lines[i].lower():
                unexplained.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not unexplained, f"imports inside functions with no 'lazy' comment above: {unexplained}"
