"""rlhf/ and reward/ are pure Python + torch: no module there may import ray or vllm."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PURE_PACKAGES = ("rlhf", "reward")
FORBIDDEN = ("ray", "vllm")


def forbidden_imports(source: str, filename: str = "<string>") -> list[tuple[int, str]]:
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
        hits += [(node.lineno, name) for name in names if name.split(".")[0] in FORBIDDEN]
    return hits


def _python_files() -> list[Path]:
    files = []
    for pkg in PURE_PACKAGES:
        files += sorted((ROOT / pkg).rglob("*.py"))
    return files


def test_packages_exist_and_have_sources():
    files = _python_files()
    assert (ROOT / "rlhf" / "__init__.py") in files and (ROOT / "reward" / "__init__.py") in files
    assert {"config.py", "sft.py", "rollout.py", "evaluate.py"} <= {f.name for f in files}


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
