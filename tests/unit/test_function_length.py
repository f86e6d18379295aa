"""No function or method in rlhf/, reward/, actors/ or jobs/ is longer than 80 lines."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("rlhf", "reward", "actors", "jobs")
MAX_LINES = 80



def long_functions(source: str, filename: str = "<string>", limit: int = MAX_LINES) -> list[tuple[str, int]]:
    """(qualified name, lines) of every function or method longer than ``limit`` lines, at any
    nesting level; a function's lines run from its ``def`` (decorators excluded) to its last line."""
    hits = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    lines = child.end_lineno - child.lineno + 1
                    if lines > limit:
                        hits.append((name, lines))
                visit(child, f"{name}.")
            else:
                visit(child, prefix)

    visit(ast.parse(source, filename=filename), "")
    return hits


def _python_files() -> list[Path]:
    return [f for pkg in PACKAGES for f in sorted((ROOT / pkg).rglob("*.py"))]


def test_no_function_over_80_lines():
    files = _python_files()
    assert any(f.name == "cli.py" for f in files) and any(f.name == "core.py" for f in files)
    too_long = []
    for path in files:
        rel = path.relative_to(ROOT).as_posix()
        for name, lines in long_functions(path.read_text(encoding="utf-8"), rel):
            too_long.append(f"{rel}:{name} ({lines} lines)")
    assert too_long == [], "functions over 80 lines (split them into helpers): " + ", ".join(too_long)


def test_counter_sees_functions_methods_and_nested_ones():
    body = "\n".join("    x = 1" for _ in range(80))  # def line + 80 = 81 lines
    short = "\n".join("    x = 1" for _ in range(79))  # exactly 80 lines: allowed
    source = (
        f"def long():\n{body}\n\n"
        f"def ok():\n{short}\n\n"
        f"class A:\n    async def m(self):\n{body.replace('    ', '        ')}\n\n"
        f"def outer():\n    def inner():\n{body.replace('    ', '        ')}\n    return inner\n"
    )
    hits = dict(long_functions(source))
    assert hits["long"] == 81
    assert "ok" not in hits
    assert hits["A.m"] == 81
    assert hits["outer.inner"] == 81 and hits["outer"] == 83
