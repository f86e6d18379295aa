"""A toy advantage estimator registered from its own module: the sequence's score at every token,
no critic, no whitening. ``ppo.advantage_estimator=tests.unit.toy_estimator:score_only`` finds it
(``rlhf.ppo.advantages.estimator`` imports this module on first use). Used by
``tests/unit/test_toy_estimator.py``; copy both to add an estimator (docs/extending.md)."""

from __future__ import annotations

from rlhf.ppo.advantages import register_advantage

NAME = "tests.unit.toy_estimator:score_only"


@register_advantage("score_only", uses_critic=False, whiten=False)
def score_only(scores, kl_cost, values, mask, cfg):
    rewards = scores[:, None] * mask - kl_cost
    return rewards, rewards, rewards
