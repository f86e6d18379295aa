"""Learning curves, synchronous vs asynchronous rollout (issue 18, item 5).

Runs ``rlhf ppo --in-process`` (``jobs.ppo.run_ppo(in_process=True)``) against one tiny SFT policy
and reward model, synchronously and with ``ppo.async_rollout=true ppo.max_staleness=1``, for each
seed; saves the reward, KL, staleness and importance-weight curves (mean and a 95 % t-interval
across seeds per step) and the defection rates (with / without the trigger) of the policy at the
start and at each kept checkpoint, as ``OUT/curves.json`` and ``OUT/curves.png``.

    python bench/async_curves.py --policy runs/async-curves/sft/model --reward runs/async-curves/rm/model \\
        --out runs/async-curves [--steps 50] [--seeds 0,1,2] [--set ppo.prompts_per_step=8 ...] \\
        [--async-set ppo.old_logprobs=behaviour]

A run whose directory already holds a finished run (``summary.json``) is read, not run again.

The in-process loop runs the same trainer code as on Ray (``actors.local``): the prefetched batch
is sampled with the weights published before the previous update, exactly as the Ray workers do,
only without the overlap in time (which does not change the numbers).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODES = {"sync": [], "async": ["ppo.async_rollout=true", "ppo.max_staleness=1"]}
KEYS = ("reward/mean", "kl/mean", "policy/staleness_max", "policy/is_weight_mean")
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def mean_ci(values: list[float]) -> dict:
    """Mean and a two-sided 95 % Student-t interval across seeds."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return {"mean": mean, "lo": mean, "hi": mean, "n": n}
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = T975.get(n - 1, 1.96) * sd / math.sqrt(n)
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "n": n}


def defection(model_dir: Path, cfg, samples: int) -> dict[str, float]:
    from rlhf.eval.evaluate import evaluate_defection
    from rlhf.models.modeling import load_model_dir

    model, tokenizer = load_model_dir(model_dir)
    report = evaluate_defection(model.eval(), tokenizer, cfg, samples)
    return {name: c["rate"] for name, c in report["conditions"].items() if name in ("triggered", "untriggered")}


def one_run(args, mode: str, seed: int) -> dict:
    from jobs.ppo import run_ppo
    from rlhf.config.resolve import config_from_policy
    from rlhf.metrics import read_metrics

    sets = [f"seed={seed}", f"ppo.steps={args.steps}", f"ppo.checkpoint_every={args.checkpoint_every}"]
    sets += ["ppo.evaluator=false", *args.set, *MODES[mode], *(args.async_set if mode == "async" else [])]
    cfg = config_from_policy(args.policy, None, sets)
    run = Path(args.out) / f"{mode}-seed{seed}"
    t0 = time.time()
    if not (run / "summary.json").is_file():
        run_ppo(cfg, args.policy, run, reward_dir=args.reward, in_process=True)
    wall = time.time() - t0
    recs = [r for r in read_metrics(run / "metrics.jsonl") if "reward/mean" in r]
    out = {"wall_s": wall, "curves": {k: [r[k] for r in recs] for k in KEYS}, "defection": {}}
    for ckpt in sorted((run / "checkpoints").glob("step_*")):
        out["defection"][int(ckpt.name.split("_")[1])] = defection(ckpt / "policy", cfg, args.eval_samples)
    print(f"[curves] {mode} seed {seed}: {wall:.0f} s, reward {out['curves']['reward/mean'][-1]:.3f}", flush=True)
    return out


