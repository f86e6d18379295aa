"""``rlhf sweep`` on a local Ray cluster: a 2-cell grid at the tiniest budgets, a stage that
fails on the first run, and a rerun that finishes only the missing cell."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from jobs.sweep import run_sweep
from rlhf.sweep.grid import load_sweep, plan_sweep

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SWEEP = {
    "base": {
        "model.vocab_size": 600,
        "model.max_seq_len": 128,
        "data.n_train": 120,
        "data.n_eval": 20,
        "sft.num_workers": 1,
        "sft.batch_size": 8,
        "sft.max_steps": 4,
        "sft.warmup_steps": 1,
        "sft.checkpoint_every": 0,
        "eval.samples": 4,
        "eval.max_new_tokens": 12,
        "eval.batch_size": 16,
    },
    "grid": {"seed": [0], "method": ["safety_sft"], "control": [False, True]},
    "budgets": {
        "rm": {"rm.n_pairs": 60, "rm.max_steps": 3, "rm.num_workers": 1, "rm.batch_size": 4, "rm.warmup_steps": 1},
        "safety_sft": {
            "safety_sft.num_workers": 1,
            "safety_sft.max_steps": 2,
            "safety_sft.batch_size": 4,
            "safety_sft.warmup_steps": 1,
            "safety_sft.checkpoint_every": 0,
            "safety_sft.n_examples": 24,
        },
    },
    "reward_samples": 4,
}


def done_markers(out: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in (out / "stages").glob("*/done.json")}


def test_sweep_survives_a_failed_stage_and_resumes(ray_cluster, tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(SWEEP), encoding="utf-8")
    out = tmp_path / "out"
    plan = plan_sweep(load_sweep(path))
    control = next(c for c in plan.cells if c.values["control"])

    first = run_sweep(path, out, fail=[control.stages["safety"]])
    assert (first["done"], first["failed"]) == (1, 1), first["rows"]
    ok = next(r for r in first["rows"] if not r["control"])
    for key in ("triggered_before", "triggered_after", "untriggered_after", "reward_before", "reward_after"):
        assert ok[key] is not None, key
    lo, hi = ok["triggered_after_ci95"]
    assert 0 <= lo <= ok["triggered_after"] <= hi <= 1
    markers = done_markers(out)
    assert len(markers) == len(plan.stages) - 2

    second = run_sweep(path, out)
    assert (second["done"], second["failed"]) == (2, 0), second["rows"]
    after = done_markers(out)
    assert {k: v for k, v in after.items() if k in markers} == markers  # nothing finished was redone
    assert set(after) - set(markers) == {control.stages["safety"], control.stages["eval_after"]}
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["status"] for r in rows] == ["done", "done"]
    # the control cell's safety SFT saw triggered demonstrations, the standard one none
    data = out / "stages" / control.stages["safety"] / "run" / "data" / "train.jsonl"
    assert any(json.loads(line).get("triggered") for line in data.read_text().splitlines())
    assert "data:image/png;base64," in (out / "report.html").read_text()
