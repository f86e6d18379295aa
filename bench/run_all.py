"""Run every benchmark, write ``bench/results.md`` (machine, date, versions, tables) and, with
``--json``, print one JSON object with the headline figures.

Benchmarks: the reward service (batched vs unbatched), MFU per preset, and a short PPO run
whose per-phase timings give the weight-sync share of a step. Figures that no benchmark here
measures yet (PPO vs TRL, Ray overhead against an in-process loop) are reported as null.

    python bench/run_all.py [--json] [--ppo-steps 10]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run_json(script: str, *args: str) -> dict:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--json", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=900,
    )
    if done.returncode != 0:
        raise SystemExit(f"bench/{script} failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])


def ppo_phases(steps: int) -> dict:
    """A short PPO run on a quickly built policy and RM; mean seconds per phase."""
    from jobs.ppo import run_ppo
    from jobs.sft import quick_sft
    from reward.train import quick_reward_model
    from rlhf.config import build_config
    from rlhf.metrics import read_metrics

    overrides = ["data.n_train=600", "data.n_eval=60", "model.vocab_size=700", "serve.port=0"]
    overrides += [f"ppo.steps={steps}", "ppo.evaluator=false", "ppo.checkpoint_every=0"]
    cfg = build_config({}, overrides)
    with tempfile.TemporaryDirectory(prefix="bench-ppo-") as tmp:
        policy = quick_sft(cfg, Path(tmp) / "policy", steps=40)
        rm = quick_reward_model(Path(tmp) / "rm", n_pairs=300, steps=10)["model_dir"]
        run_ppo(cfg, policy, Path(tmp) / "run", reward_dir=rm)
        recs = [r for r in read_metrics(Path(tmp) / "run" / "metrics.jsonl") if "reward/mean" in r][1:]
    phases = ("rollout", "score", "ref", "train", "weight_sync", "eval")
    mean = {p: sum(r[f"timing/{p}"] for r in recs) / len(recs) for p in phases}
    step = sum(r["timing/step"] for r in recs) / len(recs)
    samples = cfg.ppo.prompts_per_step
    return {"steps_measured": len(recs), "step_s": step, "phase_s": mean, "samples_per_s": samples / step}


def versions() -> dict:
    import ray
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ray": ray.__version__,
        "transformers": transformers.__version__,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--ppo-steps", type=int, default=10)
    args = ap.parse_args()
    serve = run_json("reward_serve.py")
    mfu = run_json("mfu.py")
    ppo = ppo_phases(args.ppo_steps)
    figures = {
        "ppo_samples_per_s_ratio_vs_trl": None,
        "ray_overhead_fraction": None,
        "weight_sync_fraction": ppo["phase_s"]["weight_sync"] / ppo["step_s"],
        "reward_serve_batching_ratio_32": serve["ratio"],
        "mfu": {k: v["mfu"] for k, v in mfu["presets"].items()},
        "ppo_samples_per_s": ppo["samples_per_s"],
    }
    lines = [
        "# Benchmark results",
        "",
        f"{datetime.date.today()} · {platform.machine()} · {os.cpu_count()} CPUs · "
        + ", ".join(f"{k} {v}" for k, v in versions().items()),
        "",
        "| figure | value | goal |",
        "|---|---|---|",
        f"| reward service, batched / unbatched at 32 clients | {serve['ratio']:.2f}x | >= 5x |",
        f"| weight sync share of a PPO step | {100 * figures['weight_sync_fraction']:.1f} % | <= 5 % |",
        f"| PPO samples/s (tiny, {ppo['steps_measured']} steps) | {ppo['samples_per_s']:.1f} | >= 1.5x TRL (not measured) |",
        "| Ray overhead share of a step | not measured (no in-process peer yet) | <= 10 % |",
    ]
    lines += [f"| MFU {k} | {100 * v:.1f} % | >= 25 % at base |" for k, v in figures["mfu"].items()]
    lines += ["", "PPO phases (mean s per step): " + ", ".join(f"{k} {v:.3f}" for k, v in ppo["phase_s"].items())]
    (ROOT / "bench" / "results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    if args.json:
        print(json.dumps(figures))
    else:
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
