"""The pure objects behind the PPO actors: policy and critic trainers, the frozen reference,
batch assembly from rollouts and advantages (the RL prompt pool: ``rlhf.ppo.prompts``). Pure torch + transformers;
``actors/ppo_actors.py`` wraps each in a Ray actor.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlhf.config.core import PPOConfig
from rlhf.errors import CheckpointError
from rlhf.models.device import Placement, to_host
from rlhf.models.modeling import load_model_dir
from rlhf.models.optim import OptimConfig, make_optimizer
from rlhf.ppo.advantages import estimator
from rlhf.ppo.logprobs import first_action, sequence_logprobs
from rlhf.ppo.losses import (
    Experience,
    kl_estimate,
    masked_mean,
    masked_whiten,
    policy_loss,
    value_loss,
)
from rlhf.rollout.weight_sync import BUCKET_BYTES, bucketed


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---- micro-batches (ppo.micro_batch_size) ----------------------------------------------------


def by_rows(fn, size: int | None, *tensors: torch.Tensor) -> torch.Tensor:
    """``fn(*tensors)`` computed ``size`` rows at a time and concatenated (None: all rows at once)."""
    n = tensors[0].shape[0]
    if not size or size >= n:
        return fn(*tensors)
    return torch.cat([fn(*(t[i : i + size] for t in tensors)) for i in range(0, n, size)])


def micro_batches(batch: Experience, size: int | None) -> list[tuple[Experience, float]]:
    """``batch`` cut into consecutive slices of ``size`` samples (None: itself), each trimmed, with its share of
    the batch's action tokens: the shares times the slices' masked means sum to the batch's masked mean, so
    accumulating ``share * loss`` gradients over the slices gives the batch's gradient."""
    if not size or size >= len(batch):
        return [(batch, 1.0)]
    total = float(batch.action_mask.sum())
    out = []
    for start in range(0, len(batch), size):
        part = batch.select(torch.arange(start, min(start + size, len(batch)))).trimmed()
        out.append((part, float(part.action_mask.sum()) / total if total > 0 else 0.0))
    return out


def clip_and_step(model: nn.Module, optimizer: torch.optim.Optimizer, grad_clip: float | None) -> float | None:
    """After the (accumulated) backward passes: clip the global gradient norm, step; the norm before clipping."""
    norm = None
    if grad_clip is not None and grad_clip > 0:
        norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip))
    optimizer.step()
    return norm


def _sum_stats(parts: list[dict[str, float]]) -> dict[str, float]:
    return {k: sum(p[k] for p in parts) for k in parts[0]}


# ---- batch assembly ------------------------------------------------------------------------


