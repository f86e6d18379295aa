"""Advantage estimators by name: ``@register_advantage("name")`` on a function
``(scores [B], kl_cost [B, T], values [B, T], mask [B, T], cfg) -> (rewards, advantages, returns)``.

``kl_cost`` is the per-token KL times its coefficient, subtracted from the reward (zeros when the
KL is a loss term). The estimator places the score, computes advantages and returns; whether the
advantages are whitened afterwards is the estimator's ``whiten`` flag (GAE only: a group baseline
is already centred per prompt).

The registration owns everything the rest of the code asks about an estimator: whether the run
starts a critic (``uses_critic``), whether to whiten, and the fewest samples per prompt it needs.
``ppo.advantage_estimator`` names a registered estimator, or ``package.module:name`` for one
registered in a module of its own (imported on first use, in whichever process computes the
advantages), so a new estimator touches only its own module (``tests/unit/toy_estimator.py``).
``check_estimator`` is the config check: the config layer sits below this package and cannot
see the registry, so ``rlhf ppo`` and ``PPOTrainer`` call it before anything starts.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from rlhf.config.core import PPOConfig
from rlhf.errors import ConfigError
from rlhf.ppo.losses import cumulative_returns, gae, group_baseline, kl_penalised_rewards

Estimate = Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class AdvantageEstimator:
    name: str
    fn: Estimate
    uses_critic: bool
    whiten: bool  # whiten the advantages over the batch afterwards (when ppo.whiten_advantages)
    min_samples_per_prompt: int = 1  # a baseline from the other samples of a prompt needs 2


ESTIMATORS: dict[str, AdvantageEstimator] = {}


def register_advantage(
    name: str, uses_critic: bool, whiten: bool, min_samples_per_prompt: int = 1
) -> Callable[[Estimate], Estimate]:
    def deco(fn: Estimate) -> Estimate:
        ESTIMATORS[name] = AdvantageEstimator(name, fn, uses_critic, whiten, min_samples_per_prompt)
        return fn

    return deco


def estimator(name: str) -> AdvantageEstimator:
    """The estimator ``name``: a registered one, or ``package.module:name`` (the module is imported,
    its ``register_advantage`` runs, and ``name`` is looked up)."""
    module, _, short = name.rpartition(":")
    if module and short not in ESTIMATORS:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(f"ppo.advantage_estimator={name}: cannot import {module} ({exc})") from None
    if short not in ESTIMATORS:
        raise ConfigError(
            f"ppo.advantage_estimator: unknown estimator {name!r} (registered: {', '.join(sorted(ESTIMATORS))})"
        )
    return ESTIMATORS[short]


def check_estimator(cfg: PPOConfig) -> AdvantageEstimator:
    """``ppo.advantage_estimator`` checked against the registry (one line, ``ConfigError``)."""
    est = estimator(cfg.advantage_estimator)
    if cfg.samples_per_prompt < est.min_samples_per_prompt:
        raise ConfigError(
            f"advantage_estimator={cfg.advantage_estimator} needs samples_per_prompt >= {est.min_samples_per_prompt}"
        )
    return est


def uses_critic(cfg: PPOConfig) -> bool:
    """Whether a run with this ``ppo`` section starts a critic (the estimator's registration says)."""
    return estimator(cfg.advantage_estimator).uses_critic


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


register_advantage("rloo", uses_critic=False, whiten=False, min_samples_per_prompt=2)(_group("rloo"))
register_advantage("group_norm", uses_critic=False, whiten=False, min_samples_per_prompt=2)(_group("group_norm"))
