"""The PPO trainer's phases on fake role handles (no model, no Ray), the weight-sync interface,
the advantage-estimator registry and the launcher's placement specs."""

from __future__ import annotations

import pytest
import torch

from actors.launcher import colocation_bundles, role_specs
from actors.local import LocalHandle, local_get
from rlhf.config.core import build_config
from rlhf.errors import ConfigError
from rlhf.ppo.advantages import ESTIMATORS, estimator, register_advantage
from rlhf.ppo.losses import FixedKLController
from rlhf.ppo.roles import Roles
from rlhf.ppo.trainer import PPOTrainer
from rlhf.rollout.weight_sync import WeightsTicket, WeightSync, publish, pull

EOS, PAD = 2, 1


class FakePolicy:
    def __init__(self):
        self.published: list[int] = []

    def publish(self, version):
        self.published.append(version)
        return publish({"w": torch.tensor([float(version)])}, version)

    def logprobs(self, seqs, attn, temperature=None, first=0):
        self.temperatures = [*getattr(self, "temperatures", []), temperature]
        return torch.full((seqs.shape[0], seqs.shape[1] - 1), -1.0)

    def train(self, exp, step, kl_coef):
        self.published.append(("trained", step))
        return {"losses/policy": 0.5, "policy/entropy": 1.0, "policy/clipfrac": 0.0, "policy/approx_kl": 0.0}


class FakeReference:
    def logprobs(self, seqs, attn, temperature=None, first=0):
        self.temperatures = [*getattr(self, "temperatures", []), temperature]
        return torch.full((seqs.shape[0], seqs.shape[1] - 1), -1.5)

    def logprobs_samples(self, rollout, ids, max_new_tokens, temperature):
        from rlhf.ppo.models import assemble

        seqs, attn, act = assemble(
            rollout["prompt_ids"], rollout["completion_ids"], ids["eos"], ids["pad"], max_new_tokens,
            rollout.get("stop_ids"),
        )  # fmt: skip
        return [row[m.bool()].tolist() for row, m in zip(self.logprobs(seqs, attn, temperature), act, strict=True)]


class FakeCritic:
    def values(self, seqs, attn):
        return torch.zeros(seqs.shape[0], seqs.shape[1] - 1)

    def train(self, exp, step):
        return {"losses/value": 0.25}


class FakeReward:
    def score(self, texts):
        self.calls = [*getattr(self, "calls", []), len(texts)]
        return [float(len(t) % 3) for t in texts]

    def score_samples(self, prompts, rollout):
        return self.score([p + c for p, c in zip(prompts, rollout["completions"], strict=True)])


class FakeWorker:
    """Answers 'ab' for every prompt; ``restarted`` answers once from version 0 (as after a crash)."""

    def __init__(self, restarted: bool = False):
        self.version, self.restarted, self.loaded = 0, restarted, []

    def token_ids(self):
        return {"eos": EOS, "pad": PAD}

    def generate(self, prompts, sampling):
        self.temperatures = [*getattr(self, "temperatures", []), sampling.temperature]
        version = 0 if self.restarted else self.version
        self.restarted = False
        n = len(prompts)
        return {
            "prompt_ids": [[5, 6]] * n,
            "completion_ids": [[7, 8]] * n,
            "completions": ["ab"] * n,
            "version": version,
        }

    def load_weights(self, ticket: WeightsTicket):
        self.version = ticket.version
        self.loaded.append(float(pull(ticket)["w"]))


class FakeEvaluator:
    def __init__(self, finishes: bool):
        self.finishes, self.queue, self.done = finishes, [], []

    def submit(self, ticket, version, step):
        self.queue.append(step)

    def new_points(self):
        out = [{"step": s, "version": s, "conditions": {}} for s in self.done]
        self.done = []
        return out

    def wait_idle(self, timeout_s):
        if self.finishes:
            self.done, self.queue = self.queue, []
        return self.finishes

    def curves(self):
        return {"series": {}}


class Sink:
    def __init__(self):
        self.records: list[tuple[int, dict]] = []

    def log(self, step, **values):
        self.records.append((step, values))


def make_trainer(evaluator=None, workers=None, **sets):
    cfg = build_config({}, [f"ppo.{k}={v}" for k, v in {"prompts_per_step": 4, "steps": 3, **sets}.items()])
    workers = workers or [FakeWorker()]
    roles = Roles(
        LocalHandle(FakePolicy()),
        LocalHandle(FakeReference()),
        LocalHandle(FakeCritic()),
        LocalHandle(FakeReward()),
        [LocalHandle(w) for w in workers],
        local_get,
    )
    pool = [(f"prompt {i}", i % 2 == 0) for i in range(10)]
    logs: list[str] = []
    trainer = PPOTrainer(cfg, roles, pool, FixedKLController(0.1), evaluator, log=logs.append)
    trainer.start(0)
    return trainer, workers, logs


