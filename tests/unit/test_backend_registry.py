"""Every place that samples a policy builds its backend through ``rlhf.rollout.backends.make_backend``:
no module constructs a backend class itself, and the rollout worker reaches no further into its
backend than the ``RolloutBackend`` protocol."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("rlhf", "reward", "actors", "jobs", "bench")
FACTORIES = {"rlhf/rollout/backends.py", "actors/vllm_backend.py"}  # the registry and vLLM's own factory


def test_no_backend_is_built_outside_the_registry():
    found = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            text = path.read_text(encoding="utf-8")
            if rel not in FACTORIES and re.search(r"\b(HFGenerateBackend|VLLMBackend)\(", text):
                found.append(rel)
    assert found == []


def test_the_rollout_worker_uses_only_the_backend_protocol():
    from rlhf.rollout.hf import RolloutBackend

    allowed = {n for n in vars(RolloutBackend) if not n.startswith("_")} | set(RolloutBackend.__annotations__)
    source = (ROOT / "actors" / "ppo_actors.py").read_text(encoding="utf-8")
    used = set(re.findall(r"self\.backend\.(\w+)", source))
    assert used and used <= allowed, sorted(used - allowed)
