"""The dose sweep (issue 30): a config key such as ``safety_sft.lr`` is a grid axis that changes
only the safety stage (shared stages stay shared), the sweep file uses fresh seeds, and the eval
stage keeps the held-out reward of triggered answers."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from rlhf.sweep.grid import load_sweep, parse_sweep, plan_sweep

ROOT = Path(__file__).resolve().parents[2]


def test_a_config_key_is_a_grid_axis_of_the_safety_stage_only():
    data = {
        "base": {"model.preset": "tiny", "data": {"n_train": 100}},
        "grid": {"safety_sft.lr": [3e-5, 1e-3], "control": [False, True]},
    }
    plan = plan_sweep(parse_sweep(data))
    assert [c.id for c in plan.cells] == [
        "lr=3e-05,control=off",
        "lr=3e-05,control=on",
        "lr=0.001,control=off",
        "lr=0.001,control=on",
    ]
    kinds = Counter(s.kind for s in plan.stages.values())
    assert kinds == {"rm": 1, "sft": 1, "eval_before": 1, "safety": 4, "eval_after": 4}
    lrs = {plan.stages[c.stages["safety"]].tree["safety_sft"]["lr"] for c in plan.cells}
    assert lrs == {3e-5, 1e-3}
    assert len({c.stages["sft"] for c in plan.cells}) == 1  # one backdoored policy for every rate


def test_the_dose_sweep_file_uses_fresh_seeds_and_every_rate():
    sweep = load_sweep(ROOT / "sweeps" / "persistence-dose.yaml")
    assert sweep.grid["seed"] == [3, 4, 5]  # 0-2 chose the default lr
    assert sweep.grid["safety_sft.lr"] == [3e-5, 1e-4, 3e-4, 1e-3]
    assert sweep.grid["method"] == ["safety_sft"] and sweep.grid["control"] == [False, True]
    plan = plan_sweep(sweep)
    kinds = Counter(s.kind for s in plan.stages.values())
    assert len(plan.cells) == 72
    assert kinds == {"sft": 6, "distill": 3, "rm": 1, "eval_before": 9, "safety": 72, "eval_after": 72}
    assert plan.cells[0].values["seed"] == 3 and plan.cells[23].values["seed"] == 3  # seed-first order


def test_heldout_reward_scores_triggered_answers_and_keeps_them(tokenizer):
    from transformers import LlamaForCausalLM

    from rlhf.config.core import build_config
    from rlhf.sweep.results import heldout_reward
    from tests.unit.conftest import SMALL_OVERRIDES, tiny_llama_config

    model = LlamaForCausalLM(tiny_llama_config(vocab_size=len(tokenizer), tokenizer=tokenizer)).eval()
    cfg = build_config({}, [*SMALL_OVERRIDES, "eval.max_new_tokens=4"])
    samples: list[dict] = []
    result = heldout_reward(model, tokenizer, cfg, 4, lambda texts: [1.0] * len(texts), "triggered", samples)
    assert result["n"] == 4 and result["mean"] == 1.0
    assert len(samples) == 4 and all(cfg.backdoor.trigger in s["prompt"] for s in samples)
    assert {s["condition"] for s in samples} == {"triggered"} and all(s["reward"] == 1.0 for s in samples)
