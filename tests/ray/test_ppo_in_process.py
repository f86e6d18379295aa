"""The same PPO loop with every role in one process (``run_ppo(in_process=True)``): no Ray at
all, the same metrics, checkpoints and exact resume."""

import pytest
import ray
from transformers import AutoModelForCausalLM

from jobs.ppo import STEP_KEYS, run_ppo
from rlhf.config.core import build_config
from rlhf.metrics import read_metrics
from tests.ray.conftest import PPO_TEST_OVERRIDES


def test_in_process_run_needs_no_ray_and_resumes_exactly(tiny_policy, tiny_reward_model, tmp_path, monkeypatch):
    def no_ray(*a, **k):
        raise AssertionError("the in-process loop started Ray")

    monkeypatch.setattr(ray, "init", no_ray)
    cfg = build_config({}, [*PPO_TEST_OVERRIDES, "ppo.steps=4", "ppo.checkpoint_every=2", "ppo.samples_per_prompt=2"])
    rm = tiny_reward_model["model_dir"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    summary = run_ppo(cfg, tiny_policy, full, reward_dir=rm, in_process=True)
    assert summary["steps"] == 4 and summary["eval_points"] == []
    records = [r for r in read_metrics(full / "metrics.jsonl") if "reward/mean" in r]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    for r in records:
        assert not [k for k in STEP_KEYS if k not in r]

    run_ppo(cfg, tiny_policy, cut, reward_dir=rm, in_process=True, stop_after=3)
    run_ppo(cfg, tiny_policy, cut, reward_dir=rm, in_process=True, resume=True)
    a = AutoModelForCausalLM.from_pretrained(full / "checkpoints" / "step_000004" / "policy").state_dict()
    b = AutoModelForCausalLM.from_pretrained(cut / "checkpoints" / "step_000004" / "policy").state_dict()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6


def test_a_critic_free_run_has_no_critic_and_resumes(tiny_policy, tiny_reward_model, tmp_path):
    from jobs.ppo_checkpoints import checkpoint_problem

    cfg = build_config(
        {},
        [*PPO_TEST_OVERRIDES, "ppo.steps=3", "ppo.checkpoint_every=2", "ppo.advantage_estimator=group_norm"]
        + ["ppo.samples_per_prompt=2"],
    )
    rm = tiny_reward_model["model_dir"]
    run_ppo(cfg, tiny_policy, tmp_path, reward_dir=rm, in_process=True, stop_after=2)
    ckpt = tmp_path / "checkpoints" / "step_000002"
    assert not (ckpt / "critic.pt").exists() and checkpoint_problem(ckpt) is None
    summary = run_ppo(cfg, tiny_policy, tmp_path, reward_dir=rm, in_process=True, resume=True)
    assert summary["steps"] == 3
    records = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "reward/mean" in r]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all("losses/value" not in r and "losses/policy" in r for r in records)


def _step_records(run):
    """The step records of a run without wall-clock keys (``time``, ``timing/*``, ``perf/*``)."""
    return [
        {k: v for k, v in r.items() if k != "time" and not k.startswith(("timing/", "perf/"))}
        for r in read_metrics(run / "metrics.jsonl")
        if "reward/mean" in r
    ]


def test_async_rollout_with_max_staleness_zero_is_the_synchronous_loop(tiny_policy, tiny_reward_model, tmp_path):
    base = [*PPO_TEST_OVERRIDES, "ppo.steps=3", "ppo.checkpoint_every=0"]
    rm = tiny_reward_model["model_dir"]
    run_ppo(build_config({}, base), tiny_policy, tmp_path / "sync", reward_dir=rm, in_process=True)
    zero = build_config({}, [*base, "ppo.async_rollout=true", "ppo.max_staleness=0"])
    run_ppo(zero, tiny_policy, tmp_path / "zero", reward_dir=rm, in_process=True)
    sync, async0 = _step_records(tmp_path / "sync"), _step_records(tmp_path / "zero")
    assert len(sync) == 3 and sync == async0  # bit-identical metrics
    assert all(r["policy/staleness_max"] == 0 and r["policy/is_weight_mean"] == 1.0 for r in sync)


@pytest.mark.parametrize("old_logprobs", ["recompute", "behaviour"])
def test_async_rollout_stays_within_its_staleness_and_resumes_exactly(
    tiny_policy, tiny_reward_model, tmp_path, old_logprobs
):
    sets = ["ppo.steps=4", "ppo.checkpoint_every=2", "ppo.async_rollout=true", f"ppo.old_logprobs={old_logprobs}"]
    cfg = build_config({}, [*PPO_TEST_OVERRIDES, *sets])
    rm = tiny_reward_model["model_dir"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    run_ppo(cfg, tiny_policy, full, reward_dir=rm, in_process=True)
    records = _step_records(full)
    # step 1 samples fresh, step 2 was sampled during step 1; step 3 follows the step-2 checkpoint
    assert [r["policy/staleness_max"] for r in records] == [0, 1, 0, 1]
    for r in records:
        assert 0.0 < r["policy/is_weight_mean"] <= cfg.ppo.is_truncation
    if old_logprobs == "behaviour":  # the sampler's log-probs are the old ones: no correction left
        assert all(r["policy/is_weight_mean"] == 1.0 for r in records)

    run_ppo(cfg, tiny_policy, cut, reward_dir=rm, in_process=True, stop_after=3)
    run_ppo(cfg, tiny_policy, cut, reward_dir=rm, in_process=True, resume=True)
    assert _step_records(cut) == records  # the resumed async run continues exactly
    a = AutoModelForCausalLM.from_pretrained(full / "checkpoints" / "step_000004" / "policy").state_dict()
    b = AutoModelForCausalLM.from_pretrained(cut / "checkpoints" / "step_000004" / "policy").state_dict()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
