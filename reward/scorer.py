"""``RewardScorer``: a loaded reward model that turns full prompt+answer texts into rewards.

One object behind every way of asking for a reward: the Serve deployment, the in-process reward
actor of PPO, and benchmarks. Pure torch + transformers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from reward.model import (
    NORM_FILE,
    RewardNormalizer,
    load_reward_dir,
    resolve_reward_dir,
    score_texts,
    split_text,
    tokenize_prompt_answers,
)
from rlhf.models.device import Placement

# Texts per forward pass when the caller does not choose (``forward_batch_size`` None or 0). On CPU
# small batches are faster per text: at 32-64 texts the activation buffers pass glibc's mmap
# threshold and every forward pays hundreds of page faults per text (docs/results.md, "Reward
# service throughput"); a GPU wants large batches.
AUTO_FORWARD_BATCH = {"cpu": 8, "cuda": 64}


class RewardScorer:
    """``scores`` are raw model outputs; ``rewards`` are normalised by ``reward_norm.json`` when it
    exists beside the model and ``normalize`` is on (otherwise equal to ``scores``).
    ``forward_batch_size`` None or 0: ``AUTO_FORWARD_BATCH`` for the placement's device."""

    def __init__(
        self,
        model_dir: str | Path,
        forward_batch_size: int | None = None,
        strip_scratchpad: bool = True,
        normalize: bool = True,
        max_len: int | None = None,
        placement: Placement | None = None,
    ):
        self.model_dir = resolve_reward_dir(model_dir)
        model, self.tokenizer = load_reward_dir(self.model_dir)
        placement = placement or Placement()
        self.model = placement.place(model, trainable=False)
        self.forward_batch_size = forward_batch_size or AUTO_FORWARD_BATCH[placement.device]
        self.strip_scratchpad = strip_scratchpad
        context = int(getattr(self.model.config, "max_position_embeddings", 512))
        self.max_len = min(max_len or context, context)
        has_norm = (self.model_dir / NORM_FILE).exists()
        self.normalizer = RewardNormalizer.load(self.model_dir) if normalize and has_norm else None

    def lengths(self, texts: Sequence[str]) -> list[int]:
        """Token count of each text as scored (prompt + answer + EOS), before any truncation."""
        parts = [split_text(t, self.strip_scratchpad) for t in texts]
        prompts, answers = tokenize_prompt_answers(self.tokenizer, [p for p, _ in parts], [a for _, a in parts])
        return [len(p) + len(a) + 1 for p, a in zip(prompts, answers, strict=True)]

    def overlong(self, texts: Sequence[str]) -> list[int]:
        """Indices of texts longer than the model's context (they would be truncated)."""
        return [i for i, n in enumerate(self.lengths(texts)) if n > self.max_len]

    def score(self, texts: Sequence[str]) -> tuple[list[float], list[float]]:
        """``(rewards, scores)`` for ``texts``, in order."""
        raw = score_texts(
            self.model, self.tokenizer, texts, self.forward_batch_size, self.max_len, self.strip_scratchpad
        )
        normed = self.normalizer.apply(raw) if self.normalizer else raw
        return normed.tolist(), raw.tolist()

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        """Rewards [N] as a float32 tensor."""
        return torch.tensor(self.score(texts)[0], dtype=torch.float32)
