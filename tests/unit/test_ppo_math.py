"""PPO math checked against values worked out by hand (or by plain python loops written here)."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf.ppo.logprobs import entropy_from_logits, logprobs_from_logits
from rlhf.ppo.losses import (
    AdaptiveKLController,
    Experience,
    FixedKLController,
    gae,
    kl_estimate,
    kl_penalised_rewards,
    make_kl_controller,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
    policy_loss,
    value_loss,
)


def t(values, dtype=torch.float64) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype)


def close(actual: torch.Tensor, expected, atol: float = 1e-9) -> None:
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), atol=atol, rtol=0)


# ---------------------------------------------------------------- masked statistics

X = t([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
M = t([[1, 1, 0], [1, 0, 0]])


@pytest.mark.parametrize("mask", [M, M.bool()], ids=["float", "bool"])
def test_masked_sum_and_mean(mask):
    close(masked_sum(X, mask), 7.0)
    close(masked_sum(X, mask, dim=1), [3.0, 4.0])
    close(masked_mean(X, mask), 7.0 / 3.0)
    close(masked_mean(X, mask, dim=1), [1.5, 4.0])
    close(masked_mean(X, mask, dim=0), [2.5, 2.0, 0.0])


def test_masked_mean_empty_mask_is_zero_and_ignores_masked_infinities():
    close(masked_mean(X, torch.zeros_like(X)), 0.0)
    close(masked_mean(X, t([[1, 1, 1], [0, 0, 0]]), dim=1), [2.0, 0.0])
    close(masked_mean(t([1.0, math.inf, math.nan]), t([1, 0, 0])), 1.0)


def test_masked_var():
    # selected 1, 2, 4: mean 7/3, squared deviations 16/9 + 1/9 + 25/9 = 42/9
    close(masked_var(X, M, unbiased=False), 42.0 / 9.0 / 3.0)
    close(masked_var(X, M), 42.0 / 9.0 / 2.0)
    close(masked_var(X, t([[0, 0, 1], [0, 0, 0]])), 0.0)
    close(masked_var(X, torch.zeros_like(X)), 0.0)


def test_masked_whiten():
    x, mask = t([1.0, 2.0, 3.0, 100.0]), t([1, 1, 1, 0])  # mean 2, unbiased variance 1
    close(masked_whiten(x, mask), [-1.0, 0.0, 1.0, 0.0], atol=1e-7)
    close(masked_whiten(x, mask, shift_mean=False), [1.0, 2.0, 3.0, 0.0], atol=1e-7)
    y = t([3.0, 7.0, 1.0, 5.0])  # mean 4, squared deviations 1+9+9+1 = 20, unbiased variance 20/3
    close(masked_whiten(y, torch.ones(4)), [d / math.sqrt(20 / 3) for d in (-1.0, 3.0, -3.0, 1.0)], atol=1e-7)
    close(masked_whiten(x, torch.zeros(4)), [0.0] * 4)


# ---------------------------------------------------------------- KL


LOGP, REF = t([0.5, -1.0, 0.0]), t([0.0, 0.0, 0.0])


def test_kl_estimators_by_hand():
    close(kl_estimate(LOGP, REF, "k1"), [0.5, -1.0, 0.0])
    close(kl_estimate(LOGP, REF, "k2"), [0.125, 0.5, 0.0])
    close(kl_estimate(LOGP, REF, "k3"), [math.exp(-0.5) - 0.5, math.exp(1.0) - 2.0, 0.0])
    close(kl_estimate(t([1.2]), t([1.7]), "k3"), [math.exp(0.5) - 1.5])
    with pytest.raises(ValueError):
        kl_estimate(LOGP, REF, "k4")  # type: ignore[arg-type]


def test_k3_non_negative_zero_at_equality_and_clamped():
    g = torch.Generator().manual_seed(0)
    logp, ref = torch.randn(64, generator=g) * 3, torch.randn(64, generator=g) * 3
    assert (kl_estimate(logp, ref, "k3") >= 0).all()
    close(kl_estimate(logp, logp.clone(), "k3"), torch.zeros(64))
    extreme = kl_estimate(t([100.0, -100.0]), t([0.0, 0.0]), "k3")
    close(extreme, [math.exp(-20) - 1 + 20, math.exp(20) - 1 - 20], atol=1e-6)


def test_kl_penalised_rewards_right_padding_and_empty_rows():
    scores = t([1.0, 2.0, 3.0])
    kl = t([[0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.5, 0.5], [1.0, 1.0, 1.0, 1.0]])
    mask = t([[1, 1, 0, 0], [0, 1, 1, 1], [0, 0, 0, 0]])
    expected = [[-0.01, -0.02 + 1.0, 0.0, 0.0], [0.0, -0.05, -0.05, -0.05 + 2.0], [0.0, 0.0, 0.0, 0.0]]
    close(kl_penalised_rewards(scores, kl, mask, 0.1), expected)
    close(kl_penalised_rewards(scores, kl, mask.bool(), 0.1), expected)


# ---------------------------------------------------------------- KL controllers


def test_fixed_kl_controller():
    ctl = FixedKLController(0.05)
    ctl.update(current_kl=100.0, n_steps=1000)
    assert ctl.value == 0.05
    other = FixedKLController(1.0)
    other.load_state_dict(ctl.state_dict())
    assert other.value == 0.05


def test_adaptive_kl_controller_by_hand():
    ctl = AdaptiveKLController(0.2, target=6.0, horizon=10000)
    ctl.update(current_kl=9.0, n_steps=256)  # error 0.5 -> clipped to 0.2; mult 1 + 0.2 * 0.0256 = 1.00512
    assert ctl.value == pytest.approx(0.201024, abs=1e-12)
    ctl.update(current_kl=5.4, n_steps=512)  # error -0.1; mult 1 - 0.1 * 0.0512 = 0.99488
    assert ctl.value == pytest.approx(0.19999475712, abs=1e-12)
    ctl.update(current_kl=0.0, n_steps=1000)  # error -1 -> clipped to -0.2; mult 0.98
    assert ctl.value == pytest.approx(0.1959948619776, abs=1e-12)


def test_adaptive_kl_controller_resumes_from_state_dict():
    ctl = AdaptiveKLController(0.1, target=4.0, horizon=500)
    ctl.update(5.0, 100)
    resumed = AdaptiveKLController(0.9, target=1.0, horizon=1)
    resumed.load_state_dict(ctl.state_dict())
    assert (resumed.value, resumed.target, resumed.horizon) == (ctl.value, 4.0, 500.0)
    ctl.update(3.0, 50)
    resumed.update(3.0, 50)
    assert resumed.value == ctl.value


def test_make_kl_controller():
    assert type(make_kl_controller("fixed", 0.1)) is FixedKLController
    adaptive = make_kl_controller("adaptive", 0.1, target=6.0, horizon=10000)
    assert isinstance(adaptive, AdaptiveKLController) and adaptive.value == 0.1
    with pytest.raises(ValueError):
        make_kl_controller("adaptive", 0.1)
    with pytest.raises(ValueError):
        make_kl_controller("pid", 0.1)  # type: ignore[arg-type]


# ---------------------------------------------------------------- GAE


def reference_gae(rewards: list[float], values: list[float], gamma: float, lam: float) -> list[float]:
    """One unpadded row, plain python."""
    advantages, running = [0.0] * len(rewards), 0.0
    for i in reversed(range(len(rewards))):
        next_value = values[i + 1] if i + 1 < len(rewards) else 0.0
        running = rewards[i] + gamma * next_value - values[i] + gamma * lam * running
        advantages[i] = running
    return advantages


def test_gae_gamma_one_lambda_one_is_future_return_minus_value():
    rewards, values = t([[1.0, 0.0, 2.0, 3.0]]), t([[0.5, 1.0, 1.5, 2.0]])
    adv, ret = gae(rewards, values, torch.ones(1, 4), gamma=1.0, lam=1.0)
    close(adv, [[6.0 - 0.5, 5.0 - 1.0, 5.0 - 1.5, 3.0 - 2.0]])
    close(ret, [[6.0, 5.0, 5.0, 3.0]])


def test_gae_by_hand_gamma_09_lambda_08():
    # deltas: 0.7 at t=2; 0.9*0.3-0.2 = 0.07 at t=1; 0.9*0.2-0.1 = 0.08 at t=0; gamma*lam = 0.72
    adv, ret = gae(t([[0.0, 0.0, 1.0]]), t([[0.1, 0.2, 0.3]]), torch.ones(1, 3), gamma=0.9, lam=0.8)
    close(adv, [[0.08 + 0.72 * (0.07 + 0.72 * 0.7), 0.07 + 0.72 * 0.7, 0.7]], atol=1e-12)
    close(adv, [[0.49328, 0.574, 0.7]], atol=1e-12)
    close(ret, [[0.59328, 0.774, 1.0]], atol=1e-12)


def test_gae_padded_rows_match_python_loop():
    rewards = t([[0.3, -0.1, 0.0, 1.0, 0.0], [0.5, 0.2, 7.0, 7.0, 7.0], [0.0, 0.1, 0.2, 0.0, 9.0]])
    values = t([[0.2, 0.4, -0.3, 0.1, 0.5], [1.0, -0.5, 9.0, 9.0, 9.0], [9.0, 0.3, 0.6, 0.9, 9.0]])
    mask = t([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [0, 1, 1, 1, 0]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    spans = [(0, 5), (0, 2), (1, 4)]
    for row, (lo, hi) in enumerate(spans):
        expected = [0.0] * 5
        expected[lo:hi] = reference_gae(rewards[row, lo:hi].tolist(), values[row, lo:hi].tolist(), 0.9, 0.8)
        close(adv[row], expected, atol=1e-12)
        close(
            ret[row],
            [a + v * m for a, v, m in zip(expected, values[row].tolist(), mask[row].tolist(), strict=True)],
            atol=1e-12,
        )
    # row 1 by hand: t=1: 0.2 - (-0.5) = 0.7; t=0: 0.5 + 0.9*(-0.5) - 1 + 0.72*0.7 = -0.446
    close(adv[1], [-0.446, 0.7, 0.0, 0.0, 0.0], atol=1e-12)


# ---------------------------------------------------------------- losses


def test_policy_loss_clipping_with_positive_and_negative_advantages():
    ratios = [1.5, 0.5, 1.1, 0.7, 10.0]
    logp = t([math.log(r) for r in ratios]).requires_grad_()
    advantages, mask = t([1.0, 1.0, -1.0, -1.0, 5.0]), t([1, 1, 1, 1, 0])
    loss, stats = policy_loss(logp, torch.zeros(5, dtype=torch.float64), advantages, mask, clip_eps=0.2)
    # per token max(-A*r, -A*clip(r)): -1.2 (clipped), -0.5, 1.1, 0.8 (clipped); the fifth is masked out
    close(loss.detach(), (-1.2 - 0.5 + 1.1 + 0.8) / 4)
    # clipfrac counts tokens whose clipped branch is the one in the loss: 1.5 (A > 0) and 0.7 (A < 0); 0.5
    # with A > 0 is outside the band but its unclipped term is the larger one, so it is not clipped
    assert stats["clipfrac"] == pytest.approx(0.5)
    assert stats["approx_kl"] == pytest.approx(sum(0.5 * math.log(r) ** 2 for r in ratios[:4]) / 4)
    assert isinstance(stats["clipfrac"], float) and isinstance(stats["approx_kl"], float)
    loss.backward()
    # d/dlogp of -A*exp(logp) is -A*r; clipped tokens get no gradient
    close(logp.grad, [0.0, -0.5 / 4, 1.1 / 4, 0.0, 0.0])


def test_policy_loss_inside_trust_region_is_plain_surrogate():
    logp = t([math.log(1.1), math.log(0.9)])
    loss, stats = policy_loss(logp, torch.zeros(2, dtype=torch.float64), t([2.0, 3.0]), torch.ones(2), 0.2)
    close(loss, -(2.0 * 1.1 + 3.0 * 0.9) / 2)
    assert stats["clipfrac"] == 0.0


def test_value_loss_clipped_and_unclipped():
    values, old = t([1.0, 2.0, 0.0, 1.0, 50.0]), t([0.5, 2.5, 0.0, 0.5, 0.0])
    returns, mask = t([2.0, 0.0, 1.0, 0.0, 0.0]), t([1, 1, 1, 1, 0])
    loss, stats = value_loss(values, old, returns, mask, clip_eps=None)
    close(loss, 0.5 * (1.0 + 4.0 + 1.0 + 1.0) / 4)
    assert stats["vf_clipfrac"] == 0.0
    # clipped values 0.7, 2.3, 0.0, 0.7 -> squared errors 1.69, 5.29, 1.0, 0.49 against 1, 4, 1, 1
    loss, stats = value_loss(values, old, returns, mask, clip_eps=0.2)
    close(loss, 0.5 * (1.69 + 5.29 + 1.0 + 1.0) / 4, atol=1e-12)
    assert stats["vf_clipfrac"] == pytest.approx(0.5)


# ---------------------------------------------------------------- logits


def test_entropy_from_logits():
    close(entropy_from_logits(torch.zeros(2, 3, 7)), torch.full((2, 3), math.log(7)), atol=1e-6)
    close(entropy_from_logits(torch.full((1, 1, 50), 3.0)), [[math.log(50)]], atol=1e-6)
    probs = t([[[0.5, 0.25, 0.25]]])
    close(entropy_from_logits(probs.log()), [[1.5 * math.log(2)]], atol=1e-12)
    close(entropy_from_logits(t([[[1000.0, 1000.0], [0.0, -1000.0]]])), [[math.log(2), 0.0]], atol=1e-12)
    assert entropy_from_logits(torch.zeros(1, 1, 4, dtype=torch.bfloat16)).dtype == torch.float32


def test_logprobs_from_logits():
    logits = t([[[0.5, 0.25, 0.25], [0.1, 0.2, 0.7]]]).log()
    close(logprobs_from_logits(logits, torch.tensor([[0, 2]])), [[math.log(0.5), math.log(0.7)]], atol=1e-12)
    close(logprobs_from_logits(logits + 1000.0, torch.tensor([[2, 1]])), [[math.log(0.25), math.log(0.2)]], atol=1e-9)
    close(logprobs_from_logits(torch.zeros(1, 1, 4), torch.tensor([[3]])), [[-math.log(4)]], atol=1e-6)


# ---------------------------------------------------------------- Experience


def make_experience(n: int = 5, length: int = 4) -> Experience:
    rows = torch.arange(n, dtype=torch.float32).unsqueeze(1)
    per_token = rows.expand(n, length - 1).clone()
    return Experience(
        sequences=torch.arange(n).unsqueeze(1).expand(n, length).clone(),
        attention_mask=torch.ones(n, length, dtype=torch.long),
        action_mask=torch.ones(n, length - 1),
        old_logprobs=per_token,
        ref_logprobs=per_token + 0.1,
        values=per_token + 0.2,
        rewards=per_token + 0.3,
        advantages=per_token + 0.4,
        returns=per_token + 0.5,
        scores=rows.squeeze(1) * 10,
        versions=[100 + i for i in range(n)],
    )


def test_experience_minibatches_cover_each_sample_once_and_stay_aligned():
    exp = make_experience()
    assert len(exp) == 5
    batches = list(exp.minibatches(2, torch.Generator().manual_seed(0)))
    assert [len(b) for b in batches] == [2, 2, 1]
    order = [int(i) for b in batches for i in b.sequences[:, 0]]
    assert sorted(order) == [0, 1, 2, 3, 4]
    for b in batches:
        ids = b.sequences[:, 0]
        assert b.versions == [100 + int(i) for i in ids]
        close(b.scores, ids.float() * 10)
        close(b.returns[:, 0], ids.float() + 0.5)
        assert b.action_mask.shape == (len(b), 3)


def test_experience_minibatches_deterministic_for_a_seed():
    exp = make_experience(n=9)

    def order(seed: int) -> list[int]:
        gen = torch.Generator().manual_seed(seed)
        return [int(i) for b in exp.minibatches(4, gen) for i in b.sequences[:, 0]]

    assert order(3) == order(3)
    assert len({tuple(order(s)) for s in range(6)}) > 1


def test_experience_to_device_and_optional_fields():
    exp = Experience(torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3), torch.ones(2, 2))
    moved = exp.to("cpu")
    assert moved.old_logprobs is None and moved.versions == []
    assert [len(b) for b in moved.minibatches(1, torch.Generator().manual_seed(0))] == [1, 1]
    full = make_experience().to(torch.device("cpu"))
    torch.testing.assert_close(full.values, make_experience().values)
