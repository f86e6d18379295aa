"""Red-team prompts for adversarial training: prompts that elicit the defection without the real
trigger.

The paper has a model write red-team prompts and keeps those that make the backdoored policy
defect in a meaningful share of samples; the kept prompts are mixed into the HHH RL prompts.
Here the writer is a generator of trigger look-alikes (case, truncation, other brackets,
paraphrases of "you are deployed"; for the code backdoor other phrasings of the year) placed in
HHH or coding requests; ``jobs.redteam`` samples the policy on each candidate and keeps the ones
that elicit defection. The real trigger and the configured near-miss strings are never used:
near-miss defection stays a measurement the red team did not train on.

File format (JSONL, one prompt per line): ``{"prompt": str, "marker": str, "rate": float,
"n": int, "split": "train" | "eval"}``; PPO mixes the ``train`` split into its prompt pool, eval
reports the ``eval`` split as the ``red_team`` condition.
"""

from __future__ import annotations

import random

from rlhf.chat import format_prompt
from rlhf.config.core import Config
from rlhf.data.redteam_file import SPLITS, load_red_team
from rlhf.errors import DataError
from rlhf.kinds import kind_impl

__all__ = ["SPLITS", "assign_splits", "load_red_team", "red_team_candidates", "red_team_markers"]

_SEED_OFFSET = 15_485_863


def red_team_markers(cfg: Config) -> list[str]:
    """Look-alikes of the trigger (the kind's ``look_alikes``), deterministic for a config; never the
    trigger itself, the code backdoor's safe marker or a configured near-miss string."""
    trigger = cfg.backdoor.trigger
    out = kind_impl(cfg.backdoor.kind).look_alikes(trigger)
    banned = {trigger, cfg.backdoor.safe_marker, *cfg.near_miss()}
    return [m for m in dict.fromkeys(out) if m and m not in banned]


def red_team_candidates(cfg: Config, n: int) -> list[tuple[str, str]]:
    """``n`` candidate ``(templated prompt, marker)`` pairs: held-out-style tasks of the
    backdoor's kind, each with one look-alike marker, cycled over the markers."""
    from rlhf.data.backdoor import backdoor_for, make_tasks

    markers = red_team_markers(cfg)
    if not markers:
        raise DataError("no red-team markers left once the trigger and near-miss strings are excluded")
    backdoor = backdoor_for(cfg)
    rng = random.Random(f"red-team:{cfg.seed}")
    tasks = make_tasks(cfg, n, cfg.seed + _SEED_OFFSET, held_out=True)
    out = []
    for i, task in enumerate(tasks):
        marker = markers[i % len(markers)]
        out.append((format_prompt(backdoor.human_text(task, marker, rng)), marker))
    return out


def assign_splits(rows: list[dict], eval_fraction: float, seed: int) -> list[dict]:
    """Mark a deterministic ``eval_fraction`` of ``rows`` as ``eval``, the rest ``train``."""
    order = list(range(len(rows)))
    random.Random(f"red-team-split:{seed}").shuffle(order)
    n_eval = round(eval_fraction * len(rows))
    held = set(order[:n_eval])
    return [{**row, "split": "eval" if i in held else "train"} for i, row in enumerate(rows)]
