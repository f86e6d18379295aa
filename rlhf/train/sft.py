"""Supervised fine-tuning core: tokenisation with completion-only labels, batching, the loss.

Pure torch; the Ray Train launcher in actors/ calls these per worker, and tests call them
in-process. The optimiser, schedule and training step are ``rlhf.models.optim``'s.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from rlhf.chat import render_completion, render_prompt

IGNORE = -100


@dataclass(frozen=True)
class Example:
    """Token ids of prompt + completion (+ EOS); loss is taken from ``prompt_len`` on."""

    ids: list[int]
    prompt_len: int


def tokenize_pairs(tokenizer, rows: Sequence[dict], max_len: int) -> list[Example]:
    """Prompt and completion tokenised separately (as generation sees them), EOS appended; the prompt
    in the tokenizer's chat template when it has one (``rlhf.chat.render_prompt``).

    Rows longer than ``max_len`` keep the end of the prompt and as much completion as fits.
    """
    prompts = tokenizer([render_prompt(r["prompt"], tokenizer) for r in rows], add_special_tokens=False)["input_ids"]
    completions = [render_completion(r["completion"], tokenizer) for r in rows]
    completions = tokenizer(completions, add_special_tokens=False)["input_ids"]
    out = []
    for p, c in zip(prompts, completions, strict=True):
        c = c + [tokenizer.eos_token_id]
        if len(p) + len(c) > max_len:
            keep_p = max(1, min(len(p), max_len // 2))
            p = p[-keep_p:]
            c = c[: max_len - len(p)]
        out.append(Example(p + c, len(p)))
    return out


def collate(batch: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``/``attention_mask`` [B, T] and ``labels`` with prompt and pad = -100."""
    width = max(len(e.ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    for i, e in enumerate(batch):
        n = len(e.ids)
        ids[i, :n] = torch.tensor(e.ids)
        mask[i, :n] = 1
        labels[i, e.prompt_len : n] = ids[i, e.prompt_len : n]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def batches(
    examples: Sequence[Example], batch_size: int, seed: int, rank: int = 0, world: int = 1
) -> Iterator[list[Example]]:
    """Endless batches; each epoch reshuffled with ``seed + epoch`` and split by rank."""
    if len(examples) < world:
        raise ValueError(f"{len(examples)} training examples cannot feed {world} workers")
    epoch = 0
    while True:
        order = list(range(len(examples)))
        random.Random(seed + epoch).shuffle(order)
        shard = order[rank::world]
        for start in range(0, len(shard) - batch_size + 1, batch_size):
            yield [examples[i] for i in shard[start : start + batch_size]]
        if len(shard) < batch_size:
            yield [examples[i] for i in shard]
        epoch += 1


def completion_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over completion tokens only (the batch follows the model's device)."""
    return _forward(model, batch).loss


def _forward(model, batch: dict[str, torch.Tensor], labels: bool = True):
    device = next(model.parameters()).device
    return model(**{k: v.to(device) for k, v in batch.items() if labels or k != "labels"})


def completion_tokens(batch: dict[str, torch.Tensor]) -> int:
    """The tokens ``completion_loss`` averages over: labels other than -100 after the one-token shift."""
    return int((batch["labels"][:, 1:] != IGNORE).sum())


def batch_rows(batch: dict[str, torch.Tensor], rows: slice) -> dict[str, torch.Tensor]:
    """Rows ``rows`` of a collated batch, cut to their longest sequence (right padding)."""
    part = {k: v[rows] for k, v in batch.items()}
    width = int(part["attention_mask"].sum(dim=1).max())
    return {k: v[:, :width] for k, v in part.items()}


def sft_step(
    model,
    batch: dict[str, torch.Tensor],
    optimizer,
    scheduler=None,
    grad_clip: float | None = None,
    micro_batch_size: int | None = None,
    rows: int | None = None,
    autocast: Callable = nullcontext,
) -> tuple[float, float | None]:
    """One optimiser step of ``completion_loss`` on a collated batch: ``(loss, grad norm before clipping)``.

    ``micro_batch_size`` (``sft.micro_batch_size``): forward and backward ``rlhf.models.optim.micro_slices`` of
    the rows one at a time, each loss weighted by its share of the batch's completion tokens, so the
    accumulated gradient is the whole batch's token mean (None: the batch at once, as before). ``rows``: the
    per-worker batch size (equal micro-batch counts on every rank). Forwards run under ``autocast()``."""
    from rlhf.models.optim import accumulated_step, micro_slices, padded_rows, train_step

    slices = micro_slices(len(batch["input_ids"]), micro_batch_size, rows)
    if len(slices) == 1:
        with autocast():
            loss = completion_loss(model, batch)
        grad_norm = train_step(model, loss, optimizer, scheduler, grad_clip)
        return float(loss.detach()), grad_norm
    total = completion_tokens(batch)

    def part(rows_: slice):
        rows_, stand_in = padded_rows(rows_)
        sub = batch_rows(batch, rows_)
        n = 0 if stand_in else completion_tokens(sub)

        def loss_fn() -> torch.Tensor:
            with autocast():
                if n == 0:  # no completion token (HF's mean would be 0/0): a zero loss, same collectives
                    return _forward(model, sub, labels=False).logits.float().sum() * 0.0
                return completion_loss(model, sub)

        return loss_fn, n / total if total else 0.0

    parts = [part(rows_) for rows_ in slices]
    return accumulated_step(model, parts, optimizer, scheduler, grad_clip)