def test_one_step_runs_every_phase_and_records_the_metric_keys():
    from jobs.ppo import STEP_KEYS

    trainer, workers, _ = make_trainer()
    record, points = trainer.step(1)
    assert not [k for k in STEP_KEYS if k not in record], record.keys()
    assert record["policy/version"] == 1 and trainer.version == 1
    assert workers[0].version == 1 and workers[0].loaded == [1.0]  # the published version reached the worker
    assert record["prompts/triggered"] == 0.5 and points == []


def test_an_annealed_temperature_reaches_the_workers_the_forwards_and_the_batch():
    trainer, workers, _ = make_trainer(steps=3, temperature=2.0, temperature_final=1.0)
    temps = []
    for step in (1, 2, 3):
        ro = trainer.generate(step)
        exp = trainer.score_and_forward(ro)
        temps.append(exp.temperature)
    assert temps == [2.0, 1.5, 1.0] and workers[0].temperatures == [2.0, 1.5, 1.0]
    assert trainer.roles.reference._obj.temperatures == trainer.roles.policy._obj.temperatures == [2.0, 1.5, 1.0]
    record, _ = make_trainer(steps=3, temperature=2.0, temperature_final=1.0)[0].step(1)
    assert record["rollout/temperature"] == 2.0


def test_phases_can_be_called_one_by_one():
    trainer, _, _ = make_trainer(samples_per_prompt=2)
    ro = trainer.generate(1)
    assert len(ro.prompts) == 8 and ro.versions == [0] * 8
    exp = trainer.score_and_forward(ro)
    assert exp.sequences.shape == (8, 5) and exp.action_mask.sum() == 8 * 3  # 'ab' + the EOS it stopped at
    stats = trainer.advantages(exp)
    assert stats["kl/mean"] == pytest.approx(3 * 0.5)  # k1 = -1 - (-1.5) per token, 3 tokens
    assert exp.advantages is not None and exp.returns is not None


def test_a_restarted_worker_is_resynced_once_and_its_chunk_redone():
    good, restarted = FakeWorker(), FakeWorker(restarted=True)
    trainer, _, logs = make_trainer(workers=[good, restarted], rollout_workers=2)
    trainer.step(1)  # both at version 1 now
    restarted.restarted = True
    ro = trainer.generate(2)
    assert ro.versions == [1] * 4 and restarted.loaded == [1.0, 1.0]
    assert any("RolloutWorker-1 came back at version 0" in m for m in logs)


class StaleAnswerWorker(FakeWorker):
    """Answers differently while it holds stale weights (after a restart), so a score of that answer shows."""

    def generate(self, prompts, sampling):
        stale = self.restarted
        out = super().generate(prompts, sampling)
        return out | {"completions": ["a stale answer!"] * len(prompts)} if stale else out


def test_each_chunk_is_scored_as_asked_with_the_rollout_and_a_redone_chunk_is_rescored():
    good, restarted = FakeWorker(), StaleAnswerWorker()
    trainer, _, _ = make_trainer(workers=[good, restarted], rollout_workers=2)
    reward = trainer.roles.reward._obj
    trainer.step(1)
    assert reward.calls == [2, 2]  # one call per worker's chunk, not one for the batch
    restarted.restarted = True
    ro = trainer.generate(2)
    assert ro.completions == ["ab"] * 4 and len(ro.score_calls) == 2
    exp = trainer.score_and_forward(ro)
    texts = [p + c for p, c in zip(ro.prompts, ro.completions, strict=True)]
    assert exp.scores.tolist() == FakeReward().score(texts)  # the redone answers, in batch order
    assert FakeReward().score([ro.prompts[-1] + "a stale answer!"]) != FakeReward().score([texts[-1]])


def test_evaluator_gets_the_published_ticket_on_its_steps():
    ev = FakeEvaluator(finishes=True)
    trainer, _, _ = make_trainer(evaluator=ev)
    trainer.cfg.eval.every_steps = 2
    sink = Sink()
    last = trainer.fit(0, sink, checkpoint=lambda step: None)
    assert last == 3 and ev.queue == [2, 3]  # every 2 steps, and the last step
    assert trainer.finish_evaluation(sink) == []
    assert [pt["step"] for pt in trainer.eval_points] == [2, 3]


def test_an_evaluator_timeout_is_reported_not_swallowed():
    """Item 8: the last curve points must never vanish silently."""
    ev = FakeEvaluator(finishes=False)
    trainer, _, logs = make_trainer(evaluator=ev)
    trainer.fit(0, Sink(), checkpoint=lambda step: None)
    missing = trainer.finish_evaluation(Sink())
    assert missing == [3]
    assert any("did not finish" in m and "[3]" in m for m in logs)


