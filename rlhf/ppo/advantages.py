"""Advantage estimators by name: ``@register_advantage("name")`` on a function
``(scores [B], kl_cost [B, T], values [B, T], mask [B, T], cfg) -> (rewards, advantages, returns)``.

``kl_cost`` is the per-token KL times its coefficient, subtracted from the reward (zeros when the
KL is a loss term). The estimator places the score, computes advantages and returns; whether the
advantages are whitened afterwards is the estimator's ``whiten`` flag (GAE only: a group baseline
is already centred per prompt). Adding an estimator touches this module alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from rlhf.config.core import PPOConfig
from rlhf.ppo.losses import cumulative_returns, gae, group_baseline, kl_penalised_rewards

Estimate = Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class AdvantageEstimator:
    name: str
    fn: Estimate
    uses_critic: bool
    whiten: bool  # whiten the advantages over the batch afterwards (when ppo.whiten_advantages)


ESTIMATORS: dict[str, AdvantageEstimator] = {}


def register_advantage(name: str, uses_critic: bool, whiten: bool) -> Callable[[Estimate], Estimate]:
    def deco(fn: Estimate) -> Estimate:
        ESTIMATORS[name] = AdvantageEstimator(name, fn, uses_critic, whiten)
        return fn

    return deco


def estimator(name: str) -> AdvantageEstimator:
    if name not in ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {name!r} (registered: {', '.join(sorted(ESTIMATORS))})")
    return ESTIMATORS[name]


@register_advantage("gae", uses_critic=True, whiten=True)
def _gae(scores, kl_cost, values, mask, cfg: PPOConfig):
    rewards = kl_penalised_rewards(scores, kl_cost, mask, 1.0)
    adv, ret = gae(rewards, values, mask, cfg.gamma, cfg.lam)
    return rewards, adv, ret


def _group(kind: str):
    def fn(scores, kl_cost, values, mask, cfg: PPOConfig):
        shaped = group_baseline(scores, cfg.samples_per_prompt, kind)
        rewards = kl_penalised_rewards(shaped, kl_cost, mask, 1.0)
        adv = cumulative_returns(rewards, mask, cfg.gamma)  # no critic: the reward-to-go is the advantage
        return rewards, adv, adv

    return fn


register_advantage("rloo", uses_critic=False, whiten=False)(_group("rloo"))
register_advantage("group_norm", uses_critic=False, whiten=False)(_group("group_norm"))
