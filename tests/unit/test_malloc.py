"""The glibc allocator setting every torch process of ours runs with (``rlhf.malloc``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROBE = (
    "import ctypes, sys; sys.path.insert(0, {root!r}); from rlhf.malloc import tune_malloc; "
    "first = tune_malloc(); print(first, tune_malloc())"
)


def _probe(env: dict[str, str]) -> str:
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(root=str(ROOT))],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_tune_malloc_sets_glibc_thresholds_once():
    assert _probe({"RLHF_MALLOC_TUNING": "1"}) == "True True"


def test_tune_malloc_can_be_turned_off():
    assert _probe({"RLHF_MALLOC_TUNING": "0"}) == "False False"


def test_every_torch_process_of_ours_tunes_the_allocator():
    # the entry points that run torch: the CLI, the PPO actors, the evaluator and reward replicas,
    # the Ray Train workers, the sweep's stage tasks, and the benchmarks (for every system they compare)
    for rel in (
        "jobs/cli.py",
        "actors/ppo_actors.py",
        "actors/evaluator.py",
        "actors/reward_service.py",
        "actors/train_launcher.py",
        "actors/sweep_runner.py",
        "bench/reward_serve.py",
        "bench/ppo_vs_trl.py",
        "bench/mfu.py",
    ):
        assert "tune_malloc()" in (ROOT / rel).read_text(encoding="utf-8"), rel
