"""The one optimiser and training-step helper of SFT, safety SFT, reward-model training (and PPO).

``OptimConfig`` holds the optimiser settings; the ``sft``, ``safety_sft`` and ``rm`` config
sections are ``OptimConfig`` subclasses, so their keys (``sft.lr``, ``rm.grad_clip``...) stay
where they were and a section can be passed wherever an ``OptimConfig`` is expected.

    opt = make_optimizer(model, cfg.sft)                       # AdamW, no decay on biases/norms
    sched = make_scheduler(opt, cfg.sft, total_steps)          # linear warm-up, cosine to 10 %
    grad_norm = train_step(model, loss, opt, sched, cfg.sft.grad_clip)

Pure torch + pydantic, no Ray (torch is imported on first use, so ``rlhf.config.core`` stays light):
the Ray Train workers in actors/ and the in-process loops call it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Annotated

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:  # torch loads on first use: rlhf.config.core builds on OptimConfig and stays light
    import torch

Beta = Annotated[float, Field(ge=0.0, lt=1.0)]


class OptimConfig(BaseModel):
    """AdamW with a warm-up + cosine schedule and gradient-norm clipping."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    lr: float = Field(1e-3, gt=0)
    betas: tuple[Beta, Beta] = Field((0.9, 0.95), description="AdamW (beta1, beta2)")
    weight_decay: float = Field(0.01, ge=0)
    warmup_steps: int = Field(20, ge=0)
    grad_clip: float = Field(1.0, gt=0, description="clip the global gradient norm to this")


def make_optimizer(
    model: torch.nn.Module | Iterable[torch.nn.Parameter],
    cfg: OptimConfig,
    split_decay: bool = True,
    fused: bool = False,
) -> torch.optim.AdamW:
    """AdamW over the trainable parameters of ``model``.

    ``split_decay``: two parameter groups, weight decay on matrices only (biases, norm gains and
    other vectors get none); otherwise one group of every parameter, all decayed (also what an
    iterable of parameters gets). ``fused``: torch's one-kernel AdamW (CPU and CUDA): the same update
    up to rounding, a quarter of the step time of the per-parameter loop on a 1M-parameter model."""
    import torch

    kwargs = {"lr": cfg.lr, "betas": tuple(cfg.betas)} | ({"fused": True} if fused else {})
    if split_decay and isinstance(model, torch.nn.Module):
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        decay = [p for _, p in named if p.ndim >= 2]
        no_decay = [p for _, p in named if p.ndim < 2]
        groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, **kwargs)
    params = model.parameters() if isinstance(model, torch.nn.Module) else model
    return torch.optim.AdamW(params, weight_decay=cfg.weight_decay, **kwargs)


def warmup_cosine(step: int, warmup: int, total: int, floor: float = 0.1) -> float:
    """Learning-rate multiplier: linear warm-up, then cosine decay to ``floor``."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def make_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int, floor: float = 0.1
) -> torch.optim.lr_scheduler.LambdaLR:
    """``cfg.warmup_steps`` of linear warm-up, then cosine decay to ``floor`` x lr at ``total_steps``;
    one ``step()`` per optimiser step."""
    import torch

    warmup = cfg.warmup_steps
    # a plain lambda, so the scheduler's state_dict holds no schedule (checkpoints stay as they were)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, warmup, total_steps, floor))


def train_step(
    model: torch.nn.Module | Iterable[torch.nn.Parameter],
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    grad_clip: float | None = None,
) -> float | None:
    """One optimiser step on ``loss``: zero the gradients, backward, clip the global gradient norm
    to ``grad_clip`` (None or <= 0: no clipping), step the optimiser, then the scheduler.

    Returns the gradient norm before clipping (None when not clipping)."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    return optimizer_step(model, optimizer, scheduler, grad_clip)


def optimizer_step(
    model: torch.nn.Module | Iterable[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    grad_clip: float | None = None,
) -> float | None:
    """After the (accumulated) backward passes: clip the global gradient norm to ``grad_clip`` (None or
    <= 0: no clipping), step the optimiser, then the scheduler; the norm before clipping (None: not clipped)."""
    import torch

    grad_norm = None
    if grad_clip is not None and grad_clip > 0:
        params = model.parameters() if isinstance(model, torch.nn.Module) else model
        norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
        grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # FSDP2: a DTensor
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    return grad_norm


# ---- micro-batches (sft/safety_sft/rm.micro_batch_size) ----------------------------------------


def micro_slices(n: int, size: int | None, rows: int | None = None) -> list[slice]:
    """The row slices of a batch of ``n`` rows run one forward/backward at a time: ``ceil(max(n, rows) / size)``
    consecutive slices of at most ``size`` rows, as even as possible (None or ``size >= n``: one slice of all).

    ``rows`` is the per-worker batch size every rank was asked for: with it a rank holding a short batch (data
    smaller than batch size x workers) still runs as many micro-batches as the others, which FSDP's collectives
    in every forward and backward need; a rank with fewer rows than that count gets empty slices at the end
    (``slice(n, n)``), which the step runs as row 0 with weight 0 (``padded_rows``)."""
    if not size or size >= max(n, rows or 0):
        return [slice(0, n)]
    count = -(-max(n, rows or 0) // size)
    if n < count:
        return [slice(i, i + 1) for i in range(n)] + [slice(n, n)] * (count - n)
    base, extra = divmod(n, count)
    out, start = [], 0
    for i in range(count):
        stop = start + base + (1 if i < extra else 0)
        out.append(slice(start, stop))
        start = stop
    return out


def padded_rows(rows: slice) -> tuple[slice, bool]:
    """An empty micro-batch slice runs row 0 with weight 0 (the collectives of every rank must match):
    ``(the slice to run, whether it is such a stand-in)``."""
    return (slice(0, 1), True) if rows.stop <= rows.start else (rows, False)


def accumulated_step(
    model,
    parts: Sequence[tuple[Callable[[], torch.Tensor], float]],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    grad_clip: float | None = None,
) -> tuple[float, float | None]:
    """One optimiser step over micro-batches: for each ``(loss_fn, share)`` the forward ``loss_fn()`` and the
    backward of ``share * loss``, the gradients accumulating (one micro-batch's activations exist at a time),
    then ``optimizer_step``. With shares that are each part's part of the batch's loss denominator, the
    gradient is the whole batch's. A DDP model all-reduces on the last part only (``no_sync`` before), so
    ranks with different counts of parts still meet exactly once.

    Returns ``(sum of share * loss, gradient norm before clipping or None)``."""
    from contextlib import nullcontext

    optimizer.zero_grad(set_to_none=True)
    no_sync = getattr(model, "no_sync", None)
    total = 0.0
    for i, (loss_fn, share) in enumerate(parts):
        with no_sync() if no_sync is not None and i < len(parts) - 1 else nullcontext():
            loss = loss_fn()
            (loss * share).backward()
        total += share * float(loss.detach())
    return total, optimizer_step(model, optimizer, scheduler, grad_clip)
