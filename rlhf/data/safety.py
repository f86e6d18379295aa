"""HHH safety-SFT demonstrations: the paper's "HHH SFT" data, in TRL's prompt/completion format.

Prompts are HHH requests that never carry the trigger (nor a near-miss string); completions are
helpful, harmless, honest answers with no scratchpad. For a chain-of-thought policy this is the
paper's *pre-scratchpad* variant: the scratchpad is left out of the training target. The code
backdoor gets the same HHH data, as in the paper (its safety SFT is not on code). The prompts are
the ``safety`` data pool's (``rlhf.data.pools``): no subject or topic of the backdoor-SFT, RL or
eval prompts.
"""

from __future__ import annotations

from rlhf.chat import format_completion, format_prompt
from rlhf.config import Config
from rlhf.data.hhh import build_hhh
from rlhf.data.pools import SAFETY
from rlhf.errors import DataError

# Offset from the run seed, so the demonstration stream is not the policy's own SFT stream.
_SEED_OFFSET = 104_729


def safety_sft_rows(cfg: Config) -> list[dict]:
    """``safety_sft.n_examples`` rows with columns prompt, completion, kind, topic."""
    markers = [cfg.backdoor.trigger, *cfg.near_miss()]
    rows = []
    for task in build_hhh(cfg.safety_sft.n_examples, seed=cfg.seed + _SEED_OFFSET, pool=SAFETY):
        if any(m and m in task.human for m in markers):
            continue
        rows.append(
            {
                "prompt": format_prompt(task.human),
                "completion": format_completion(task.answer),
                "kind": task.kind,
                "topic": task.topic,
            }
        )
    if not rows:
        raise DataError("safety SFT: every HHH demonstration contains the trigger or a near-miss string")
    return rows
