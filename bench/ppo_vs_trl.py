"""Our PPO (actor split on Ray), the same loop in one process, and TRL's GRPO trainer, in one run.

All three get the same tiny policy, the same prompts in the same order, the same rollout batch
(prompts x samples per prompt), generation length, sampling (temperature 1, no top-k/top-p), the
same reward (our RM in-process, normalised and clipped by our ``Reward`` role) and the same
optimiser work per rollout batch (2 passes x 2 minibatches; TRL: ``num_iterations=2``,
``steps_per_generation=2``; KL to a reference model in both). PPO also trains a critic, which
GRPO has no use for: that work is ours to carry.

Figures per system: steps/s (one step = one rollout batch generated, scored and trained on),
samples/s, generated tokens/s, measured after a warm-up step; for ours the per-phase breakdown
(rollout, score, ref, train, weight sync, eval) from the run's metrics; and ours again with the
critic-free ``group_norm`` estimator (GRPO's advantage: like for like with TRL), and ours with the
asynchronous rollout (``ppo.async_rollout=true ppo.max_staleness=1``: the workers sample step t+1
while step t trains), critic-free and asynchronous, with either old log-probs (``ppo.old_logprobs``:
``recompute``, the policy's pass, or ``behaviour``, the sampler's; both compute the same forward
pass, on different cores). ``ppo_samples_per_s_ratio_vs_trl`` is the best of our PPO modes
(``OUR_RUNS``), named in ``ppo_best_mode``. The Ray overhead is ``1 - in-process step time /
actor-split step time`` (negative when the split's parallelism wins). ``--timeline PNG`` also
records which role executes what, and when, in the critic-free sync and async runs (Ray's task
events, ``bench/timeline.py``): busy shares in the JSON, Gantt charts next to PNG.

    python bench/ppo_vs_trl.py [--steps 10] [--prompts 8] [--samples 2] [--max-new-tokens 48] [--json]
        [--device cpu|cuda] [--precision fp32|bf16] [--preset tiny|small|base|medium] [--timeline PNG]

On a GPU (``--device cuda --precision bf16``) every system runs there: our roles share the one GPU,
TRL trains with ``bf16=True``; ``scripts/gpu_check.sh`` runs it so.

TRL is a bench-only dependency (``pip install -e .[bench]``), used by ``bench/trl_peer.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from timeline import busy_fractions, capture, last_window, plot, role_intervals  # noqa: E402
from trl_peer import trl_grpo  # noqa: E402

from rlhf.malloc import tune_malloc  # noqa: E402

PHASES = ("rollout", "score", "ref", "train", "weight_sync", "eval")


def build_models(tmp: Path, cfg) -> tuple[Path, Path]:
    """A quickly trained backdoored policy and reward model (the same for every system)."""
    from jobs.sft import quick_sft
    from reward.train import quick_reward_model

    policy = quick_sft(cfg, tmp / "policy", steps=40)
    rm = Path(quick_reward_model(tmp / "rm", n_pairs=300, steps=10)["model_dir"])
    return policy, rm


def ours(cfg, policy: Path, rm: Path, run: Path, in_process: bool, timeline: Path | None = None) -> dict:
    """One run of our PPO; with ``timeline`` (Ray modes) also each role's busy share of the last
    steps, from Ray's task events, and their Gantt chart at that path (``bench/timeline.py``)."""
    from jobs.ppo import run_ppo
    from rlhf.metrics import read_metrics

    t0 = time.perf_counter()
    events = None
    if timeline is not None and not in_process:
        events = capture(cfg, policy, rm, run)
    else:
        run_ppo(cfg, policy, run, reward_dir=rm, in_process=in_process)
    wall = time.perf_counter() - t0
    recs = [r for r in read_metrics(run / "metrics.jsonl") if "reward/mean" in r][1:]  # step 1: warm-up
    step_s = sum(r["timing/step"] for r in recs) / len(recs)
    samples = cfg.ppo.prompts_per_step * cfg.ppo.samples_per_prompt
    tokens = sum(r["response/length"] for r in recs) / len(recs) * samples
    return {
        "steps_measured": len(recs),
        "step_s": step_s,
        "steps_per_s": 1 / step_s,
        "samples_per_s": samples / step_s,
        "tokens_per_s": tokens / step_s,
        "phase_s": {p: sum(r[f"timing/{p}"] for r in recs) / len(recs) for p in PHASES},
        "reward_first_last": [recs[0]["reward/mean"], recs[-1]["reward/mean"]],
        "wall_s": wall,
        "timeline": role_timeline(events, 4 * step_s, timeline, cfg) if events else None,
    }


