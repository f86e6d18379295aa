"""The PPO policy and critic as FSDP2 groups of N ranks (``rlhf.models.fsdp``), one process per rank.

Every rank holds 1/N of the weights, gradients and AdamW state and sees the same full batch; each
takes its own contiguous rows (``rank_rows``):

- ``logprobs`` / ``values``: each rank computes its rows; the group concatenates them in rank
  order, so the caller gets the batch's tensor as from one actor;
- ``train``: the same minibatch order on every rank (the same seeded generator); each rank runs
  forward and backward on its rows of each minibatch, its loss weighted by its share of the
  minibatch's action tokens times N, so FSDP2's gradient reduce-scatter (a mean over ranks) leaves
  the minibatch's gradient; the clip norm is global; statistics are all-reduced.

A rank left without rows (a minibatch smaller than N) runs one row with weight 0, so the
collectives of every rank match. ``rlhf.ppo`` does not learn about ranks: these subclasses
override only the training loop's data split.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from rlhf.models import fsdp
from rlhf.ppo.losses import Experience
from rlhf.ppo.models import CriticTrainer, PolicyTrainer, _adamw, _mean_stats, _sum_stats, micro_batches, seeded


def rank_rows(n: int, rank: int, world: int) -> torch.Tensor:
    """This rank's contiguous rows of an ``n``-row batch (possibly none)."""
    return torch.arange(n).tensor_split(world)[rank]


def rank_forward(fn, rank: int, world: int, *tensors: torch.Tensor) -> torch.Tensor:
    """``fn`` on this rank's rows; a rank without rows runs row 0 (the collectives must match) and
    returns an empty result."""
    idx = rank_rows(tensors[0].shape[0], rank, world)
    if len(idx) == 0:
        return fn(*(t[:1] for t in tensors))[:0]
    return fn(*(t[idx] for t in tensors))


def rank_micro_batches(mb: Experience, size: int | None, rank: int, world: int) -> list[tuple[Experience, float]]:
    """This rank's micro-batches of minibatch ``mb``, each with its share of the WHOLE minibatch's
    action tokens (the shares of all ranks sum to 1)."""
    idx = rank_rows(len(mb), rank, world)
    if len(idx) == 0:
        return [(mb.select(torch.tensor([0])).trimmed(), 0.0)]
    total = float(mb.action_mask.sum())
    part = mb.select(idx).trimmed()
    scale = float(part.action_mask.sum()) / total if total > 0 else 0.0
    return [(m, share * scale) for m, share in micro_batches(part, size)]


def reduce_stats(stats: dict[str, float], world: int) -> dict[str, float]:
    """Sum each statistic over the ranks."""
    if world == 1 or not stats:
        return stats
    keys = sorted(stats)
    t = torch.tensor([stats[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist(), strict=True))


class _Sharded:
    """Shard ``self.model`` over the default process group and rebuild the optimiser over the shards."""

    def _shard(self, lr: float, offload: bool = False) -> None:
        """``offload``: FSDP2's ``CPUOffloadPolicy`` (``resources.<role>.offload``): the shards, their
        gradients and the AdamW state live in host memory and the optimiser steps there; on a CPU
        placement they are there already (the step runs the same)."""
        self.rank, self.world = fsdp.world()
        self.model = fsdp.shard_model(self.model, self.place.precision, offload=offload, device=self.place.device)
        self.optimizer = _adamw(self.model, lr)

    def _minibatch(self, mb: Experience, backward) -> tuple[dict[str, float], float | None]:
        """Forward and backward of this rank's rows of ``mb`` (``backward(micro, share)``), then the
        clipped optimiser step; the minibatch's statistics summed over ranks, and the norm."""
        self.optimizer.zero_grad(set_to_none=True)
        parts = [
            backward(m, share * self.world)
            for m, share in rank_micro_batches(mb, self.cfg.micro_batch_size, self.rank, self.world)
        ]
        norm = fsdp.clip_grad_norm(self.model, self.cfg.grad_clip)
        self.optimizer.step()
        return reduce_stats({k: v / self.world for k, v in _sum_stats(parts).items()}, self.world), norm


class ShardedPolicyTrainer(_Sharded, PolicyTrainer):
    """``PolicyTrainer`` on one rank of a group (not with LoRA)."""

    def __init__(self, *args, offload: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        if self.lora:
            raise ValueError("a sharded policy does not train LoRA adapters")
        self._shard(self.cfg.policy_lr, offload)

    @torch.no_grad()
    def logprobs(self, sequences, attention_mask, temperature=None, first: int = 0) -> torch.Tensor:
        """This rank's rows of the batch's log-probs."""
        fn = super().logprobs
        return rank_forward(lambda s, a: fn(s, a, temperature, first), self.rank, self.world, sequences, attention_mask)

    def train(self, exp: Experience, step: int) -> dict[str, float]:
        cfg, stats = self.cfg, []
        temperature = self.temperature if exp.temperature is None else exp.temperature
        self.model.train()
        gen = seeded(self.seed * 1_000_003 + step)  # PolicyTrainer.train's minibatch order
        for _ in range(cfg.epochs):
            for mb in exp.minibatches(cfg.minibatch_size, gen):
                summed, norm = self._minibatch(mb, lambda m, share: self._backward(m, share, temperature))
                stats.append(summed | {"policy/grad_norm": float(norm)})
        self.model.eval()
        return _mean_stats(stats)

    def weights(self) -> dict[str, torch.Tensor]:
        """The full weights on rank 0 (None elsewhere), gathered bucket by bucket; every rank calls it."""
        return fsdp.gathered_state(self.model)

    def weight_buckets(self, bucket_bytes: int = fsdp.BUCKET_BYTES):
        """The full weights gathered bucket by bucket (every rank iterates to the end: each gather is
        a collective); one gathered bucket exists at a time."""
        return fsdp.iter_full_state(self.model, bucket_bytes)


class ShardedCriticTrainer(_Sharded, CriticTrainer):
    """``CriticTrainer`` on one rank of a group."""

    def __init__(self, *args, offload: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self._shard(self.cfg.critic_lr, offload)

    @torch.no_grad()
    def values(self, sequences, attention_mask) -> torch.Tensor:
        fn = super().values
        return rank_forward(fn, self.rank, self.world, sequences, attention_mask)

    def train(self, exp: Experience, step: int) -> dict[str, float]:
        cfg, stats = self.cfg, []
        self.model.train()
        gen = seeded(self.seed * 1_000_033 + step)  # CriticTrainer.train's minibatch order
        for _ in range(cfg.epochs):
            for mb in exp.minibatches(cfg.minibatch_size, gen):
                stats.append(self._minibatch(mb, self._backward)[0])
        self.model.eval()
        return _mean_stats(stats)
