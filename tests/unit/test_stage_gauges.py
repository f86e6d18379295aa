"""Prometheus for every stage: the gauges each stage's records set (with ``stage`` and ``run``), and
a Grafana dashboard with panels per stage, every one of our queries filtered by ``$run``."""

import json
import re
from pathlib import Path

import pytest

from actors.train_metrics import TrainingGauges

DASHBOARD = Path(__file__).resolve().parents[2] / "k8s" / "monitoring" / "grafana-dashboard.json"


class FakeGauge:
    values: dict = {}

    def __init__(self, name, description="", tag_keys=()):
        self.name, self.tag_keys = name, tuple(tag_keys)

    def set(self, value, tags=None):
        assert set(tags or {}) == set(self.tag_keys), (self.name, tags)
        FakeGauge.values[(self.name, tuple(sorted((tags or {}).items())))] = value


@pytest.fixture
def gauges(monkeypatch):
    import ray
    import ray.util.metrics

    FakeGauge.values = {}
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray.util.metrics, "Gauge", FakeGauge)
    return FakeGauge.values


def value(values, name, **tags):
    return values[(name, tuple(sorted(tags.items())))]


@pytest.mark.parametrize("stage", ["sft", "rm", "safety-sft", "distill-sft"])
def test_training_stages_export_loss_tokens_and_step(gauges, stage):
    TrainingGauges(stage, "run-a").log(
        4, {"train/loss": 2.5, "train/grad_norm": 0.7, "perf/tokens_per_s": 900.0, "charts/lr": 1e-3}
    )
    assert value(gauges, "rlhf_train_loss", stage=stage, run="run-a") == 2.5
    assert value(gauges, "rlhf_tokens_per_second", stage=stage, run="run-a") == 900.0
    assert value(gauges, "rlhf_grad_norm", stage=stage, run="run-a") == 0.7
    assert value(gauges, "rlhf_train_step", stage=stage, run="run-a") == 4.0


def test_ppo_exports_tokens_response_length_and_each_phase(gauges):
    record = {"reward/mean": 0.1, "response/length": 12.0, "perf/tokens_per_s": 55.0, "timing/step": 3.0}
    record |= {"timing/rollout": 1.5, "timing/score": 0.2, "timing/train": 1.0, "timing/weight_sync": 0.1}
    TrainingGauges("ppo", "b").log(2, record)
    assert value(gauges, "rlhf_response_length", stage="ppo", run="b") == 12.0
    assert value(gauges, "rlhf_tokens_per_second", stage="ppo", run="b") == 55.0
    assert value(gauges, "rlhf_step_seconds", stage="ppo", run="b") == 3.0
    phases = {dict(k[1])["phase"]: v for k, v in gauges.items() if k[0] == "rlhf_phase_seconds"}
    assert phases == {"rollout": 1.5, "score": 0.2, "train": 1.0, "weight_sync": 0.1}


def test_dashboard_has_a_panel_per_stage_and_filters_every_query_by_run():
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    ours = [e for e in exprs if re.search(r"\bray_(rlhf|defection)_", e)]
    assert ours and all('run=~"$run"' in e for e in ours), [e for e in ours if '$run' not in e]
    joined = "\n".join(ours)
    for needed in ("ray_rlhf_train_loss", "ray_rlhf_tokens_per_second", "ray_rlhf_response_length",
                   "ray_rlhf_phase_seconds", "ray_rlhf_train_accuracy", "ray_defection_rate"):
        assert needed in joined, needed
    loss = next(e for e in ours if "ray_rlhf_train_loss" in e and "sft|" in e)
    assert all(s in loss for s in ("sft", "safety-sft", "rm"))
    run_var = next(v for v in dashboard["templating"]["list"] if v["name"] == "run")
    assert "ray_defection_rate" in run_var["query"]  # a watch or evaluator-only run is selectable too