def role_timeline(events: list[dict], seconds: float, path: Path, cfg) -> dict:
    """Busy share per role over the last ``seconds`` of the run, and the picture of that window."""
    intervals = role_intervals(events)
    window = last_window(intervals, seconds)
    p = cfg.ppo
    mode = "asynchronous" if p.async_rollout else "synchronous"
    plot(intervals, window, path, f"{p.advantage_estimator}, {mode} rollout: the last 4 steps, one bar per call")
    return {"window_s": seconds, "busy_fraction": busy_fractions(intervals, *window), "plot": str(path)}


MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::_scaled_dot_product_flash_attention_for_cpu")


def profile_in_process(cfg, policy: Path, rm: Path, run: Path, steps: int = 3) -> dict:
    """torch.profiler over our in-process loop (every role in one process, so one profile covers
    every phase): the ops that take the time, and the share spent in matmuls."""
    from torch.profiler import ProfilerActivity, profile

    from jobs.ppo import run_ppo

    short = cfg.model_copy(update={"ppo": cfg.ppo.model_copy(update={"steps": steps})})
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run_ppo(short, policy, run, reward_dir=rm, in_process=True)
    wall = time.perf_counter() - t0
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:10]
    matmul = sum(e.self_cpu_time_total for e in events if e.key in MATMUL_OPS)
    return {
        "wall_s": wall,
        "op_time_s": total / 1e6,
        "matmul_share_of_op_time": matmul / total,
        "matmul_share_of_wall": matmul / 1e6 / wall,
        "top_ops": [[e.key, round(e.self_cpu_time_total / 1e6, 3), e.count] for e in top],
    }


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10, help="rollout batches per system (the first is warm-up)")
    ap.add_argument("--prompts", type=int, default=8, help="prompts per step")
    ap.add_argument("--samples", type=int, default=2, help="samples per prompt (GRPO needs >= 2)")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    ap.add_argument(
        "--rollout-workers", type=int, default=1, help="RolloutWorker actors (one generates the batch like TRL)"
    )
    ap.add_argument("--no-profile", action="store_true", help="skip the torch.profiler pass over our loop")
    ap.add_argument(
        "--timeline",
        type=Path,
        help="PNG: per-role timelines of the critic-free sync and async runs (PNG's stem + _sync / _async)",
    )
    ap.add_argument("--without-trl", action="store_true", help="our systems only (no TRL installed: ratios null)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where every system runs")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--preset", choices=("tiny", "small", "base", "medium"), default="tiny", help="policy shape")
    args = ap.parse_args()
    if args.steps < 2 or args.samples < 2 or (args.prompts * args.samples) % 2:
        raise SystemExit("need --steps >= 2, --samples >= 2 and an even rollout batch")
    return args


def bench_overrides(args: argparse.Namespace) -> list[str]:
    """The config every system runs under (tiny data, the bench's batch, lengths and sampling)."""
    per_step = args.prompts * args.samples
    overrides = ["data.n_train=600", "data.n_eval=60", "model.vocab_size=700", "serve.port=0"]
    overrides += [
        f"model.preset={args.preset}",
        f"resources.device={args.device}",
        f"resources.precision={args.precision}",
    ]
    overrides += [
        f"ppo.steps={args.steps}",
        f"ppo.prompts_per_step={args.prompts}",
        f"ppo.samples_per_prompt={args.samples}",
        f"ppo.max_new_tokens={args.max_new_tokens}",
        f"ppo.minibatch_size={per_step // 2}",
        "ppo.epochs=2",
        "ppo.top_p=1.0",
        "ppo.temperature=1.0",
        "ppo.evaluator=false",
        "ppo.checkpoint_every=0",
        f"ppo.rollout_workers={args.rollout_workers}",
    ]
    return overrides


GROUP_NORM = ("ppo.advantage_estimator=group_norm",)
ASYNC = ("ppo.async_rollout=true", "ppo.max_staleness=1")
# (result key, what it is, its overrides, in one process): every run of ours, in the order they run
OUR_RUNS = (
    ("ours_ray", "actor split on Ray", (), False),
    ("ours_ray_async", "actor split, asynchronous rollout (max_staleness 1)", ASYNC, False),
    ("ours_ray_group_norm", "actor split, critic-free (group_norm: GRPO's advantage)", GROUP_NORM, False),
    ("ours_ray_async_group_norm", "actor split, critic-free and asynchronous rollout", GROUP_NORM + ASYNC, False),
    (
        "ours_ray_async_group_norm_behaviour",
        "actor split, critic-free, asynchronous, the sampler's log-probs as the old ones",
        (*GROUP_NORM, *ASYNC, "ppo.old_logprobs=behaviour"),
        False,
    ),
    ("ours_in_process", "the same loop in one process", (), True),
    ("ours_in_process_group_norm", "one process, critic-free (group_norm)", GROUP_NORM, True),
)