def assemble(
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
    eos_id: int,
    pad_id: int,
    max_new_tokens: int,
    stops: Sequence[int | None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(sequences [B, L], attention_mask [B, L], action_mask [B, L-1])``, right-padded.

    A sequence is prompt + completion, plus the EOS the engine sampled and stopped at, which the
    rollout drops: ``stops[i]`` (``Rollout.stop_ids``; None: it stopped at ``max_new_tokens`` and
    nothing is appended). Without ``stops`` (a batch built by hand, a backend that records none) a
    completion shorter than ``max_new_tokens`` is taken to have ended at ``eos_id``.
    ``action_mask[t]`` marks the positions whose *next* token is generated (the shifted convention of
    ``rlhf.ppo.losses``).
    """
    if stops is None:
        stops = [eos_id if len(c) < max_new_tokens else None for c in completion_ids]
    rows, spans = [], []
    for p, c, stop in zip(prompt_ids, completion_ids, stops, strict=True):
        if not p:
            raise ValueError("every prompt needs at least one token")
        tail = list(c) + ([stop] if stop is not None else [])
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


@torch.no_grad()
def completion_logprobs(
    model,
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
    ids: dict[str, int],
    max_new_tokens: int,
    temperature: float,
    stops: Sequence[int | None] | None = None,
) -> list[list[float]]:
    """Per sample, the log-probs (at ``temperature``) that ``model`` gives its generated tokens, in order,
    on the positions ``assemble``'s action mask marks (the EOS it stopped at, ``stops``, included): the
    behaviour log-probs of an asynchronous rollout, computed by the weights that sampled."""
    seqs, attn, act = assemble(prompt_ids, completion_ids, ids["eos"], ids["pad"], max_new_tokens, stops)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    logp = (
        sequence_logprobs(model, seqs.to(device), attn.to(device), temperature=temperature, first=first_action(act))
        .float()
        .cpu()
    )
    return action_rows(logp, act)


def action_rows(values: torch.Tensor, action_mask: torch.Tensor) -> list[list[float]]:
    """Per sample, the entries of ``values`` [B, L-1] on its action positions, in order (the inverse of
    ``place_on_actions``)."""
    return [row[m.bool()].tolist() for row, m in zip(values, action_mask, strict=True)]


def place_on_actions(rows: Sequence[Sequence[float]], action_mask: torch.Tensor) -> torch.Tensor:
    """Per-sample values of the generated tokens (``action_logprobs``' rows, in batch order) as a
    [B, L-1] tensor on ``action_mask``'s positions, zeros elsewhere (every use of it is masked)."""
    out = torch.zeros_like(action_mask)
    out[action_mask.bool()] = torch.tensor([x for row in rows for x in row], dtype=out.dtype)
    return out


def compute_advantages(exp: Experience, cfg: PPOConfig, kl_coef: float) -> dict[str, float]:
    """Fill ``exp.rewards``, ``advantages``, ``returns`` (needs old/ref logprobs, values, scores).

    KL in the reward (default): per-token ``-kl_coef * KL`` plus the score at the last token.
    KL in the loss: the reward is the score alone and the policy loss adds the KL term.
    Returns ``kl/mean`` (per sequence, summed over tokens) and ``reward/...`` figures.
    """
    mask = exp.action_mask
    kl = kl_estimate(exp.old_logprobs, exp.ref_logprobs, cfg.kl_estimator) * mask
    coef = kl_coef if cfg.kl_in == "reward" else 0.0
    est = estimator(cfg.advantage_estimator)
    exp.rewards, adv, exp.returns = est.fn(exp.scores, coef * kl, exp.values, mask, cfg)
    # whitened in GAE mode only: a group baseline is already centred per prompt, and whitening it per token
    # again would give an all-equal group a nonzero, length-dependent advantage (OpenRLHF does the same)
    exp.advantages = masked_whiten(adv, mask) if cfg.whiten_advantages and est.whiten else adv
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
    """PPO's optimiser: AdamW, betas (0.9, 0.95), no weight decay, one parameter group; the fused
    kernel where torch has one (CPU, CUDA)."""
    params = list(model.parameters() if isinstance(model, nn.Module) else model)
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return make_optimizer(params, OptimConfig(lr=lr, weight_decay=0.0), split_decay=False, fused=fused)


def _mean_stats(stats: list[dict[str, float]]) -> dict[str, float]:
    return {k: sum(s[k] for s in stats) / len(stats) for k in stats[0]} if stats else {}


def disable_dropout(model: nn.Module) -> nn.Module:
    """Dropout off for good: PPO's ratio compares the training forward with the rollout's (no dropout), so a
    checkpoint's dropout would make the ratio noise. Zeroes every ``nn.Dropout`` and the float dropout
    settings of the HF config and of modules that read them at call time (e.g. ``attention_dropout``)."""
    configs = {id(c): c for m in model.modules() if (c := getattr(m, "config", None)) is not None}
    for config in configs.values():  # every HF config inside (a critic's sits on its backbone, not on the wrapper)
        for name in list(vars(config)):
            if ("dropout" in name or "pdrop" in name) and isinstance(getattr(config, name), float):
                setattr(config, name, 0.0)
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        for name in ("attention_dropout", "dropout", "attn_dropout", "resid_dropout"):
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, 0.0)
    return model


class ReferenceModel:
    """The frozen policy copy the KL is measured against. ``temperature``: the rollout's, so log-probs are
    those of the distribution the samples were drawn from."""

    trainable = False

    def __init__(
        self,
        policy_dir: str | Path,
        temperature: float = 1.0,
        placement: Placement | None = None,
        micro_batch_size: int | None = None,
    ):
        self.place = placement or Placement()
        self.micro_batch_size = micro_batch_size  # rows per forward pass (ppo.micro_batch_size)
        model, self.tokenizer = load_model_dir(policy_dir, device=self.place.device)  # fp32, straight to the device
        disable_dropout(model).eval().requires_grad_(False)
        # frozen: laid out to compute what the policy computes from the same weights (the precision policy)
        self.model = self.place.place(model, trainable=True) if self.trainable else self.place.place_mirror(model)
        self.temperature = temperature

    @torch.no_grad()
    def logprobs(
        self, sequences: torch.Tensor, attention_mask: torch.Tensor, temperature: float | None = None, first: int = 0
    ) -> torch.Tensor:
        """Per-token log-probs [B, L-1] at the rollout temperature (``temperature``: this batch's, when
        the rollout temperature is annealed), fp32 on the CPU; entries before ``first`` (``first_action``
        of the batch) are not computed and hold 0."""
        t = self.temperature if temperature is None else temperature
        def forward(seqs: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
            with self.place.autocast():
                out = sequence_logprobs(self.model, self.place.to(seqs), self.place.to(attn), temperature=t, first=first)
            return to_host(out)

        return by_rows(forward, self.micro_batch_size, sequences, attention_mask)

    def action_logprobs(
        self, prompt_ids: Sequence[Sequence[int]], completion_ids: Sequence[Sequence[int]], ids: dict[str, int],
        max_new_tokens: int, temperature: float, stops: Sequence[int | None] | None = None,
    ) -> list[list[float]]:  # fmt: skip
        """Per sample, ``logprobs`` on the positions ``assemble``'s action mask marks (``stops``: the EOS
        each stopped at), in order: what the trainer places on a whole batch's action positions
        (``place_on_actions``)."""
        seqs, attn, act = assemble(prompt_ids, completion_ids, ids["eos"], ids["pad"], max_new_tokens, stops)
        return action_rows(self.logprobs(seqs, attn, temperature, first_action(act)), act)


class PolicyTrainer(ReferenceModel):
    """The trainable policy: logprobs, one PPO update per experience batch, weights by version.

    ``lora`` (``rlhf.models.lora.lora_settings``): only LoRA adapters train; the weights it publishes and
    saves are merged (a plain model), and its state carries the adapters for an exact resume."""

    trainable = True

    def __init__(
        self,
        policy_dir: str | Path,
        cfg: PPOConfig,
        seed: int,
        placement: Placement | None = None,
        lora: dict | None = None,
    ):
        super().__init__(policy_dir, cfg.temperature, placement, cfg.micro_batch_size)
        self.cfg = cfg
        self.seed = seed
        self.kl_coef = cfg.kl_coef  # the driver updates it each step when the KL is a loss term
        self.lora = lora
        if lora:
            from rlhf.models.lora import apply_lora, trainable_parameters

            self.model = disable_dropout(apply_lora(self.model, lora))
            self.optimizer = _adamw(trainable_parameters(self.model), cfg.policy_lr)
            return
        self.model.requires_grad_(True)
        self.optimizer = _adamw(self.model, cfg.policy_lr)

    def train(self, exp: Experience, step: int) -> dict[str, float]:
        """``cfg.epochs`` passes of clipped-surrogate minibatch updates (each accumulated over its micro-batches,
        ``cfg.micro_batch_size``); mean statistics."""
        cfg, stats = self.cfg, []
        temperature = self.temperature if exp.temperature is None else exp.temperature
        self.model.train()
        gen = seeded(self.seed * 1_000_003 + step)
        for _ in range(cfg.epochs):
            for mb in exp.minibatches(cfg.minibatch_size, gen):
                self.optimizer.zero_grad(set_to_none=True)
                parts = [self._backward(m, share, temperature) for m, share in micro_batches(mb, cfg.micro_batch_size)]
                grad_norm = clip_and_step(self.model, self.optimizer, cfg.grad_clip)
                stats.append(_sum_stats(parts) | {"policy/grad_norm": float(grad_norm)})
        self.model.eval()
        return _mean_stats(stats)

    def _backward(self, mb: Experience, share: float, temperature: float) -> dict[str, float]:
        """Forward and backward of one micro-batch, its loss weighted by ``share`` (its part of the minibatch's
        action tokens); its statistics weighted alike."""
        cfg = self.cfg
        mb = mb.to(self.place.device)
        with self.place.autocast():
            logp, entropy = sequence_logprobs(
                self.model,
                mb.sequences,
                mb.attention_mask,
                with_entropy=True,
                temperature=temperature,
                first=first_action(mb.action_mask),
                entropy_grad=cfg.entropy_coef > 0,
            )
        logp, entropy = logp.float(), entropy.float()
        loss, info = policy_loss(logp, mb.old_logprobs, mb.advantages, mb.action_mask, cfg.clip_eps, mb.is_weights)
        ent = masked_mean(entropy, mb.action_mask)
        total = loss - cfg.entropy_coef * ent
        if cfg.kl_in == "loss":
            kl = masked_mean(kl_estimate(logp, mb.ref_logprobs, cfg.kl_estimator), mb.action_mask)
            total = total + self.kl_coef * kl
        (total * share).backward()
        return {
            "losses/policy": share * float(loss.detach()),
            "policy/entropy": share * float(ent.detach()),
            "policy/clipfrac": share * info["clipfrac"],
            "policy/approx_kl": share * info["approx_kl"],
        }

    def weights(self) -> dict[str, torch.Tensor]:
        """A CPU copy of the weights (what a weight-sync transport publishes); LoRA adapters merged."""
        if self.lora:
            from rlhf.models.lora import merged_state_dict

            return merged_state_dict(self.model)
        return {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}

    def weight_buckets(self, bucket_bytes: int = BUCKET_BYTES) -> Iterator[dict[str, torch.Tensor]]:
        """``weights()`` in buckets of about ``bucket_bytes``, each made (CPU copies, LoRA adapters merged
        layer by layer) only when the previous one was taken: what ``publish_buckets`` streams."""
        from rlhf.models.lora import iter_merged_state

        return bucketed(iter_merged_state(self.model), bucket_bytes)

    def state(self) -> dict[str, Any]:
        if self.lora:
            from rlhf.models.lora import adapter_state

            return {"optimizer": self.optimizer.state_dict(), "adapter": adapter_state(self.model)}
        return {"optimizer": self.optimizer.state_dict()}

    def load_state(self, weights: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        """Resume: the saved (merged) weights, or with LoRA the saved adapters over the initial base."""
        if self.lora:
            from rlhf.models.lora import load_adapter_state

            load_adapter_state(self.model, state["adapter"])
        else:
            self.model.load_state_dict(weights)
        self.optimizer.load_state_dict(state["optimizer"])


class CriticTrainer:
    def __init__(self, init_dir: str | Path, cfg: PPOConfig, seed: int, placement: Placement | None = None):
        self.cfg = cfg
        self.seed = seed
        self.place = placement or Placement()
        self.model = self.place.place(disable_dropout(ValueModel.from_dir(init_dir, seed)), trainable=True)
        self.optimizer = _adamw(self.model, cfg.critic_lr)

    @torch.no_grad()
    def values(self, sequences: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Values [B, L-1], fp32 on the CPU."""
        self.model.eval()

        def forward(seqs: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
            with self.place.autocast():
                return to_host(self.model(self.place.to(seqs), self.place.to(attn)))

        return by_rows(forward, self.cfg.micro_batch_size, sequences, attention_mask)

    def train(self, exp: Experience, step: int) -> dict[str, float]:
        cfg, stats = self.cfg, []
        self.model.train()
        gen = seeded(self.seed * 1_000_033 + step)
        for _ in range(cfg.epochs):
            for mb in exp.minibatches(cfg.minibatch_size, gen):
                self.optimizer.zero_grad(set_to_none=True)
                parts = [self._backward(m, share) for m, share in micro_batches(mb, cfg.micro_batch_size)]
                clip_and_step(self.model, self.optimizer, cfg.grad_clip)
                stats.append(_sum_stats(parts))
        self.model.eval()
        return _mean_stats(stats)

    def _backward(self, mb: Experience, share: float) -> dict[str, float]:
        mb = mb.to(self.place.device)
        with self.place.autocast():
            values = self.model(mb.sequences, mb.attention_mask).float()
        loss, info = value_loss(values, mb.values, mb.returns, mb.action_mask, self.cfg.value_clip_eps)
        (loss * share).backward()
        return {"losses/value": share * float(loss.detach()), "critic/clipfrac": share * info["vf_clipfrac"]}

    def state(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
