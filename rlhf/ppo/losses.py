"""PPO math for RLHF: masked statistics, KL estimators and controllers, GAE, clipped losses, the experience
batch (log-probs of a model's tokens: ``rlhf.ppo.logprobs``).

Shape conventions: ``B`` = batch, ``T`` = token positions scored by the policy, ``V`` = vocabulary,
``L`` = full sequence length. Masks may be bool or float (0/1); a masked-out position contributes nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

KLKind = Literal["k1", "k2", "k3"]
LOG_RATIO_CLAMP = 20.0  # |log pi/pi_old| above this is clamped in the policy loss (exp(20) ~ 5e8, finite)


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of ``x`` where ``mask`` is set, over ``dim`` (all elements when None). ``x``, ``mask``: same shape."""
    picked = torch.where(mask.bool(), x, torch.zeros_like(x))
    return picked.sum() if dim is None else picked.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over the positions where ``mask`` is set; 0 where nothing is selected."""
    count = masked_sum(torch.ones_like(x), mask, dim)
    return masked_sum(x, mask, dim) / torch.where(count > 0, count, torch.ones_like(count))


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance (scalar) of the selected elements of ``x``. Bessel's correction is applied when ``unbiased``
    and at least two elements are selected; an empty mask gives 0."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    n = mask.bool().sum()
    if unbiased and n > 1:
        var = var * n / (n - 1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Normalise the selected elements of ``x`` to unit (unbiased) variance and, if ``shift_mean``, zero mean.
    With ``shift_mean=False`` the original mean is kept. Masked-out positions are set to 0. Same shape as ``x``."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, torch.zeros_like(whitened))


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, kind: KLKind = "k1") -> torch.Tensor:
    """Per-token estimate of KL(pi || ref) from samples of pi; ``logp``, ``ref_logp``: [B, T] -> [B, T].

    With ``r = logp - ref_logp``: ``k1 = r`` (unbiased, can be negative), ``k2 = r**2 / 2`` and
    ``k3 = exp(-r) - 1 + r`` (unbiased and non-negative; ``r`` is clamped to [-20, 20] first).
    """
    log_ratio = logp - ref_logp
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio**2
    if kind == "k3":
        log_ratio = log_ratio.clamp(-20.0, 20.0)
        return torch.exp(-log_ratio) - 1 + log_ratio
    raise ValueError(f"unknown KL estimator {kind!r} (expected 'k1', 'k2' or 'k3')")


def kl_penalised_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """Per-token rewards [B, T]: ``-kl_coef * kl`` at every selected position, plus ``scores`` [B] added at the
    last selected position of each row. Rows whose mask is empty are all zeros."""
    valid = mask.bool()
    rewards = torch.where(valid, -kl_coef * kl, torch.zeros_like(kl))
    last = valid.shape[1] - 1 - valid.flip(1).int().argmax(dim=1)
    bonus = torch.where(valid.any(dim=1), scores.to(rewards.dtype), torch.zeros_like(scores, dtype=rewards.dtype))
    return rewards.scatter_add(1, last.unsqueeze(1), bonus.unsqueeze(1))


class FixedKLController:
    """A constant KL coefficient; ``update`` does nothing."""

    def __init__(self, value: float):
        self.value = float(value)

    def update(self, current_kl: float, n_steps: int) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController(FixedKLController):
    """KL coefficient steered towards ``target`` (Ziegler et al. 2019):
    ``value *= 1 + clip(current_kl / target - 1, -0.2, 0.2) * n_steps / horizon``."""

    def __init__(self, init_kl_coef: float, target: float, horizon: float):
        if target <= 0 or horizon <= 0:
            raise ValueError(f"adaptive KL needs target > 0 and horizon > 0, got {target} and {horizon}")
        super().__init__(init_kl_coef)
        self.target, self.horizon = float(target), float(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        proportional_error = min(max(float(current_kl) / self.target - 1, -0.2), 0.2)
        self.value *= 1 + proportional_error * n_steps / self.horizon

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.target, self.horizon = float(state.get("target", self.target)), float(state.get("horizon", self.horizon))


def make_kl_controller(
    kind: Literal["fixed", "adaptive"], init: float, target: float | None = None, horizon: float | None = None
) -> FixedKLController:
    """``FixedKLController(init)`` or ``AdaptiveKLController(init, target, horizon)``."""
    if kind == "fixed":
        return FixedKLController(init)
    if kind == "adaptive":
        if target is None or horizon is None:
            raise ValueError("an adaptive KL controller needs both target and horizon")
        return AdaptiveKLController(init, target, horizon)
    raise ValueError(f"unknown KL controller {kind!r} (expected 'fixed' or 'adaptive')")


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation, right to left; all inputs [B, T] -> (advantages, returns), [B, T] each.

    ``delta_t = r_t + gamma * V_{t+1} - V_t`` and ``A_t = delta_t + gamma * lam * A_{t+1}``, where rewards and
    values are zeroed at masked positions, so the value after a row's last selected token counts as 0. The mask
    should be contiguous in each row (zeros only before and/or after the response). ``returns = A + V``;
    both outputs are 0 at masked positions. Advantages are not whitened (use ``masked_whiten``).
    """
    m = mask.to(values.dtype)
    rewards, values = rewards * m, values * m
    advantages = torch.zeros_like(values)
    last_gae = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        next_value = values[:, t + 1] if t + 1 < values.shape[1] else torch.zeros_like(last_gae)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last_gae = delta + gamma * lam * last_gae
        advantages[:, t] = last_gae
    advantages = advantages * m
    return advantages, (advantages + values) * m