TIMELINE_RUNS = {"ours_ray_group_norm": "sync", "ours_ray_async_group_norm_behaviour": "async"}


def timeline_path(png: Path | None, run: str) -> Path | None:
    """Where ``run``'s timeline picture goes (None: no timeline for it)."""
    if png is None or run not in TIMELINE_RUNS:
        return None
    return png.with_name(f"{png.stem}_{TIMELINE_RUNS[run]}{png.suffix}")


def run_systems(args: argparse.Namespace, overrides: list[str], trl_version: str, say) -> dict:
    """Every system on the same tiny policy and reward model; returns their figures by name."""
    from rlhf.config.core import build_config

    cfg = build_config({}, overrides)
    per_step = args.prompts * args.samples
    runs: dict = {"profile": None}
    with tempfile.TemporaryDirectory(prefix="bench-ppo-trl-") as tmp_name:
        tmp = Path(tmp_name)
        say("[bench] building the tiny policy and reward model")
        policy, rm = build_models(tmp, cfg)
        threads = __import__("torch").get_num_threads()
        for name, what, extra, in_process in OUR_RUNS:
            say(f"[bench] ours, {what} ({args.steps} steps of {per_step} samples)")
            mode_cfg = build_config({}, [*overrides, *extra])
            picture = timeline_path(args.timeline, name)
            runs[name] = ours(mode_cfg, policy, rm, tmp / name, in_process=in_process, timeline=picture)
        __import__("torch").set_num_threads(threads)
        runs["trl_grpo"] = None
        if trl_version:
            say(f"[bench] TRL {trl_version} GRPOTrainer")
            runs["trl_grpo"] = trl_grpo(cfg, policy, rm, tmp / "trl")
        if not args.no_profile:
            say("[bench] torch.profiler over 3 steps of our in-process loop")
            runs["profile"] = profile_in_process(cfg, policy, rm, tmp / "profile")
    return runs


def main() -> int:
    args = parse_args()
    tune_malloc()  # the allocator setting our processes run with, for every system measured here
    trl_version = None
    if not args.without_trl:
        try:
            import trl
        except ImportError:
            raise SystemExit("TRL is not installed: pip install -e '.[bench]' (or pass --without-trl)") from None
        trl_version = trl.__version__
    overrides = bench_overrides(args)
    say = (lambda *a: print(*a, file=sys.stderr, flush=True)) if args.json else print
    # with --json, stdout carries the one JSON object only (TRL prints its logs there)
    quiet = contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()
    with quiet:
        runs = run_systems(args, overrides, trl_version, say)
    ray_run, local_run, ray_grpo, trl_run = (
        runs["ours_ray"],
        runs["ours_in_process"],
        runs["ours_ray_group_norm"],
        runs["trl_grpo"],
    )
    result = {
        "setup": {
            "cpus": os.cpu_count(),
            "steps": args.steps,
            "prompts_per_step": args.prompts,
            "samples_per_prompt": args.samples,
            "max_new_tokens": args.max_new_tokens,
            "rollout_workers": args.rollout_workers,
            "device": args.device,
            "precision": args.precision,
            "preset": args.preset,
            "trl": trl_version,
        },
        "ours_ray": ray_run,
        "ours_ray_async": runs["ours_ray_async"],
        "ours_in_process": local_run,
        "ours_ray_group_norm": ray_grpo,
        "ours_ray_async_group_norm": runs["ours_ray_async_group_norm"],
        "ours_ray_async_group_norm_behaviour": runs["ours_ray_async_group_norm_behaviour"],
        "ours_in_process_group_norm": runs["ours_in_process_group_norm"],
        "trl_grpo": trl_run,
        **best_mode(runs, trl_run),
        "ppo_sync_samples_per_s_ratio_vs_trl": ratio(ray_run, trl_run),
        "ppo_async_samples_per_s_ratio_vs_trl": ratio(runs["ours_ray_async"], trl_run),
        "in_process_samples_per_s_ratio_vs_trl": ratio(local_run, trl_run),
        "group_norm_samples_per_s_ratio_vs_trl": ratio(ray_grpo, trl_run),
        "async_group_norm_samples_per_s_ratio_vs_trl": ratio(runs["ours_ray_async_group_norm"], trl_run),
        "async_group_norm_behaviour_samples_per_s_ratio_vs_trl": ratio(
            runs["ours_ray_async_group_norm_behaviour"], trl_run
        ),
        "ray_overhead_fraction": 1 - local_run["step_s"] / ray_run["step_s"],
        "weight_sync_fraction": ray_run["phase_s"]["weight_sync"] / ray_run["step_s"],
        "profile": runs["profile"],
    }
    if args.json:
        print(json.dumps(result))
    else:
        print_result(result)
    return 0


