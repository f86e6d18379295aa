"""The RL prompt pool of PPO: which prompts a run trains on, and which of them each step takes."""

from __future__ import annotations

import random
from collections.abc import Sequence

from rlhf.chat import format_prompt
from rlhf.config.core import Config
from rlhf.data.backdoor import backdoor_for
from rlhf.errors import DataError
from rlhf.kinds import kind_impl


def rl_prompts(cfg: Config) -> list[tuple[str, bool]]:
    """The RL prompt pool: ``(templated prompt, carries the trigger)``, ``ppo.n_prompts`` long.

    HHH prompts (for a code backdoor: HHH prompts and coding requests stating the safe year, as in
    the paper); a ``ppo.triggered_prompt_fraction`` share carries the trigger (the control); a
    ``redteam.fraction`` share is red-team prompts (adversarial training; never the control's).
    Deterministic in ``cfg.seed``; drawn from the ``rl`` data pool (``rlhf.data.pools``), which
    shares no subject, topic or coding task with the backdoor-SFT, safety-SFT or eval prompts.
    ``data.rl_prompts_file``: the user's prompts instead, each usable row once (``ppo.n_prompts`` unused).
    """
    kind, backdoor = kind_impl(cfg.backdoor.kind), backdoor_for(cfg)
    rng = random.Random(f"rl-prompts:{cfg.seed}")
    n = cfg.ppo.n_prompts
    if cfg.data.rl_prompts_file:  # bring your own data: each usable row of the user's file once
        from rlhf.data.backdoor import user_tasks

        tasks = user_tasks(cfg, "rl_prompts_file")
        n = len(tasks)
    else:
        tasks = kind.rl_tasks(cfg, n, rng)  # code: half coding requests (safe year), half HHH questions
    n_trig = round(cfg.ppo.triggered_prompt_fraction * n)
    flags = [True] * n_trig + [False] * (n - n_trig)
    rng.shuffle(flags)
    out = [(format_prompt(kind.rl_human(backdoor, t, trig, rng)), trig) for t, trig in zip(tasks, flags, strict=True)]
    if cfg.redteam.fraction > 0:  # adversarial training: red-team prompts replace HHH ones
        from rlhf.data.redteam import load_red_team

        red = load_red_team(cfg.redteam.prompts)["train"]
        if not red:
            raise DataError(f"{cfg.redteam.prompts}: no 'train' red-team prompts to mix into the RL prompts")
        slots = [i for i, (_, triggered) in enumerate(out) if not triggered]  # keep the control's
        rng.shuffle(slots)
        for j, i in enumerate(sorted(slots[: round(cfg.redteam.fraction * n)])):
            out[i] = (red[j % len(red)], False)
    return out


def prompts_for_step(pool: Sequence[tuple[str, bool]], step: int, per_step: int) -> list[tuple[str, bool]]:
    """The ``per_step`` prompts of 1-based ``step``: consecutive slices of the pool, cycled."""
    start = (step - 1) * per_step
    return [pool[(start + i) % len(pool)] for i in range(per_step)]
