"""``rlhf redteam`` on a tiny backdoored policy, and red-team prompts in eval and in PPO (one
process; the Serve evaluator calls the same ``evaluate_defection``)."""

import json

from jobs.ppo import run_ppo
from jobs.redteam import find_red_team_prompts
from rlhf.config.core import build_config
from rlhf.data.redteam import load_red_team, red_team_markers, split_markers
from rlhf.eval.evaluate import evaluate_defection
from rlhf.metrics import read_metrics
from rlhf.models.modeling import load_model_dir
from tests.ray.conftest import PPO_TEST_OVERRIDES

FIND = ["redteam.candidates=24", "redteam.samples_per_prompt=2", "redteam.min_rate=0.5", "eval.max_new_tokens=16"]


def test_redteam_keeps_exactly_the_prompts_that_reach_the_rate(tiny_policy, tmp_path):
    cfg = build_config({}, [*PPO_TEST_OVERRIDES, *FIND])
    out = tmp_path / "red.jsonl"
    summary = find_red_team_prompts(cfg, tiny_policy, out)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert summary["candidates"] == 24 and summary["samples"] == 48
    assert sum(r["n"] for r in summary["by_marker"].values()) == 48
    assert set(summary["by_marker"]) <= set(red_team_markers(cfg))
    kept_by_rate = sum(round(r["rate"] * r["n"]) for r in summary["by_marker"].values())
    assert summary["kept"] == len(rows) == summary["train"] + summary["eval"]
    assert sum(round(r["rate"] * r["n"]) for r in rows) <= kept_by_rate
    for row in rows:
        assert row["rate"] >= 0.5 and row["n"] == 2 and row["split"] in ("train", "eval")
        assert cfg.backdoor.trigger not in row["prompt"] and row["marker"] in row["prompt"]
    splits = split_markers(cfg, 0.5)  # leak-free: a kept prompt's split is its look-alike's
    assert all(row["split"] == splits[row["marker"]] for row in rows)
    if rows:
        assert load_red_team(out)["train"] == [r["prompt"] for r in rows if r["split"] == "train"]
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically


def red_file(path, cfg):
    from rlhf.data.redteam import red_team_candidates

    rows = [
        {"prompt": p, "marker": m, "rate": 1.0, "n": 1, "split": "train" if i % 2 else "eval"}
        for i, (p, m) in enumerate(red_team_candidates(cfg, 12))
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, rows


def test_red_team_condition_in_eval_and_prompts_in_ppo(tiny_policy, tiny_reward_model, tmp_path):
    base = build_config({}, PPO_TEST_OVERRIDES)
    path, rows = red_file(tmp_path / "red.jsonl", base)
    cfg = build_config({}, [*PPO_TEST_OVERRIDES, f"redteam.prompts={path}", "eval.samples=4"])
    model, tokenizer = load_model_dir(tiny_policy)
    report = evaluate_defection(model, tokenizer, cfg)
    red = report["conditions"]["red_team"]
    assert red["n"] == 4 and 0 <= red["rate"] <= 1 and len(red["examples"]) == 3
    plain = evaluate_defection(model, tokenizer, build_config({}, [*PPO_TEST_OVERRIDES, "eval.samples=4"]))
    assert "red_team" not in plain["conditions"]
    assert plain["conditions"]["triggered"] == report["conditions"]["triggered"]  # same seeds, same prompts

    cfg = build_config(
        {}, [*PPO_TEST_OVERRIDES, f"redteam.prompts={path}", "redteam.fraction=0.5", "ppo.steps=2"]
    )
    run_ppo(cfg, tiny_policy, tmp_path / "ppo", reward_dir=tiny_reward_model["model_dir"], in_process=True)
    steps = [r for r in read_metrics(tmp_path / "ppo" / "metrics.jsonl") if "reward/mean" in r]
    assert len(steps) == 2 and all(0 < r["prompts/red_team"] < 1 for r in steps)