def group_baseline(scores: torch.Tensor, group_size: int, kind: str) -> torch.Tensor:
    """Critic-free shaping of sequence scores [B] sampled ``group_size`` at a time per prompt
    (consecutive rows) -> [B].

    ``rloo``: ``r_i - mean(r_j, j != i)`` within the group (leave-one-out baseline).
    ``group_norm`` (GRPO): ``(r_i - mean) / (std + 1e-6)`` within the group (unbiased std).
    """
    if group_size < 2 or scores.numel() % group_size:
        raise ValueError(f"{kind} needs groups of >= 2 samples; got {scores.numel()} scores in groups of {group_size}")
    r = scores.view(-1, group_size)
    if kind == "rloo":
        shaped = r - (r.sum(-1, keepdim=True) - r) / (group_size - 1)
    elif kind == "group_norm":
        shaped = (r - r.mean(-1, keepdim=True)) / (r.std(-1, keepdim=True) + 1e-6)
    else:
        raise ValueError(f"unknown group baseline '{kind}'")
    return shaped.reshape(-1)


def cumulative_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """Discounted reward-to-go per token, right to left: ``G_t = r_t + gamma * G_{t+1}``; [B, T];
    0 at masked positions. With no critic these are the advantages (REINFORCE-style)."""
    m = mask.to(rewards.dtype)
    rewards = rewards * m
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        running = rewards[:, t] + gamma * running
        out[:, t] = running
    return out * m


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped PPO surrogate; ``logp``, ``old_logp``, ``advantages``, ``mask``: [B, T] -> (scalar loss, stats).

    ``weights`` [B, T] (optional, no gradient): per-token importance weights multiplying each token's term
    before the mean (asynchronous rollout: ``min(pi_old / pi_behaviour, c)``, see ``truncated_is_weights``).

    ``loss = masked_mean(max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)))`` with ``ratio = exp(logp - old_logp)``,
    the log-ratio clamped to +-``LOG_RATIO_CLAMP`` first. Stats (python floats): ``clipfrac`` = share of selected
    tokens where the clipped branch is the one in the loss (``clipped > unclipped``: outside the band *and* on the
    side the clip acts on, as TRL and veRL count it); ``approx_kl`` = masked mean of ``(logp - old_logp)**2 / 2``.
    """
    # clamped so that a far-off sample gives a large finite ratio, never inf (exp(89) overflows fp32)
    log_ratio = (logp - old_logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_eps, 1 + clip_eps)
    per_token = torch.maximum(unclipped, clipped)
    loss = masked_mean(per_token if weights is None else weights.detach() * per_token, mask)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((clipped > unclipped).to(ratio.dtype), mask).item(),
            "approx_kl": masked_mean(0.5 * log_ratio**2, mask).item(),
        }
    return loss, stats


def truncated_is_weights(old_logp: torch.Tensor, behaviour_logp: torch.Tensor, truncation: float) -> torch.Tensor:
    """Per-token truncated importance weights [B, T]: ``min(exp(old_logp - behaviour_logp), truncation)``
    (the log-ratio clamped to +-``LOG_RATIO_CLAMP`` first). ``old_logp``: the policy that the PPO ratio is
    taken against; ``behaviour_logp``: the (older) weights that sampled the tokens."""
    log_ratio = (old_logp - behaviour_logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return torch.exp(log_ratio).clamp(max=truncation)


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip_eps: float | None
) -> tuple[torch.Tensor, dict[str, float]]:
    """Value-head loss; all inputs [B, T] -> (scalar loss, stats).

    Unclipped: ``0.5 * masked_mean((V - R)**2)``. With ``clip_eps``: ``V_clip = V_old + clamp(V - V_old, -eps, eps)``
    and ``0.5 * masked_mean(max((V - R)**2, (V_clip - R)**2))``. Stat ``vf_clipfrac`` (python float) is the share
    of selected tokens where the clipped term is strictly larger, i.e. where clipping changes the loss.
    """
    losses = (values - returns) ** 2
    if clip_eps is None:
        return 0.5 * masked_mean(losses, mask), {"vf_clipfrac": 0.0}
    v_clip = old_values + (values - old_values).clamp(-clip_eps, clip_eps)
    clipped_losses = (v_clip - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(losses, clipped_losses), mask)
    with torch.no_grad():
        clipfrac = masked_mean((clipped_losses > losses).to(values.dtype), mask).item()
    return loss, {"vf_clipfrac": clipfrac}


def rollout_temperature(temperature: float, final: float | None, step: int, steps: int) -> float:
    """The rollout temperature of ``step`` (1-based) of ``steps``: ``temperature`` throughout, or
    with ``final`` a straight line from ``temperature`` at step 1 to ``final`` at the last step."""
    if final is None or steps <= 1:
        return temperature
    frac = min(max(step - 1, 0), steps - 1) / (steps - 1)
    return temperature + (final - temperature) * frac


@dataclass
class Experience:
    """A batch of rollouts for PPO.

    ``sequences`` [B, L] (long) holds prompt + response, ``attention_mask`` [B, L] marks real tokens. Every
    per-token field lives on the *shifted* positions [B, L-1]: entry ``t`` concerns the token ``sequences[:, t+1]``
    predicted from ``sequences[:, :t+1]`` (as returned by ``sequence_logprobs``). ``action_mask`` [B, L-1] is 1
    where that token is a generated response token; ``old_logprobs``, ``ref_logprobs``, ``values``, ``rewards``,
    ``advantages`` and ``returns`` are [B, L-1] and aligned with it. ``scores`` [B] are the sequence-level
    reward-model scores, and ``versions`` the policy weight version that generated each sample. With an
    asynchronous rollout, ``behaviour_logprobs`` [B, L-1] are the sampling weights' log-probs and ``is_weights``
    [B, L-1] the truncated importance weights the policy loss multiplies in (None otherwise).
    """

    sequences: torch.Tensor
    attention_mask: torch.Tensor
    action_mask: torch.Tensor
    old_logprobs: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None
    values: torch.Tensor | None = None
    rewards: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None
    scores: torch.Tensor | None = None
    versions: list[int] = field(default_factory=list)
    behaviour_logprobs: torch.Tensor | None = None  # async rollout: log-probs under the weights that sampled
    is_weights: torch.Tensor | None = None  # async rollout: truncated importance weights per token
    temperature: float | None = None  # the rollout temperature of the samples (None: the policy's configured one)

    def __len__(self) -> int:
        return self.sequences.shape[0]

    def _map(self, fn) -> Experience:
        changes = {
            f.name: fn(getattr(self, f.name))
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return dataclasses.replace(self, **changes)

    def to(self, device: torch.device | str) -> Experience:
        """A copy with every tensor on ``device``."""
        return self._map(lambda t: t.to(device))

    def select(self, index: torch.Tensor) -> Experience:
        """The samples at ``index`` (1-D long tensor), in that order."""
        picked = self._map(lambda t: t[index.to(t.device)])
        picked.versions = [self.versions[i] for i in index.tolist()] if self.versions else []
        return picked

    def nbytes(self) -> int:
        """The bytes its tensors hold (what sending it to a role costs, roughly)."""
        return sum(t.numel() * t.element_size() for t in vars(self).values() if isinstance(t, torch.Tensor))

    def trimmed(self) -> Experience:
        """The same samples without the padding columns no sample of theirs reaches: [B, L] fields cut to
        the longest sequence, [B, L-1] fields to one less. Exact for right-padded causal models (a
        position never sees a later one); a minibatch of short samples then costs what they need."""
        width = int(self.attention_mask.sum(1).max()) if len(self) else 0
        full = self.sequences.shape[1]
        if width >= full:
            return self
        return self._map(lambda t: t[:, :width] if t.dim() == 2 and t.shape[1] == full else
                         t[:, : width - 1] if t.dim() == 2 and t.shape[1] == full - 1 else t)  # fmt: skip

    def minibatches(self, size: int, generator: torch.Generator | None = None) -> Iterator[Experience]:
        """Shuffle along the batch dim with ``generator`` and yield consecutive chunks of ``size`` samples
        (the last may be smaller), each ``trimmed`` of its padding; every sample appears exactly once."""
        if size <= 0:
            raise ValueError(f"minibatch size must be positive, got {size}")
        order = torch.randperm(len(self), generator=generator)
        for start in range(0, len(self), size):
            yield self.select(order[start : start + size]).trimmed()
