"""A rollout backend registered from its own module (``toy_backend.py``) runs PPO steps in process
inside the real ``RolloutWorker`` (synchronous, and asynchronous, where the behaviour log-probs come
through the backend protocol alone). Nothing else in the project knows about it."""

from __future__ import annotations

import sys

import pytest

from actors.local import LocalHandle, local_get
from actors.ppo_actors import RolloutWorker
from actors.role_options import RolloutOptions
from rlhf.config.core import build_config
from rlhf.errors import ConfigError
from rlhf.ppo.losses import FixedKLController
from rlhf.ppo.roles import Roles
from rlhf.ppo.trainer import PPOTrainer
from rlhf.rollout.backends import check_backend
from tests.unit.test_ppo_trainer import FakeCritic, FakePolicy, FakeReference, FakeReward

MODULE = "tests.unit.toy_backend"


class RecordingPolicy(FakePolicy):
    def train(self, exp, step, kl_coef):
        self.exps = [*getattr(self, "exps", []), exp]
        return super().train(exp, step, kl_coef)


def _trainer(*sets: str) -> tuple[PPOTrainer, RecordingPolicy, RolloutWorker]:
    cfg = build_config({}, [f"ppo.rollout_backend={MODULE}:SPEC", "ppo.prompts_per_step=4", "ppo.steps=4", *sets])
    check_backend(cfg.ppo.rollout_backend, behaviour_logprobs=cfg.ppo.async_rollout)
    worker = RolloutWorker(RolloutOptions(role="rollout", model_dir="no-model-dir", backend=cfg.ppo.rollout_backend))
    policy = RecordingPolicy()
    roles = Roles(
        LocalHandle(policy), LocalHandle(FakeReference()), LocalHandle(FakeCritic()), LocalHandle(FakeReward()),
        [LocalHandle(worker)], local_get,
    )  # fmt: skip
    trainer = PPOTrainer(cfg, roles, [(f"prompt {i}", False) for i in range(16)], FixedKLController(0.1))
    trainer.start(0)
    return trainer, policy, worker


def test_a_toy_backend_from_its_own_module_runs_a_ppo_step():
    sys.modules.pop(MODULE, None)  # found by name alone: nothing imported it before
    trainer, policy, worker = _trainer()
    assert type(worker.backend).__name__ == "ToyBackend" and worker.token_ids() == {"eos": 2, "pad": 1}
    trainer.step(1)
    (exp,) = policy.exps
    assert exp.sequences[:, 2:4].tolist() == [[7, 8]] * 4  # the toy's answer after the prompt [5, 6]
    assert worker.version() == 1  # the new weights reached the toy backend


def test_the_async_path_takes_behaviour_logprobs_from_the_backend_protocol():
    trainer, policy, worker = _trainer("ppo.async_rollout=true", "ppo.max_staleness=1", "ppo.old_logprobs=behaviour")
    trainer.step(1)
    trainer.step(2)  # trains on samples prefetched with version 0's weights
    stale = policy.exps[-1]
    assert (stale.old_logprobs[stale.action_mask.bool()] == 0.0).all()  # -version 0: the sampler's, not pi's (-1)


def test_the_config_names_only_registered_backends():
    with pytest.raises(ConfigError, match="unknown backend 'nope'.*registered: hf, vllm"):
        check_backend(build_config({}, ["ppo.rollout_backend=nope"]).ppo.rollout_backend)
    with pytest.raises(ConfigError, match="async_rollout needs behaviour log-probs.*vllm"):
        check_backend("vllm", behaviour_logprobs=True)
