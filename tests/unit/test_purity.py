"""rlhf/ and reward/ are pure Python + torch: no module there may import ray or vllm. jobs/ (the
commands) imports no ray either: its Ray code lives in actors/ and jobs/ calls actors' functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PURE_PACKAGES = ("rlhf", "reward")
FORBIDDEN = ("ray", "vllm")
JOBS_FORBIDDEN = ("ray",)


def forbidden_imports(
    source: str, filename: str = "<string>", forbidden: tuple[str, ...] = FORBIDDEN
) -> list[tuple[int, str]]:
    """(line, module) for every import of a forbidden top-level package, at any nesting level."""
    hits = []
    for node in ast.walk(ast.parse(source, filename=filename)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            # relative imports (level > 0) stay inside the package
            names = [node.module] if node.module and node.level == 0 else []
        else:
            continue
        hits += [(node.lineno, name) for name in names if name.split(".")[0] in forbidden]
    return hits


def _python_files() -> list[Path]:
    files = []
    for pkg in PURE_PACKAGES:
        files += sorted((ROOT / pkg).rglob("*.py"))
    return files


def _jobs_files() -> list[Path]:
    return sorted((ROOT / "jobs").rglob("*.py"))


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def test_packages_exist_and_have_sources():
    files = _python_files()
    assert (ROOT / "rlhf" / "__init__.py") in files and (ROOT / "reward" / "__init__.py") in files
    assert {"core.py", "sft.py", "hf.py", "evaluate.py"} <= {f.name for f in files}


@pytest.mark.parametrize("path", _python_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_ray_or_vllm_imports(path):
    assert forbidden_imports(path.read_text(encoding="utf-8"), str(path)) == []


@pytest.mark.parametrize(
    "source",
    [
        "import ray",
        "import ray.train",
        "import os, ray.serve as serve",
        "from ray import train",
        "from ray.util import ActorPool",
        "from vllm import LLM",
        "from vllm.sampling_params import SamplingParams",
        "import vllm",
        "def f():\n    import ray\n    return ray",
        "try:\n    from vllm import LLM\nexcept ImportError:\n    LLM = None",
        "if TYPE_CHECKING:\n    import ray",
        "class A:\n    def m(self):\n        from ray import get\n",
    ],
)
def test_walker_detects_forbidden_imports(source):
    hits = forbidden_imports(source)
    assert len(hits) == 1
    assert hits[0][1].split(".")[0] in FORBIDDEN


@pytest.mark.parametrize(
    "source",
    [
        "import rayon",
        "import array",
        "from raytracing import x",
        "from . import ray",
        "from .ray import x",
        "import vllm_helpers",
        "x = 'import ray'",
        "# import ray",
        "import torch\nfrom transformers import AutoModel",
    ],
)
def test_walker_ignores_lookalikes(source):
    assert forbidden_imports(source) == []


def test_walker_reports_line_numbers():
    src = "import os\n\nfrom ray import get\nimport vllm.engine\n"
    assert forbidden_imports(src) == [(3, "ray"), (4, "vllm.engine")]


@pytest.mark.parametrize("path", _jobs_files(), ids=_rel)
def test_jobs_import_no_ray(path):
    hits = forbidden_imports(path.read_text(encoding="utf-8"), str(path), JOBS_FORBIDDEN)
    assert hits == [], f"{_rel(path)} imports ray (lines {[n for n, _ in hits]}): move that code into actors/"


def test_jobs_files_are_found():
    assert {"cli.py", "submit.py", "ppo_checkpoints.py", "ppo.py"} <= {p.name for p in _jobs_files()}


@pytest.mark.parametrize(
    "source, hits",
    [
        ("def f():\n    from ray import get as g\n    return g", [(2, "ray")]),
        (
            "def f():\n    def g():\n        import ray._private.thirdparty.pathspec\n",
            [(3, "ray._private.thirdparty.pathspec")],
        ),
        ("from vllm import LLM", []),  # jobs may not import ray; vllm is not checked there
        ("from actors.cluster import ray_session", []),
    ],
)
def test_jobs_walker(source, hits):
    assert forbidden_imports(source, forbidden=JOBS_FORBIDDEN) == hits
