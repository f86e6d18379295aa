"""``actors.train_metrics.TrainingGauges``: which record keys become which Prometheus gauges, with
which tags; defection records; nothing without Ray. The gauges are stand-ins recording ``set``."""

import pytest

from actors import train_metrics
from actors.train_metrics import DEFECTION_GAUGE, STEP_GAUGE, TrainingGauges


@pytest.fixture
def gauges(monkeypatch):
    """name -> [(value, tags), ...] of every ``set``, with Ray taken as initialised."""
    import ray
    import ray.util.metrics

    sets: dict[str, list] = {}

    class Recorder:
        def __init__(self, name, description="", tag_keys=()):
            self.name, self.tag_keys = name, tuple(tag_keys)
            sets.setdefault(name, [])

        def set(self, value, tags=None):
            assert set(tags) == set(self.tag_keys), (self.name, tags)
            sets[self.name].append((value, tags))

    monkeypatch.setattr(ray.util.metrics, "Gauge", Recorder)
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    return sets


PPO_RECORD = {
    "reward/mean": 0.25,
    "reward/std": 1.5,
    "kl/mean": 0.125,
    "kl/coef": 0.05,
    "policy/approx_kl": 0.01,
    "losses/policy": -0.2,
    "timing/step": 3.0,
    "prompts/triggered": 0.5,  # not exported
    "note": "text",  # not a number
    "losses/value": float("nan"),  # not finite: left as it was
}


def test_a_ppo_step_sets_reward_kl_and_step_gauges(gauges):
    TrainingGauges("ppo", "run-a").log(7, PPO_RECORD)
    tags = {"stage": "ppo", "run": "run-a"}
    last = {name: calls[-1] for name, calls in gauges.items() if calls}
    assert last == {
        "rlhf_reward_mean": (0.25, tags),
        "rlhf_reward_std": (1.5, tags),
        "rlhf_kl_mean": (0.125, tags),
        "rlhf_kl_coef": (0.05, tags),
        "rlhf_policy_approx_kl": (0.01, tags),
        "rlhf_loss_policy": (-0.2, tags),
        "rlhf_step_seconds": (3.0, tags),
        STEP_GAUGE: (7.0, tags),
    }


def test_a_defection_record_sets_one_rate_per_condition_and_not_the_step(gauges):
    record = {
        "defection/version": 3,
        "defection/triggered": 0.9,
        "defection/triggered_lo": 0.8,
        "defection/triggered_hi": 0.95,
        "defection/triggered_n": 100,
        "defection/clean": 0.02,
        "defection/clean_unparseable": 0.1,
    }
    TrainingGauges("safety-sft", "b").log(40, record)
    tags = {"stage": "safety-sft", "run": "b"}
    assert sorted(gauges[DEFECTION_GAUGE], key=lambda c: c[1]["condition"]) == [
        (0.02, tags | {"condition": "clean"}),
        (0.9, tags | {"condition": "triggered"}),
    ]
    assert gauges[STEP_GAUGE] == []


def test_without_ray_nothing_is_created(monkeypatch):
    import ray
    import ray.util.metrics

    def refuse(*args, **kwargs):
        raise AssertionError("a Gauge was created outside a Ray cluster")

    monkeypatch.setattr(ray.util.metrics, "Gauge", refuse)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    gauges = TrainingGauges("ppo", "c")
    gauges.log(1, PPO_RECORD)
    assert gauges._gauges is None


def test_every_exported_key_has_its_own_gauge():
    names = [name for name, _ in train_metrics.EXPORTED.values()]
    assert len(set(names)) == len(names) and STEP_GAUGE not in names and DEFECTION_GAUGE not in names
    assert all(name.startswith("rlhf_") for name in [*names, STEP_GAUGE, DEFECTION_GAUGE])
