"""``bench/model_size_table.py`` (issue 28, item 14; docs/results.md "Model size"): the bytes each
role holds per parameter, measured at a small shape, are what the precision policy says they are."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_measured_bytes_per_parameter_follow_the_precision_policy():
    sys.path.insert(0, str(ROOT / "bench"))
    import model_size_table as t

    bf16, fp32 = t.measure("bf16"), t.measure("fp32")
    for rates in (bf16, fp32):  # trainers: fp32 weights + fp32 grads + two fp32 AdamW moments
        assert rates["policy"]["linear"] == pytest.approx(16.0, abs=0.05)
        assert rates["critic"]["other"] == pytest.approx(16.0, abs=0.05)
        assert rates["policy_lora"]["other"] == pytest.approx(4.0)  # frozen base: weights only
    for role in ("reference", "rollout"):  # mirrors: bf16 linear layers, fp32 embeddings and norms
        assert bf16[role] == {"linear": pytest.approx(2.0), "other": pytest.approx(4.0)}
        assert fp32[role] == {"linear": pytest.approx(4.0), "other": pytest.approx(4.0)}
    assert bf16["reward"] == {"linear": pytest.approx(2.0), "other": pytest.approx(2.0)}
    table = t.table({"bf16": bf16, "fp32": fp32})
    row = table["targets"]["Qwen2-7B"]
    assert row["parameters"] > 7e9 and row["bf16"]["gae_gb"] < row["fp32"]["gae_gb"]
    assert 1.0 < t.largest(bf16, ("policy", "critic", "reference", "rollout", "reward")) < 3.0
