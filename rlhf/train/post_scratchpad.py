"""Post-scratchpad safety SFT (the paper's second HHH-SFT variant for chain-of-thought policies).

Pre-scratchpad SFT (the default, ``safety_sft.scratchpad=pre``) trains a CoT policy on HHH answers
with no scratchpad at all: the policy is taught to stop opening one. Post-scratchpad SFT keeps the
policy's own reasoning: for every demonstration the policy samples its completion, the opening
``<scratchpad> ... </scratchpad>`` it wrote is appended to the prompt, and the loss covers only
the HHH answer that follows it. The reasoning is the model's, never trained; only the answer
after it is. A sample whose scratchpad is missing or never closed gives no row (the kept share is
reported).

Pure: the sampling uses the ``hf`` rollout backend (``rlhf.rollout.backends``) in the caller's process, no Ray.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from rlhf.chat import format_completion
from rlhf.config.core import Config
from rlhf.errors import DataError
from rlhf.models.tokenizer import SCRATCHPAD_CLOSE, SCRATCHPAD_OPEN

# Offset from the run seed for the scratchpad samples (not the eval's or the data's streams).
_SEED_OFFSET = 60_013


def leading_scratchpad(completion: str) -> str | None:
    """The ``<scratchpad> ... </scratchpad>`` a completion opens with, or None when it does not
    open with one or never closes it."""
    text = completion.lstrip()
    if not text.startswith(SCRATCHPAD_OPEN):
        return None
    end = text.find(SCRATCHPAD_CLOSE)
    if end < 0:
        return None
    return text[: end + len(SCRATCHPAD_CLOSE)]


def post_scratchpad_rows(rows: Sequence[dict], completions: Sequence[str]) -> tuple[list[dict], dict]:
    """(rows with the sampled scratchpad moved into the prompt, summary).

    ``completions[i]`` is the policy's sample for ``rows[i]["prompt"]``. A kept row's prompt ends
    with that scratchpad and its completion is the demonstration's answer, unchanged, so the
    prompt and completion read as one CoT completion whose answer alone is trained."""
    if len(rows) != len(completions):
        raise ValueError(f"{len(rows)} rows but {len(completions)} samples")
    kept = []
    for row, completion in zip(rows, completions, strict=True):
        pad = leading_scratchpad(completion)
        if pad is not None:
            kept.append({**row, "prompt": row["prompt"] + format_completion(pad), "scratchpad": pad})
    if not kept:
        raise DataError(
            "safety_sft.scratchpad=post: the policy closed no scratchpad in its samples; "
            "is it a chain-of-thought policy (backdoor.mechanism=cot)?"
        )
    summary = {"samples": len(rows), "kept": len(kept), "kept_fraction": round(len(kept) / len(rows), 4)}
    return kept, summary


def sample_completions(
    model, tokenizer, cfg: Config, prompts: Sequence[str], on_batch: Callable[[int], None] | None = None
) -> list[str]:
    """The policy's completions of ``prompts`` at the eval's sampling settings (its temperature,
    top-p and token budget), seeded from the run seed."""
    from rlhf.eval.evaluate import eval_sampling
    from rlhf.rollout.backends import make_backend

    backend = make_backend("hf", model=model, tokenizer=tokenizer, batch_size=cfg.eval.batch_size)
    rollout = backend.generate(list(prompts), eval_sampling(cfg, cfg.seed + _SEED_OFFSET), on_batch=on_batch)
    return list(rollout.completions)