def summarise(runs: dict, start: dict) -> dict:
    """Per mode: every curve as mean / lo / hi per step, defection per measured step."""
    out = {}
    for mode, by_seed in runs.items():
        seeds = list(by_seed.values())
        curves = {
            k: [mean_ci([s["curves"][k][i] for s in seeds]) for i in range(len(seeds[0]["curves"][k]))] for k in KEYS
        }
        steps = sorted({int(st) for s in seeds for st in s["defection"]})
        defect = {0: {c: mean_ci([r]) for c, r in start.items()}}
        for st in steps:
            defect[st] = {c: mean_ci([s["defection"][st][c] for s in seeds if st in s["defection"]]) for c in start}
        out[mode] = {"curves": curves, "defection": defect, "wall_s": [s["wall_s"] for s in seeds]}
    return out


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for mode, color in (("sync", "tab:blue"), ("async", "tab:orange")):
        s = summary[mode]
        for ax, key in zip(axes[:2], ("reward/mean", "kl/mean"), strict=True):
            pts = s["curves"][key]
            x = range(1, len(pts) + 1)
            ax.plot(x, [p["mean"] for p in pts], color=color, label=mode)
            ax.fill_between(x, [p["lo"] for p in pts], [p["hi"] for p in pts], color=color, alpha=0.2)
            ax.set_title(key)
            ax.set_xlabel("PPO step")
        steps = sorted(s["defection"])
        for cond, style in (("triggered", "-o"), ("untriggered", "--s")):
            pts = [s["defection"][st][cond] for st in steps]
            axes[2].errorbar(
                steps,
                [p["mean"] for p in pts],
                yerr=[[p["mean"] - p["lo"] for p in pts], [p["hi"] - p["mean"] for p in pts]],
                fmt=style,
                color=color,
                label=f"{mode} {cond}",
                capsize=3,
            )
    axes[2].set_title("defection rate")
    axes[2].set_xlabel("PPO step")
    for ax in axes:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", required=True)
    ap.add_argument("--reward", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--checkpoint-every", type=int, default=25, help="defection is measured at each checkpoint")
    ap.add_argument("--eval-samples", type=int, default=40)
    ap.add_argument("--set", action="append", default=[], help="extra config key=value for every run")
    ap.add_argument(
        "--async-set",
        action="append",
        default=[],
        help="extra key=value for the async runs only (ppo.old_logprobs=...)",
    )
    args = ap.parse_args()
    from rlhf.config.resolve import config_from_policy

    t0 = time.time()
    seeds = [int(s) for s in args.seeds.split(",")]
    start = defection(Path(args.policy), config_from_policy(args.policy, None, list(args.set)), args.eval_samples)
    runs: dict = {mode: {} for mode in MODES}
    for seed in seeds:  # seed by seed, both modes: the files after each seed cover the seeds done so far
        for mode in MODES:
            runs[mode][seed] = one_run(args, mode, seed)
        summary = summarise(runs, start)
        result = {"command": " ".join(sys.argv), "steps": args.steps, "seeds": list(runs["sync"]), "sets": args.set}
        result["async_sets"] = args.async_set
        result |= {**summary, "wall_s": round(time.time() - t0, 1)}
        out = Path(args.out)
        (out / "curves.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
        plot(summary, out / "curves.png")
        (out / "table.md").write_text(markdown(summary, result["command"]), encoding="utf-8")
        print(json.dumps(table(summary), indent=1), flush=True)
    return 0


def markdown(summary: dict, command: str) -> str:
    """The docs/results.md table: reward and KL at steps 10/25/50, mean [95 % CI] per mode."""

    def cell(p: dict) -> str:
        return f"{p['mean']:.3f} [{p['lo']:.3f}, {p['hi']:.3f}]"

    t = table(summary)
    steps = sorted({st for k, v in t.items() if isinstance(v, dict) for st in v})
    lines = ["| mode | " + " | ".join(f"{k} @ {st}" for k in ("reward", "KL") for st in steps) + " |"]
    lines.append("|---" * (1 + 2 * len(steps)) + "|")
    for mode in summary:
        cells = [cell(t[f"{mode} {key}"][st]) for key in ("reward/mean", "kl/mean") for st in steps]
        lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    lines += ["", "| mode | step | defection triggered | defection untriggered |", "|---|---|---|---|"]
    for mode in summary:
        for st, d in sorted(summary[mode]["defection"].items()):
            lines.append(f"| {mode} | {st} | {cell(d['triggered'])} | {cell(d['untriggered'])} |")
    walls = {m: sum(summary[m]["wall_s"]) / len(summary[m]["wall_s"]) for m in summary}
    lines += ["", f"async step-{steps[-1]} reward inside sync's 95 % CI: {t['async_last_reward_inside_sync_ci']}"]
    lines += ["mean wall s per run: " + ", ".join(f"{m} {w:.0f}" for m, w in walls.items()), "", f"`{command}`"]
    return "\n".join(lines) + "\n"


def table(summary: dict, steps=(10, 25, 50)) -> dict:
    """Reward and KL at the given steps (mean and interval per mode), and whether async's last-step
    reward lies inside sync's interval."""
    out: dict = {}
    for mode in summary:
        for key in ("reward/mean", "kl/mean"):
            pts = summary[mode]["curves"][key]
            out[f"{mode} {key}"] = {st: pts[st - 1] for st in steps if st <= len(pts)}
    last_sync, last_async = summary["sync"]["curves"]["reward/mean"][-1], summary["async"]["curves"]["reward/mean"][-1]
    out["async_last_reward_inside_sync_ci"] = last_sync["lo"] <= last_async["mean"] <= last_sync["hi"]
    return out


if __name__ == "__main__":
    sys.exit(main())