def test_fit_checkpoints_on_schedule_and_stops_after():
    trainer, _, _ = make_trainer(steps=5, checkpoint_every=2)
    saved: list[int] = []
    assert trainer.fit(0, Sink(), saved.append) == 5 and saved == [2, 4, 5]
    trainer, _, _ = make_trainer(steps=5, checkpoint_every=2)
    saved = []
    assert trainer.fit(0, Sink(), saved.append, stop_after=3) == 3 and saved == [2]


# ---- weight sync -------------------------------------------------------------------------------


def test_weight_sync_publishes_once_and_every_subscriber_pulls_that_version():
    policy, a, b = FakePolicy(), FakeWorker(), FakeWorker()
    sync = WeightSync(LocalHandle(policy), local_get)
    sync.publish(4)
    sync.push([LocalHandle(a), LocalHandle(b)])
    assert policy.published == [4] and a.version == b.version == 4 and a.loaded == b.loaded == [4.0]


def test_the_queued_publish_follows_the_train_call_and_is_collected_once():
    """``update`` queues the publish of the next version behind the policy's train call (no round trip
    of its own); ``sync_weights`` collects that very call, so each version is published once, after
    the step that made it."""
    trainer, _, _ = make_trainer(steps=2)
    trainer.fit(0, Sink(), lambda step: None)
    assert trainer.roles.policy._obj.published == [0, ("trained", 1), 1, ("trained", 2), 2]


def test_a_publish_of_another_version_than_the_queued_one_is_its_own_call():
    policy = FakePolicy()
    sync = WeightSync(LocalHandle(policy), local_get)
    sync.queue(3)
    assert sync.publish(5).version == 5 and policy.published == [5]  # the stale queued call never runs
    assert sync.queued is None


def test_unknown_transport_is_a_clear_error():
    with pytest.raises(KeyError, match="unknown weight transport"):
        publish({}, 1, transport="carrier-pigeon")


# ---- advantage registry ------------------------------------------------------------------------


def test_estimators_are_registered_by_name_and_a_new_one_plugs_in():
    assert {"gae", "rloo", "group_norm"} <= set(ESTIMATORS)
    assert estimator("gae").uses_critic and not estimator("rloo").uses_critic
    with pytest.raises(ConfigError, match="unknown estimator"):
        estimator("nope")

    @register_advantage("score_only", uses_critic=False, whiten=False)
    def score_only(scores, kl_cost, values, mask, cfg):
        adv = scores[:, None] * mask
        return adv, adv, adv

    try:
        mask = torch.ones(2, 3)
        rewards, adv, _ = estimator("score_only").fn(torch.tensor([1.0, -1.0]), mask * 0, mask * 0, mask, None)
        assert adv.tolist() == [[1.0] * 3, [-1.0] * 3]
    finally:
        del ESTIMATORS["score_only"]


# ---- launcher ----------------------------------------------------------------------------------


def test_role_specs_follow_the_resources_section():
    specs = role_specs(build_config({}, []))
    assert specs["policy"] == {"num_cpus": 0.2}  # resources.cpus_per_actor; no GPU, no restarts
    assert specs["rollout"] == {"num_cpus": 0.2, "max_restarts": 3, "max_task_retries": 3}
    cfg = build_config(
        {},
        ["resources.policy.num_gpus=0.5", "resources.reference.num_gpus=0.25", "resources.rollout.num_cpus=1"]
        + ["resources.rollout.num_gpus=0.25", "ppo.rollout_workers=2", "resources.colocate=[[policy, reference, rollout]]"],
    )
    specs = role_specs(cfg)
    assert specs["policy"]["num_gpus"] == 0.5 and specs["reference"]["num_gpus"] == 0.25
    assert specs["rollout"]["num_gpus"] == 0.25 and specs["rollout"]["num_cpus"] == 1
    [(group, bundle)] = colocation_bundles(cfg)
    assert group == ["policy", "reference", "rollout"]
    assert bundle == {"CPU": pytest.approx(0.2 + 0.2 + 2 * 1), "GPU": pytest.approx(0.5 + 0.25 + 2 * 0.25)}


@pytest.mark.parametrize("groups", ["[[policy]]", "[[policy, policy]]", "[[policy, critic], [critic, reward]]"])
def test_bad_colocation_is_a_one_line_config_error(groups):
    from rlhf.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        build_config({}, [f"resources.colocate={groups}"])
    assert "\n" not in str(err.value)


def test_a_large_experience_is_put_once_for_the_policy_and_the_critic(monkeypatch):
    import rlhf.ppo.trainer as trainer_module

    put: list = []
    trainer, _, _ = make_trainer()
    trainer.roles.put = lambda obj: put.append(obj) or obj
    trainer.step(1)
    assert put == []  # a small batch travels inline with each call
    monkeypatch.setattr(trainer_module, "SHARE_BYTES", 1)
    trainer.step(2)
    assert len(put) == 1 and put[0].nbytes() > 0
