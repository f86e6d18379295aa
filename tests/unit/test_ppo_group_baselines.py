"""Critic-free advantage estimators (rloo, group_norm) by hand, and their wiring into
``compute_advantages`` and the config."""

import pytest
import torch

from rlhf.config.core import build_config
from rlhf.errors import ConfigError
from rlhf.ppo.advantages import check_estimator, uses_critic
from rlhf.ppo.losses import Experience, cumulative_returns, group_baseline
from rlhf.ppo.models import compute_advantages


def test_rloo_subtracts_the_mean_of_the_other_samples():
    scores = torch.tensor([1.0, 3.0, 0.0, 4.0, 5.0, 6.0])  # two prompts x 3 samples
    got = group_baseline(scores, 3, "rloo")
    # 1 - (3+0)/2, 3 - (1+0)/2, 0 - (1+3)/2 ; 4 - 5.5, 5 - 5, 6 - 4.5
    assert torch.allclose(got, torch.tensor([-0.5, 2.5, -2.0, -1.5, 0.0, 1.5]))


def test_group_norm_standardises_within_each_group():
    scores = torch.tensor([1.0, 3.0, 10.0, 10.0])
    got = group_baseline(scores, 2, "group_norm")
    std = torch.tensor([1.0, 3.0]).std()  # unbiased: sqrt(2)
    assert torch.allclose(got[:2], torch.tensor([-1.0, 1.0]) / (std + 1e-6))
    assert torch.allclose(got[2:], torch.zeros(2))  # equal scores: no signal, no division by zero


@pytest.mark.parametrize("n, k", [(5, 2), (4, 1)])
def test_groups_must_divide_the_batch_and_have_two_samples(n, k):
    with pytest.raises(ValueError, match="groups"):
        group_baseline(torch.zeros(n), k, "rloo")


def test_cumulative_returns_by_hand():
    rewards = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    mask = torch.tensor([[0, 1, 1, 0]])
    got = cumulative_returns(rewards, mask, gamma=0.5)
    assert torch.allclose(got, torch.tensor([[0.0, 1.0 + 0.5 * 2.0, 2.0, 0.0]]))


def test_compute_advantages_without_a_critic_uses_the_group_baseline():
    cfg = build_config({}, ["ppo.advantage_estimator=rloo", "ppo.samples_per_prompt=2", "ppo.whiten_advantages=false"])
    mask = torch.ones(2, 2)
    zeros = torch.zeros(2, 2)
    exp = Experience(
        torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3), mask, zeros, zeros, zeros, scores=torch.tensor([1.0, 3.0])
    )
    compute_advantages(exp, cfg.ppo, kl_coef=0.1)  # KL is 0: logprobs equal the reference's
    # scores 1 and 3 in one group: -2 and +2 at the last token; reward-to-go with gamma 1
    assert torch.allclose(exp.advantages, torch.tensor([[-2.0, -2.0], [2.0, 2.0]]))
    assert torch.equal(exp.returns, exp.advantages)


def test_a_critic_free_estimator_needs_two_samples_per_prompt():
    with pytest.raises(ConfigError, match="samples_per_prompt >= 2"):
        check_estimator(build_config({}, ["ppo.advantage_estimator=group_norm"]).ppo)
    assert not uses_critic(build_config({}, ["ppo.advantage_estimator=group_norm", "ppo.samples_per_prompt=4"]).ppo)
    assert uses_critic(build_config({}, []).ppo)
