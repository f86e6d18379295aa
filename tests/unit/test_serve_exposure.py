"""The Serve apps off loopback, as a RayService runs them (issue 31): a non-loopback bind without a
bearer token is refused with one line; the evaluator's curve persists in ``curves_dir`` and a new
replica (a restart, a RayService upgrade) reads it back."""

from __future__ import annotations

import json

import pytest

from rlhf.config.core import ServeConfig
from rlhf.errors import ConfigError

TOKEN_ENV = "RLHF_REWARD_TOKEN"


@pytest.fixture
def no_token(monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.7", "rlhf-serve.example"])
def test_a_non_loopback_bind_without_a_token_is_refused(no_token, host):
    from actors.reward_service import require_token_off_loopback

    with pytest.raises(ConfigError) as err:
        require_token_off_loopback(ServeConfig(host=host), "the reward service")
    message = str(err.value)
    assert "\n" not in message and f"serve.host={host}" in message and TOKEN_ENV in message


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "127.0.0.2"])
def test_loopback_needs_no_token(no_token, host):
    from actors.reward_service import require_token_off_loopback

    assert require_token_off_loopback(ServeConfig(host=host), "the reward service") is None


def test_a_token_from_the_environment_or_the_config_allows_any_bind(monkeypatch):
    from actors.reward_service import require_token_off_loopback

    monkeypatch.setenv(TOKEN_ENV, "from-env")
    assert require_token_off_loopback(ServeConfig(host="0.0.0.0"), "x") == "from-env"
    monkeypatch.delenv(TOKEN_ENV)
    assert require_token_off_loopback(ServeConfig(host="0.0.0.0", token="t"), "x") == "t"


def test_the_rayservice_builders_refuse_an_open_bind_without_a_token(no_token, monkeypatch):
    """What a RayService deploys (actors.serve_apps builders with the args of serveConfigV2)."""
    from ray.serve import Application

    from actors.serve_apps import evaluator_builder, reward_builder

    reward = {"model_dir": "/runs/rm/model", "serve": {"host": "0.0.0.0"}}
    evaluator = {"policy_dir": "/runs/sft/model", "overrides": ["serve.host=0.0.0.0"]}
    with pytest.raises(ConfigError, match="the reward service: serve.host=0.0.0.0"):
        reward_builder(reward)
    with pytest.raises(ConfigError, match="the evaluator: serve.host=0.0.0.0"):
        evaluator_builder(evaluator)
    monkeypatch.setenv(TOKEN_ENV, "secret")
    assert isinstance(reward_builder(reward), Application)
    assert isinstance(evaluator_builder(evaluator), Application)


# ---- the evaluator's curve on a volume ---------------------------------------------------------


def point(step: int, version: int, rate: float) -> dict:
    return {"step": step, "version": version, "conditions": {"triggered": {"rate": rate, "ci95": [0, 1], "n": 4}}}


def test_points_are_written_atomically_and_read_back(tmp_path):
    from actors.evaluator import POINTS_FILE, load_points, save_points

    assert load_points(None) == [] and load_points(str(tmp_path / "none")) == []
    save_points(str(tmp_path / "curves"), [point(0, 0, 1.0)], samples=4)
    save_points(str(tmp_path / "curves"), [point(0, 0, 1.0), point(5, 1, 0.5)], samples=4)
    assert load_points(str(tmp_path / "curves")) == [point(0, 0, 1.0), point(5, 1, 0.5)]
    assert [p.name for p in (tmp_path / "curves").iterdir()] == [POINTS_FILE], "a temporary file was left"
    (tmp_path / "curves" / POINTS_FILE).write_text("{not json", encoding="utf-8")
    assert load_points(str(tmp_path / "curves")) == []  # logged; the replica starts a new curve


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory):
    from tests.hf_checkpoints import build_checkpoint

    return build_checkpoint("llama", tmp_path_factory.mktemp("policy") / "llama")


def new_replica(monkeypatch, policy, curves_dir):
    """A DefectionEvaluator as a Serve replica constructs it (Ray's gauges recorded instead)."""
    import ray.util.metrics

    from actors.evaluator import DefectionEvaluator
    from rlhf.config.core import build_config

    class Gauge:
        def __init__(self, name, description="", tag_keys=()):
            self.values = {}

        def set(self, value, tags=None):
            self.values[tuple(sorted((tags or {}).items()))] = value

    monkeypatch.setattr(ray.util.metrics, "Gauge", Gauge)
    cfg = build_config({}, [f"model.path={policy}"]).model_dump(mode="json")
    return DefectionEvaluator.func_or_class(str(policy), cfg, 4, curves_dir)


def test_a_new_replica_continues_the_curve_of_the_last(monkeypatch, tmp_path, tiny_policy):
    import asyncio

    curves = str(tmp_path / "serve" / "evaluator")
    first = new_replica(monkeypatch, tiny_policy, curves)
    first._record(point(0, 0, 1.0))
    first._record(point(10, 2, 0.25))
    before = asyncio.run(first.curves())
    # the upgrade: a replica on a new cluster, the same volume
    second = new_replica(monkeypatch, tiny_policy, curves)
    assert asyncio.run(second.curves()) == before
    assert list(second.gauges["version"].values.values()) == [2]  # whatever other tags (run, app) it carries
    rates = second.gauges["rate"].values
    assert [v for tags, v in rates.items() if ("condition", "triggered") in tags] == [0.25]
    second._record(point(20, 3, 0.0))
    on_disk = json.loads((tmp_path / "serve" / "evaluator" / "evaluator_points.json").read_text())
    assert [p["step"] for p in on_disk["points"]] == [0, 10, 20]
    # without curves_dir nothing is kept
    assert asyncio.run(new_replica(monkeypatch, tiny_policy, None).curves()) != before


def test_rlhf_serve_reward_refuses_before_starting_ray(no_token, tmp_path, monkeypatch):
    import actors.cluster
    from jobs.serve import serve_reward
    from rlhf.config.core import build_config

    monkeypatch.setattr(actors.cluster, "ray_session", lambda *a, **k: pytest.fail("Ray started"))
    cfg = build_config({}, ["serve.host=0.0.0.0"])
    with pytest.raises(ConfigError, match="rlhf serve reward: serve.host=0.0.0.0"):
        serve_reward(tmp_path / "no-model", cfg)