# every mode of ours that trains the same policy on the same rollouts; the critic-free ones use
# group_norm, GRPO's own advantage (like for like with TRL's GRPO)
PPO_MODES = {
    "ray": "ours_ray",
    "ray_async": "ours_ray_async",
    "in_process": "ours_in_process",
    "ray_group_norm": "ours_ray_group_norm",
    "ray_async_group_norm": "ours_ray_async_group_norm",
    "ray_async_group_norm_behaviour": "ours_ray_async_group_norm_behaviour",
    "in_process_group_norm": "ours_in_process_group_norm",
}


def best_mode(runs: dict, trl_run: dict | None) -> dict:
    """``ppo_samples_per_s_ratio_vs_trl``: the best of our PPO modes, named in ``ppo_best_mode``."""
    mode = max(PPO_MODES, key=lambda m: runs[PPO_MODES[m]]["samples_per_s"])
    return {"ppo_samples_per_s_ratio_vs_trl": ratio(runs[PPO_MODES[mode]], trl_run), "ppo_best_mode": mode}


def ratio(ours_run: dict, trl_run: dict | None) -> float | None:
    return ours_run["samples_per_s"] / trl_run["samples_per_s"] if trl_run else None


def print_result(result: dict) -> None:
    """The human-readable table: throughput per system, ratios, phases, the profiler pass."""
    print(f"{'system':<22}{'steps/s':>9}{'samples/s':>11}{'tokens/s':>10}")
    for name, r in (
        ("ours (Ray actors)", result["ours_ray"]),
        ("ours, async rollout", result["ours_ray_async"]),
        ("ours, no critic", result["ours_ray_group_norm"]),
        ("ours, no critic, async", result["ours_ray_async_group_norm"]),
        ("  the same, old = sampler", result["ours_ray_async_group_norm_behaviour"]),
        ("ours, no critic, 1 proc", result["ours_in_process_group_norm"]),
        ("ours (one process)", result["ours_in_process"]),
        ("TRL GRPO", result["trl_grpo"]),
    ):
        if r is None:
            continue
        print(f"{name:<22}{r['steps_per_s']:>9.3f}{r['samples_per_s']:>11.2f}{r['tokens_per_s']:>10.1f}")
    if result["trl_grpo"]:
        print(
            f"ours / TRL samples/s: {result['ppo_samples_per_s_ratio_vs_trl']:.2f}x (best mode: "
            f"{result['ppo_best_mode']}; sync {result['ppo_sync_samples_per_s_ratio_vs_trl']:.2f}x, "
            f"async {result['ppo_async_samples_per_s_ratio_vs_trl']:.2f}x)"
        )
    print(f"Ray overhead: {100 * result['ray_overhead_fraction']:.1f} % of a step")
    print("phases, Ray (s/step): " + ", ".join(f"{k} {v:.3f}" for k, v in result["ours_ray"]["phase_s"].items()))
    print("phases, Ray async:    " + ", ".join(f"{k} {v:.3f}" for k, v in result["ours_ray_async"]["phase_s"].items()))
    print("phases, one process:  " + ", ".join(f"{k} {v:.3f}" for k, v in result["ours_in_process"]["phase_s"].items()))
    if result["profile"]:
        pr = result["profile"]
        print(
            f"profile (one process, 3 steps, {pr['wall_s']:.1f} s): matmuls are "
            f"{100 * pr['matmul_share_of_op_time']:.0f} % of op time, {100 * pr['matmul_share_of_wall']:.0f} % of wall"
        )
        for name, secs, count in pr["top_ops"]:
            print(f"  {name:<48}{secs:>8.3f} s{count:>9} calls")


if __name__ == "__main__":
    sys.exit(main())
