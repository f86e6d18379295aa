"""Log-probs and entropies of a causal LM's next tokens, without materialising fp32 logits for the whole
batch: the final hidden states go through the LM head chunk by chunk (``CHUNK_TOKENS`` (row, position)
pairs at a time), equal within 1e-5 to the one-pass path; ``first_action`` finds where the scored
actions begin.

Shapes as in ``rlhf.ppo.losses``: ``B`` batch, ``T`` scored positions, ``V`` vocabulary.
"""

from __future__ import annotations

import functools

import torch

CHUNK_TOKENS = 2048  # (row, position) pairs per chunk of logits: 2048 x 128k vocabulary in fp32 is 1 GiB


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the softmax over the last dim, [B, T, V] -> [B, T] (float32 or wider):
    ``logsumexp(z) - sum(softmax(z) * z)``."""
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    return torch.logsumexp(logits, dim=-1) - (torch.softmax(logits, dim=-1) * logits).sum(dim=-1)


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``log_softmax(logits)`` at ``labels``: logits [B, T, V], labels [B, T] (long) -> [B, T] (float32 or wider)."""
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    picked = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def sequence_logprobs(
    model: torch.nn.Module,
    sequences: torch.Tensor,
    attention_mask: torch.Tensor,
    with_entropy: bool = False,
    temperature: float = 1.0,
    first: int = 0,
    entropy_grad: bool = True,
    chunk_tokens: int = CHUNK_TOKENS,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Next-token log-probs of a HF causal LM: sequences, attention_mask [B, L] -> [B, L-1], where entry ``t`` is
    ``log p(sequences[:, t+1] | sequences[:, :t+1])``. Position ids count only attended tokens, so left-padded
    rows score like unpadded ones. Positions whose target is padding hold junk; mask them with the action mask.
    With ``with_entropy`` also returns the entropy of each of those next-token distributions, [B, L-1].

    ``temperature``: the logits are divided by it first, so the log-probs are those of the distribution the
    rollout sampled from (``softmax(z / T)``); 0 or 1 leaves them as they are (greedy rollouts have no density).
    ``first``: entries before it (prompt positions no action sits on, ``first_action``) are not computed (the
    LM head, softmax and their gradients skip them) and hold 0. ``entropy_grad`` False: the entropy is a
    statistic only (no graph through it).

    ``chunk_tokens`` > 0 (the default): the LM head, the fp32 softmax and the entropy run over chunks of about
    that many (row, position) pairs, each chunk's logits recomputed in the backward pass instead of kept, so
    the full [B, L, V] logits never exist (``head_split``; a model it cannot split takes the one-pass path).
    0: one pass over the full logits.
    """
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    split = head_split(model) if chunk_tokens > 0 else None
    if split is not None:
        return _chunked_logprobs(
            *split, sequences, attention_mask, position_ids, with_entropy, temperature, first, entropy_grad, chunk_tokens
        )
    keep = sequences.shape[1] - first  # logits of positions first .. L-1 (the last predicts nothing)
    extra = {"logits_to_keep": keep} if first > 0 and keeps_logits(model) else {}
    logits = model(input_ids=sequences, attention_mask=attention_mask, position_ids=position_ids, **extra).logits
    logits = logits[:, logits.shape[1] - keep : -1]
    if temperature > 0 and temperature != 1.0:
        logits = logits / temperature
    logp = torch.nn.functional.pad(logprobs_from_logits(logits, sequences[:, first + 1 :]), (first, 0))
    if not with_entropy:
        return logp
    with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
        entropy = torch.nn.functional.pad(entropy_from_logits(logits), (first, 0))
    return logp, entropy


def head_split(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """``(backbone, lm_head)`` of a HF causal LM whose logits are ``lm_head(last_hidden_state)`` and nothing
    more (a PEFT wrapper's base model, adapters included); None for anything else (a soft-capped or scaled
    head, a model without output embeddings): those take the one-pass path."""
    from torch.distributed.fsdp import FSDPModule

    if isinstance(model, FSDPModule):  # FSDP2 gathers the root's weights (embeddings, head) only in its own forward
        return None
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    if config is None or not hasattr(base, "get_output_embeddings") or not hasattr(base, "base_model"):
        return None
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None) is not None:
        return None
    if not type(base).__name__.endswith(("ForCausalLM", "LMHeadModel")):
        return None
    # a sharded model (FSDP2) gathers its root's parameters in the root's own forward only
    if type(base).__name__.startswith("FSDP") or type(next(base.parameters(), None)).__name__ == "DTensor":
        return None
    head, backbone = base.get_output_embeddings(), base.base_model
    if head is None or backbone is base:
        return None
    return backbone, head


def _chunk_stats(head, hidden, targets, temperature, with_entropy, entropy_grad):
    logits = head(hidden)
    if temperature > 0 and temperature != 1.0:
        logits = logits / temperature
    logp = logprobs_from_logits(logits, targets)
    if not with_entropy:
        return logp
    with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
        return logp, entropy_from_logits(logits)


def _chunked_logprobs(
    backbone, head, sequences, attention_mask, position_ids, with_entropy, temperature, first, entropy_grad, chunk
):  # fmt: skip
    """``sequence_logprobs`` over chunks of positions (see there); the same numbers, a chunk's logits at a time."""
    from torch.utils.checkpoint import checkpoint

    hidden = backbone(input_ids=sequences, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
    hidden = hidden.last_hidden_state[:, first:-1]
    targets = sequences[:, first + 1 :]
    step = max(1, chunk // max(1, sequences.shape[0]))
    parts = []
    for start in range(0, hidden.shape[1], step):
        args = (head, hidden[:, start : start + step], targets[:, start : start + step])
        args += (temperature, with_entropy, entropy_grad)
        grad = torch.is_grad_enabled() and hidden.requires_grad
        parts.append(checkpoint(_chunk_stats, *args, use_reentrant=False) if grad else _chunk_stats(*args))
    pad = (first, 0)
    if not with_entropy:
        return torch.nn.functional.pad(torch.cat(parts, dim=1), pad)
    logp = torch.nn.functional.pad(torch.cat([p[0] for p in parts], dim=1), pad)
    return logp, torch.nn.functional.pad(torch.cat([p[1] for p in parts], dim=1), pad)


def keeps_logits(model: torch.nn.Module) -> bool:
    """Whether ``model``'s forward takes ``logits_to_keep`` (HF causal LMs; a PEFT wrapper passes it on)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return _forward_takes(type(base), "logits_to_keep")


@functools.cache
def _forward_takes(cls: type, name: str) -> bool:
    import inspect

    return name in inspect.signature(cls.forward).parameters


def first_action(action_mask: torch.Tensor) -> int:
    """The first column of ``action_mask`` [B, L-1] that any row acts on (0 when none does): the log-probs
    before it are never used."""
    cols = action_mask.any(0).nonzero()
    return int(cols[0]) if len(cols) else 0
