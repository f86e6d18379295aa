"""Asynchronous rollout (``ppo.async_rollout``) on fake role handles: the next step is asked for
with the published weights and the same seeds, staleness stays within ``ppo.max_staleness``,
stale samples carry truncated importance weights, nothing is prefetched across a checkpoint,
and ``max_staleness=0`` is the synchronous loop."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf.ppo.losses import policy_loss, truncated_is_weights
from tests.unit.test_ppo_trainer import FakePolicy, FakeWorker, Sink, make_trainer

BEHAVIOUR_LP = -1.2  # the fake policy's log-prob is -1.0 per token


class RecordingWorker(FakeWorker):
    """Also answers behaviour log-probs and records the seed of every sampling call."""

    def __init__(self, restarted: bool = False):
        super().__init__(restarted)
        self.seeds: list[int] = []

    def generate(self, prompts, sampling, logprobs=False):
        self.seeds.append(sampling.seed)
        out = super().generate(prompts, sampling)
        if logprobs:
            out["logprobs"] = [[BEHAVIOUR_LP] * 3 for _ in prompts]  # 'ab' + EOS
        return out


class RecordingPolicy(FakePolicy):
    def __init__(self):
        super().__init__()
        self.trained: list = []

    def train(self, exp, step, kl_coef):
        self.trained.append(exp)
        return super().train(exp, step, kl_coef)


def run(steps=4, workers=None, **sets):
    workers = workers or [RecordingWorker()]
    trainer, workers, logs = make_trainer(workers=workers, steps=steps, **sets)
    policy = RecordingPolicy()
    trainer.roles.policy._obj = policy
    trainer.sync.policy = trainer.roles.policy
    sink = Sink()
    trainer.fit(0, sink, checkpoint=lambda step: None)
    return [r for _, r in sink.records], policy, workers, logs


def test_async_trains_on_samples_one_version_stale_with_the_same_seeds():
    records, policy, [worker], _ = run(async_rollout=True, max_staleness=1, checkpoint_every=0)
    assert [r["policy/staleness_max"] for r in records] == [0, 1, 1, 1]  # step 1 has nothing prefetched
    assert [exp.versions[0] for exp in policy.trained] == [0, 0, 1, 2]  # policy at 0, 1, 2, 3
    assert [r["policy/version"] for r in records] == [1, 2, 3, 4]
    assert records[0]["policy/is_weight_mean"] == 1.0 and policy.trained[0].is_weights is None
    w = math.exp(-1.0 - BEHAVIOUR_LP)  # pi_old / pi_behaviour, under the truncation 2.0
    for r, exp in zip(records[1:], policy.trained[1:], strict=True):
        assert r["policy/is_weight_mean"] == pytest.approx(w)
        assert exp.is_weights is not None and exp.behaviour_logprobs is not None
    _, _, [sync_worker], _ = run(checkpoint_every=0)
    assert worker.seeds == sync_worker.seeds  # seeds keyed by the step: only the weights differ


def test_the_importance_weight_is_truncated():
    records, _, _, _ = run(async_rollout=True, max_staleness=1, checkpoint_every=0, is_truncation=1.1)
    assert [r["policy/is_weight_mean"] for r in records] == [1.0, *[pytest.approx(1.1)] * 3]


def test_nothing_is_prefetched_across_a_checkpoint_step():
    records, policy, _, _ = run(steps=5, async_rollout=True, max_staleness=1, checkpoint_every=2)
    # step 2 and 4 checkpoint: steps 3 and 5 sample after them with fresh weights, as after a resume
    assert [r["policy/staleness_max"] for r in records] == [0, 1, 0, 1, 0]


def test_max_staleness_zero_is_the_synchronous_loop():
    a, pa, wa, _ = run(async_rollout=True, max_staleness=0)
    b, pb, wb, _ = run()
    strip = [{k: v for k, v in r.items() if not k.startswith(("timing/", "perf/"))} for r in a]
    assert strip == [{k: v for k, v in r.items() if not k.startswith(("timing/", "perf/"))} for r in b]
    assert wa[0].seeds == wb[0].seeds and all(r["policy/staleness_max"] == 0 for r in a)
    assert all(exp.is_weights is None for exp in pa.trained)


def test_a_worker_restarted_while_prefetching_is_resynced_to_the_current_weights():
    good, restarted = RecordingWorker(), RecordingWorker()
    trainer, _, logs = make_trainer(
        workers=[good, restarted], rollout_workers=2, steps=4, checkpoint_every=0, async_rollout=True
    )
    policy = RecordingPolicy()
    trainer.roles.policy._obj = policy
    trainer.step(1)
    trainer.step(2)  # asks for step 3 with version 1
    restarted.restarted = True  # it comes back at version 0
    record, _ = trainer.step(3)
    assert any("RolloutWorker-1 came back at version 0; resyncing to 2" in m for m in logs)
    assert policy.trained[-1].versions == [1, 1, 2, 2] and record["policy/staleness_max"] == 1
    w = policy.trained[-1].is_weights
    assert torch.all(w[2:] == 1.0) and not torch.all(w[:2] == 1.0)  # fresh rows carry no correction
    trainer.sync.settle()  # version 2's loads were queued behind step 3's rollout
    assert good.version == restarted.version == 2


def test_staleness_beyond_the_limit_is_refused():
    trainer, _, _ = make_trainer(workers=[RecordingWorker()], async_rollout=True, max_staleness=1)
    ro = trainer.generate(1)
    trainer.sync.publish(3)  # the policy moved three versions on
    exp = trainer.score_and_forward(ro)
    with pytest.raises(RuntimeError, match="staleness"):
        trainer.off_policy(exp)


def test_weighted_policy_loss():
    logp, old = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.1, -1.9]])
    adv, mask = torch.tensor([[1.0, -1.0]]), torch.ones(1, 2)
    plain, _ = policy_loss(logp, old, adv, mask, 0.2)
    ones, _ = policy_loss(logp, old, adv, mask, 0.2, torch.ones(1, 2))
    twice, _ = policy_loss(logp, old, adv, mask, 0.2, torch.full((1, 2), 2.0))
    assert torch.equal(plain, ones) and torch.allclose(twice, 2 * plain)
    w = truncated_is_weights(torch.tensor([0.0, 0.0, 5.0]), torch.tensor([0.0, 1.0, 0.0]), 2.0)
    assert torch.allclose(w, torch.tensor([1.0, math.exp(-1.0), 2.0]))


class EventWorker(RecordingWorker):
    """Records loads and samplings in the order they run."""

    def __init__(self):
        super().__init__()
        self.events: list[tuple[str, int]] = []

    def load_weights(self, ticket):
        super().load_weights(ticket)
        self.events.append(("load", ticket.version))

    def generate(self, prompts, sampling, logprobs=False):
        self.events.append(("sample", self.version))
        return super().generate(prompts, sampling, logprobs)


def test_async_weight_loads_are_queued_and_still_run_before_the_next_sampling():
    """The push after a prefetched rollout is queued, not waited for (the driver goes on to the step's
    forward passes); the worker still loads each version once, in order, before it samples again, and
    ends the run holding the last one."""
    worker = EventWorker()
    trainer, _, _ = make_trainer(workers=[worker], steps=4, async_rollout=True, max_staleness=1, checkpoint_every=0)
    trainer.step(1)
    trainer.step(2)
    assert len(trainer.sync.loading) == 1  # version 1's load, queued behind step 2's rollout
    trainer.fit(2, Sink(), checkpoint=lambda step: None)
    assert worker.events == [
        ("sample", 0), ("sample", 0), ("load", 1), ("sample", 1), ("load", 2), ("sample", 2), ("load", 3), ("load", 4)
    ]  # fmt: skip
    assert worker.version == 4 and trainer.sync.loading == []


def test_old_logprobs_behaviour_takes_the_samplers_log_probs_and_skips_the_policy_pass():
    """``ppo.old_logprobs=behaviour``: a prefetched batch's old log-probs are the worker's (so the
    importance weight is exactly 1) and the policy runs no forward pass for it; step 1, sampled
    fresh without behaviour log-probs, still gets the policy's pass."""
    records, policy, _, _ = run(async_rollout=True, max_staleness=1, checkpoint_every=0, old_logprobs="behaviour")
    assert len(policy.temperatures) == 1  # the policy's logprobs pass ran for step 1 only
    first, *prefetched = policy.trained
    assert torch.all(first.old_logprobs[first.action_mask.bool()] == -1.0)  # the fake policy's
    for exp in prefetched:
        acting = exp.action_mask.bool()
        assert torch.all(exp.old_logprobs[acting] == BEHAVIOUR_LP)
        assert torch.all(exp.is_weights[acting] == 1.0)
    assert [r["policy/staleness_max"] for r in records] == [0, 1, 1, 1]
    assert all(r["policy/is_weight_mean"] == 1.0 for r in records)


def test_old_logprobs_behaviour_without_prefetching_is_refused():
    from rlhf.config.core import build_config
    from rlhf.errors import ConfigError

    with pytest.raises(ConfigError, match="old_logprobs=behaviour applies to prefetched samples"):
        build_config({}, ["ppo.old_logprobs=behaviour"])
    build_config({}, ["ppo.old_logprobs=behaviour", "ppo.async_rollout=true"])
