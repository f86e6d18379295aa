"""An advantage estimator registered from its own module (``toy_estimator.py``) runs a PPO step in
process: the config names it, the registry says it needs no critic, and the policy trains on its
advantages. Nothing else in the project knows about it."""

from __future__ import annotations

import sys

import pytest
import torch

from actors.local import LocalHandle, local_get
from rlhf.config.core import build_config
from rlhf.errors import ConfigError
from rlhf.ppo.advantages import check_estimator, uses_critic
from rlhf.ppo.losses import FixedKLController
from rlhf.ppo.roles import Roles
from rlhf.ppo.trainer import PPOTrainer
from tests.unit.test_ppo_trainer import FakePolicy, FakeReference, FakeReward, FakeWorker

MODULE = "tests.unit.toy_estimator"


class RecordingPolicy(FakePolicy):
    def train(self, exp, step, kl_coef):
        self.advantages, self.mask = exp.advantages.clone(), exp.action_mask.clone()
        return super().train(exp, step, kl_coef)


def test_a_toy_estimator_from_its_own_module_runs_a_ppo_step():
    sys.modules.pop(MODULE, None)  # found by name alone: nothing imported it before
    name = f"{MODULE}:score_only"
    cfg = build_config({}, [f"ppo.advantage_estimator={name}", "ppo.prompts_per_step=4", "ppo.kl_coef=0"])
    assert check_estimator(cfg.ppo).name == "score_only" and not uses_critic(cfg.ppo)
    policy = RecordingPolicy()
    roles = Roles(
        LocalHandle(policy), LocalHandle(FakeReference()), None, LocalHandle(FakeReward()),
        [LocalHandle(FakeWorker())], local_get,
    )  # fmt: skip
    trainer = PPOTrainer(cfg, roles, [(f"prompt {i}", False) for i in range(8)], FixedKLController(0.0))
    trainer.start(0)
    record, _ = trainer.step(1)
    scores = torch.tensor([float(len(f"prompt {i}ab") % 3) for i in range(4)])  # FakeReward's scores
    assert policy.mask.sum() > 0 and torch.equal(policy.advantages, scores[:, None] * policy.mask)
    assert "losses/value" not in record and trainer.version == 1


def test_the_config_names_only_registered_estimators():
    with pytest.raises(ConfigError, match="unknown estimator 'nope'.*registered: .*gae"):
        check_estimator(build_config({}, ["ppo.advantage_estimator=nope"]).ppo)
    with pytest.raises(ConfigError, match="cannot import no_such_module"):
        check_estimator(build_config({}, ["ppo.advantage_estimator=no_such_module:x"]).ppo)
