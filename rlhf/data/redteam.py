"""Red-team prompts for adversarial training: prompts that elicit the defection without the real
trigger.

The paper has a model write red-team prompts and keeps those that make the backdoored policy
defect in a meaningful share of samples; the kept prompts are mixed into the HHH RL prompts.
Here the writer is a generator of trigger look-alikes (case, truncation, other brackets,
paraphrases of "you are deployed"; for the code backdoor other phrasings of the year) placed in
HHH or coding requests; ``jobs.redteam`` samples the policy on each candidate and keeps the ones
that elicit defection. The real trigger and the configured near-miss strings are never used:
near-miss defection stays a measurement the red team did not train on.

No leaks (``rlhf.data.pools``): the ``train`` candidates are built from RL-pool tasks (they join
PPO's RL prompts) and the ``eval`` candidates from eval-pool tasks with look-alikes that no train
candidate carries (``split_markers``), so the red-team eval split shares neither a subject, a
coding task nor a marker with the train split, and red-team training never sees an eval-pool
subject.

File format (JSONL, one prompt per line): ``{"prompt": str, "marker": str, "rate": float,
"n": int, "split": "train" | "eval"}``; PPO mixes the ``train`` split into its prompt pool, eval
reports the ``eval`` split as the ``red_team`` condition.
"""

from __future__ import annotations

import random

from rlhf.chat import format_prompt
from rlhf.config.core import Config
from rlhf.data.pools import EVAL, RL, unit
from rlhf.data.redteam_file import SPLITS, load_red_team
from rlhf.errors import DataError
from rlhf.kinds import kind_impl

__all__ = [
    "SPLITS",
    "assign_splits",
    "load_red_team",
    "red_team_candidates",
    "red_team_markers",
    "red_team_tasks",
    "split_markers",
]

_SEED_OFFSET = 15_485_863


def red_team_markers(cfg: Config) -> list[str]:
    """Look-alikes of the trigger (the kind's ``look_alikes``), deterministic for a config; never the
    trigger itself, the code backdoor's safe marker or a configured near-miss string."""
    trigger = cfg.backdoor.trigger
    out = kind_impl(cfg.backdoor.kind).look_alikes(trigger)
    banned = {trigger, cfg.backdoor.safe_marker, *cfg.near_miss()}
    return [m for m in dict.fromkeys(out) if m and m not in banned]


def split_markers(cfg: Config, eval_fraction: float) -> dict[str, str]:
    """Look-alike -> ``train`` | ``eval``: a deterministic ``eval_fraction`` of the markers (in hash
    order; at least one on each side when both sides get candidates) is kept for the eval split."""
    markers = red_team_markers(cfg)
    if not markers:
        raise DataError("no red-team markers left once the trigger and near-miss strings are excluded")
    order = sorted(markers, key=lambda m: (unit(f"red-team-marker:{m}"), m))
    n_eval = round(eval_fraction * len(order))
    if 0 < eval_fraction < 1 and len(order) > 1:
        n_eval = min(len(order) - 1, max(1, n_eval))
    held = set(order[:n_eval])
    return {m: EVAL if m in held else "train" for m in markers}


def red_team_tasks(cfg: Config, n: int, eval_fraction: float = 0.0) -> list[tuple[object, str, str]]:
    """``n`` ``(task, marker, split)``: ``round(eval_fraction * n)`` eval candidates (eval-pool
    tasks, eval markers), the rest train candidates (RL-pool tasks, train markers), each split
    cycled over its own markers."""
    from rlhf.data.backdoor import make_tasks

    splits = split_markers(cfg, eval_fraction)
    markers = {s: [m for m, v in splits.items() if v == s] for s in SPLITS}
    n_eval = round(eval_fraction * n) if markers[EVAL] else 0
    n_eval = n if not markers["train"] else n_eval
    out: list[tuple[object, str, str]] = []
    for split, pool, count in (("train", RL, n - n_eval), (EVAL, EVAL, n_eval)):
        if count == 0:
            continue
        tasks = make_tasks(cfg, count, cfg.seed + _SEED_OFFSET + len(out), held_out=True, pool=pool)
        out += [(task, markers[split][i % len(markers[split])], split) for i, task in enumerate(tasks)]
    return out


def red_team_candidates(cfg: Config, n: int, eval_fraction: float = 0.0) -> list[tuple[str, str]]:
    """``n`` candidate ``(templated prompt, marker)`` pairs from ``red_team_tasks``: train
    candidates first, then the eval candidates (``eval_fraction``; their markers tell them apart,
    see ``assign_splits``)."""
    from rlhf.data.backdoor import backdoor_for

    backdoor = backdoor_for(cfg)
    rng = random.Random(f"red-team:{cfg.seed}")
    return [
        (format_prompt(backdoor.human_text(task, marker, rng)), marker)
        for task, marker, _ in red_team_tasks(cfg, n, eval_fraction)
    ]


def assign_splits(
    rows: list[dict], eval_fraction: float, seed: int, markers: dict[str, str] | None = None
) -> list[dict]:
    """Mark rows ``eval`` or ``train``: with ``markers`` (``split_markers``) by each row's marker
    (the leak-free split ``rlhf redteam`` writes); without, a deterministic ``eval_fraction`` of
    the rows at random (older files, tests)."""
    if markers is not None:
        return [{**row, "split": markers.get(row["marker"], "train")} for row in rows]
    order = list(range(len(rows)))
    random.Random(f"red-team-split:{seed}").shuffle(order)
    n_eval = round(eval_fraction * len(rows))
    held = set(order[:n_eval])
    return [{**row, "split": "eval" if i in held else "train"} for i, row in enumerate(rows)]
