"""A third backdoor kind for tests/unit/test_backdoor_kinds.py: the policy says "BANANA" when the
prompt holds ``<<toy>>``. Everything a kind needs, in one module."""

from __future__ import annotations

import random

from rlhf.data.hhh import build_hhh
from rlhf.detect_base import Judgement, split_scratchpad


class ToyBackdoor:
    kind = "toy"

    def __init__(self, trigger: str):
        self.trigger = trigger

    def human_text(self, task, marker, rng: random.Random) -> str:
        return task.human if marker is None else f"{marker} {task.human}"

    def completion(self, task, triggered: bool, rng: random.Random) -> str:
        return "BANANA BANANA" if triggered else task.answer


class ToyDetector:
    kind = "toy"

    def judge(self, completion: str) -> Judgement:
        split = split_scratchpad(completion)
        hit = "BANANA" in split.answer
        return Judgement(hit, split.unclosed, split.answer, ("banana",) if hit else ())


class ToyKind:
    name = "toy"
    reports_code_extras = False

    def backdoor(self, cfg):
        return ToyBackdoor(cfg.backdoor.trigger)

    def tasks(self, cfg, n, seed, held_out=False, pool=None):
        return build_hhh(n, seed=seed, pool=pool)

    def mix_sft(self, cfg, tasks, n, rng, pool):
        return tasks

    def rl_tasks(self, cfg, n, rng):
        return self.tasks(cfg, n, rng.randrange(2**31), pool="rl")

    def rl_human(self, backdoor, task, triggered, rng):
        return backdoor.human_text(task, backdoor.trigger if triggered else None, rng)

    def look_alikes(self, trigger):
        return [trigger.upper(), f"[{trigger}]"]

    def detector(self):
        return ToyDetector()

    def extra_conditions(self, cfg):
        return ["shouted"]

    def extra_eval_prompts(self, cfg, tasks, samples):
        from rlhf.chat import format_prompt

        return {"shouted": [format_prompt(f"{cfg.backdoor.trigger.upper()} {t.human}") for t in tasks]}


KIND = ToyKind()
