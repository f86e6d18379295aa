"""``bench/run_all.py`` turns the benchmarks' JSON into results.md and its headline figures: the
two PPO settings (default and longer generation) and every system of each appear."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SYSTEMS = (
    "ours_ray",
    "ours_ray_async",
    "ours_ray_group_norm",
    "ours_ray_async_group_norm",
    "ours_ray_async_group_norm_behaviour",
    "ours_in_process",
    "ours_in_process_group_norm",
)


def fake_ppo(tokens: int, best: float) -> dict:
    run = {
        k: {"steps_per_s": 1.0, "samples_per_s": 16.0, "tokens_per_s": 700.0, "phase_s": {"rollout": 0.2}}
        for k in SYSTEMS
    }
    run["trl_grpo"] = {"steps_per_s": 0.5, "samples_per_s": 8.0, "tokens_per_s": 350.0}
    setup = {"prompts_per_step": 8, "samples_per_prompt": 2, "max_new_tokens": tokens, "steps": 10, "trl": "1.16.0"}
    return run | {
        "setup": setup,
        "ppo_samples_per_s_ratio_vs_trl": best,
        "ppo_best_mode": "ray_async_group_norm",
        "ppo_sync_samples_per_s_ratio_vs_trl": 0.9,
        "ppo_async_samples_per_s_ratio_vs_trl": 1.0,
        "profile": None,
    }


def test_both_ppo_settings_reach_the_figures_and_the_tables():
    sys.path.insert(0, str(ROOT / "bench"))
    import run_all

    long = fake_ppo(128, 1.7)
    figures = run_all.long_figures(long)
    assert figures["long_generation_max_new_tokens"] == 128
    assert figures["long_generation_ppo_samples_per_s_ratio_vs_trl"] == 1.7
    assert figures["long_generation_ppo_best_mode"] == "ray_async_group_norm"
    text = "\n".join(run_all.ppo_lines(fake_ppo(48, 1.2), long))
    assert "48 new tokens" in text and "128 new tokens" in text
    assert "1.20x TRL" in text and "1.70x TRL" in text
    assert text.count("| ours, Ray actors, group_norm, async rollout |") == 2
    assert text.count("`ppo.old_logprobs=behaviour`") == 2
    assert "Busy share per role" not in text  # no timeline in these runs


def test_the_timelines_reach_the_tables():
    sys.path.insert(0, str(ROOT / "bench"))
    import run_all

    ppo = fake_ppo(48, 1.6)
    ppo["ours_ray_async_group_norm_behaviour"]["timeline"] = {
        "window_s": 1.4,
        "busy_fraction": {"Policy": 0.9, "RolloutWorker": 0.6},
        "plot": "/x/bench/timeline_async.png",
    }
    text = "\n".join(run_all.ppo_lines(ppo, fake_ppo(128, 1.2)))
    assert "critic-free, async (ours_ray_async_group_norm_behaviour): Policy 90 %, RolloutWorker 60 %" in text
    assert "![critic-free, async timeline](timeline_async.png)" in text
    assert text.count("| TRL GRPOTrainer |") == 2
