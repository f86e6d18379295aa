"""Run every benchmark, write ``bench/results.md`` (machine, date, versions, tables) and, with
``--json``, print one JSON object with the headline figures.

Benchmarks: the reward service (served texts/s against the model alone, batched vs unbatched
at 32 clients), MFU per preset, and our
PPO (Ray actor split and the same loop in one process) against TRL's GRPO trainer, with the
per-phase breakdown and a torch.profiler pass. Each runs in its own process.

    python bench/run_all.py [--json] [--ppo-steps 20] [--long-steps 10]

PPO runs twice: the default setting (48 new tokens) and a longer-generation one (128 new tokens,
where sampling is a larger share of the step and the asynchronous rollout has more to hide).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
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


def versions() -> dict:
    import ray
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ray": ray.__version__,
        "transformers": transformers.__version__,
        "trl": importlib.metadata.version("trl"),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--ppo-steps", type=int, default=20)
    ap.add_argument("--long-steps", type=int, default=10, help="steps of the longer-generation PPO setting")
    args = ap.parse_args()
    t0 = time.perf_counter()
    serve = run_json("reward_serve.py")
    mfu = run_json("mfu.py")
    ppo = run_json("ppo_vs_trl.py", "--steps", str(args.ppo_steps), "--timeline", str(ROOT / "bench" / "timeline.png"))
    long = run_json(
        "ppo_vs_trl.py", "--steps", str(args.long_steps), "--max-new-tokens", str(LONG_TOKENS), "--no-profile"
    )
    figures = headline_figures(serve, mfu, ppo, t0) | long_figures(long)
    figures["wall_s"] = round(time.perf_counter() - t0, 1)
    lines = headline_lines(serve, ppo, figures) + ppo_lines(ppo, long) + serve_lines(serve)
    lines += ["", f"run_all wall time: {figures['wall_s']:.0f} s"]
    (ROOT / "bench" / "results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    if args.json:
        print(json.dumps(figures))
    else:
        print("\n".join(lines))
    return 0


def headline_figures(serve: dict, mfu: dict, ppo: dict, t0: float) -> dict:
    """The headline figures (``--json``'s object)."""
    ours, local, trl = ppo["ours_ray"], ppo["ours_in_process"], ppo["trl_grpo"]
    figures = {
        "ppo_samples_per_s_ratio_vs_trl": ppo["ppo_samples_per_s_ratio_vs_trl"],
        "ppo_best_mode": ppo["ppo_best_mode"],
        "ppo_sync_samples_per_s_ratio_vs_trl": ppo["ppo_sync_samples_per_s_ratio_vs_trl"],
        "ppo_async_samples_per_s_ratio_vs_trl": ppo["ppo_async_samples_per_s_ratio_vs_trl"],
        "ray_overhead_fraction": ppo["ray_overhead_fraction"],
        "weight_sync_fraction": ppo["weight_sync_fraction"],
        "reward_serve_batching_ratio_32": serve["ratio"],
        "reward_serve_efficiency_32": serve["efficiency_32"],
        "mfu": {k: v["mfu"] for k, v in mfu["presets"].items()},
        "group_norm_samples_per_s_ratio_vs_trl": ppo["group_norm_samples_per_s_ratio_vs_trl"],
        "async_group_norm_samples_per_s_ratio_vs_trl": ppo["async_group_norm_samples_per_s_ratio_vs_trl"],
        "async_group_norm_behaviour_samples_per_s_ratio_vs_trl": ppo[
            "async_group_norm_behaviour_samples_per_s_ratio_vs_trl"
        ],
        "ppo_samples_per_s": ours["samples_per_s"],
        "trl_samples_per_s": trl["samples_per_s"],
        "in_process_samples_per_s": local["samples_per_s"],
        "ppo_matmul_share_of_wall": (ppo["profile"] or {}).get("matmul_share_of_wall"),
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    return figures


LONG_TOKENS = 128  # the longer-generation setting: generation a larger share of the step


def long_figures(long: dict) -> dict:
    """The longer-generation setting's ratios against TRL (``long_generation_*``)."""
    return {
        "long_generation_max_new_tokens": long["setup"]["max_new_tokens"],
        "long_generation_ppo_samples_per_s_ratio_vs_trl": long["ppo_samples_per_s_ratio_vs_trl"],
        "long_generation_ppo_best_mode": long["ppo_best_mode"],
        "long_generation_ppo_sync_samples_per_s_ratio_vs_trl": long["ppo_sync_samples_per_s_ratio_vs_trl"],
        "long_generation_ppo_async_samples_per_s_ratio_vs_trl": long["ppo_async_samples_per_s_ratio_vs_trl"],
    }


def headline_lines(serve: dict, ppo: dict, figures: dict) -> list[str]:
    """The title, the machine line and the table of figures against their goals."""
    lines = [
        "# Benchmark results",
        "",
        f"{datetime.date.today()} · {platform.machine()} · {os.cpu_count()} CPUs · "
        + ", ".join(f"{k} {v}" for k, v in versions().items()),
        "",
        "| figure | value | goal |",
        "|---|---|---|",
        f"| reward service, batched / unbatched at 32 clients | {serve['ratio']:.2f}x | >= 5x |",
        f"| reward service texts/s at 32 clients ({serve['texts_per_request']} texts/request) / model alone at "
        f"batch 32 | {100 * serve['efficiency_32']:.0f} % | >= 80 % |",
        f"| PPO samples/s, ours (best mode: {figures['ppo_best_mode']}) / TRL {ppo['setup']['trl']} GRPO | "
        f"{figures['ppo_samples_per_s_ratio_vs_trl']:.2f}x | >= 1.5x |",
        f"| the same, {figures['long_generation_max_new_tokens']} new tokens (best mode: "
        f"{figures['long_generation_ppo_best_mode']}) | {figures['long_generation_ppo_samples_per_s_ratio_vs_trl']:.2f}x"
        " | >= 1.5x |",
        f"| PPO samples/s, ours Ray sync / async rollout vs TRL | {figures['ppo_sync_samples_per_s_ratio_vs_trl']:.2f}x"
        f" / {figures['ppo_async_samples_per_s_ratio_vs_trl']:.2f}x | |",
        f"| samples/s, ours critic-free (group_norm) on Ray actors / TRL GRPO | "
        f"{figures['group_norm_samples_per_s_ratio_vs_trl']:.2f}x sync / "
        f"{figures['async_group_norm_samples_per_s_ratio_vs_trl']:.2f}x async | (like for like) |",
        f"| Ray overhead share of a step (vs the same loop in one process) | "
        f"{100 * figures['ray_overhead_fraction']:.1f} % | <= 10 % |",
        f"| weight sync share of a PPO step | {100 * figures['weight_sync_fraction']:.1f} % | <= 5 % |",
    ]
    lines += [f"| MFU {k} | {100 * v:.1f} % | >= 25 % at base |" for k, v in figures["mfu"].items()]
    return lines


def systems_table(ppo: dict) -> list[str]:
    """Throughput per system of one ``ppo_vs_trl.py`` run, with its setting in a heading line."""
    setup = ppo["setup"]
    lines = [
        "",
        f"PPO vs TRL: tiny policy, {setup['prompts_per_step']} prompts x {setup['samples_per_prompt']} samples per "
        f"step, {setup['max_new_tokens']} new tokens, {setup['steps']} steps each (the first is warm-up); "
        f"best mode of ours {ppo['ppo_best_mode']}: {ppo['ppo_samples_per_s_ratio_vs_trl']:.2f}x TRL.",
        "",
        "| system | steps/s | samples/s | tokens/s |",
        "|---|---|---|---|",
    ]
    systems = (
        ("ours, Ray actors (PPO, critic)", ppo["ours_ray"]),
        ("ours, Ray actors, async rollout (max_staleness 1)", ppo["ours_ray_async"]),
        ("ours, Ray actors, group_norm (no critic)", ppo["ours_ray_group_norm"]),
        ("ours, Ray actors, group_norm, async rollout", ppo["ours_ray_async_group_norm"]),
        (
            "the same, the sampler's log-probs as the old ones (`ppo.old_logprobs=behaviour`)",
            ppo["ours_ray_async_group_norm_behaviour"],
        ),
        ("ours, one process (PPO, critic)", ppo["ours_in_process"]),
        ("ours, one process, group_norm (no critic)", ppo["ours_in_process_group_norm"]),
        ("TRL GRPOTrainer", ppo["trl_grpo"]),
    )
    for name, r in systems:
        lines.append(f"| {name} | {r['steps_per_s']:.3f} | {r['samples_per_s']:.2f} | {r['tokens_per_s']:.1f} |")
    return lines


def ppo_lines(ppo: dict, long: dict) -> list[str]:
    """Our PPO against TRL's GRPO: throughput per system (the default and the longer-generation
    setting), phases, the profiler pass."""
    ours, local = ppo["ours_ray"], ppo["ours_in_process"]
    lines = systems_table(ppo) + systems_table(long)
    phases = (
        ("Ray actors", ours),
        ("Ray actors, async rollout", ppo["ours_ray_async"]),
        ("Ray actors, group_norm, async rollout", ppo["ours_ray_async_group_norm"]),
        ("Ray actors, group_norm, async rollout, old = sampler's", ppo["ours_ray_async_group_norm_behaviour"]),
        ("one process", local),
    )
    for name, r in phases:
        lines += [
            "",
            f"PPO phases, {name} (mean s per step): " + ", ".join(f"{k} {v:.3f}" for k, v in r["phase_s"].items()),
        ]
    lines += timeline_lines(ppo)
    if ppo["profile"]:
        pr = ppo["profile"]
        lines += [
            "",
            f"torch.profiler, our loop in one process (3 steps, {pr['wall_s']:.1f} s): matmuls "
            f"{100 * pr['matmul_share_of_op_time']:.0f} % of op time, {100 * pr['matmul_share_of_wall']:.0f} % of wall; "
            "top ops by self time: " + ", ".join(f"{k} {t:.2f} s" for k, t, _ in pr["top_ops"][:6]),
        ]
    return lines


def timeline_lines(ppo: dict) -> list[str]:
    """Each role's busy share of the last steps (Ray's task events), sync against async, and the
    pictures ``ppo_vs_trl.py --timeline`` drew."""
    lines: list[str] = []
    for name, key in (("critic-free, sync", "ours_ray_group_norm"), ("critic-free, async", TIMELINE_ASYNC)):
        tl = (ppo.get(key) or {}).get("timeline")
        if not tl:
            continue
        shares = ", ".join(f"{role} {100 * f:.0f} %" for role, f in sorted(tl["busy_fraction"].items()))
        lines += [
            "",
            f"Busy share per role over the last 4 steps ({tl['window_s']:.2f} s), {name} ({key}): {shares}",
            "",
            f"![{name} timeline]({Path(tl['plot']).name})",
        ]
    return lines


TIMELINE_ASYNC = "ours_ray_async_group_norm_behaviour"


def serve_lines(serve: dict) -> list[str]:
    """The reward service: batched vs unbatched, the HTTP path and the model alone, py-spy."""
    lines: list[str] = []
    health = serve["results"]["GET /health"]["req_per_s"]
    fwd = serve["in_process_texts_per_s"]
    fwd_n = fwd[f"batch_{serve['clients']}"]
    lines += [
        "",
        f"Reward service at {serve['clients']} clients: unbatched {serve['results']['unbatched']['req_per_s']} req/s, "
        f"batched {serve['results']['batched']['req_per_s']} req/s; the HTTP path alone (GET /health) {health} req/s; "
        f"the model alone {fwd['batch_1']} texts/s at batch 1, {fwd_n} at batch "
        f"{serve['clients']}.",
    ]
    for name, prof in (serve.get("profile") or {}).items():
        kinds = ", ".join(f"{k} {100 * v:.0f} %" for k, v in prof["share"].items())
        lines += ["", f"py-spy, {name} under batched load ({prof['samples']} samples): {kinds}"]
    return lines + efficiency_lines(serve)


def efficiency_lines(serve: dict) -> list[str]:
    """The reward service against its model alone: ratio per texts-per-request, CPU per process."""
    eff = serve["efficiency"]
    alone = eff["model_alone_texts_per_s"]
    lines = [
        "",
        f"Reward service (default serve.* settings) at {serve['clients']} keep-alive clients, {eff['rounds']} rounds "
        f"interleaved with the model alone (batch {serve['clients']}, 1 thread: {alone['median']} texts/s "
        f"[{alone['min']}, {alone['max']}], {eff['model_alone_cpu_ms_per_text']} CPU ms/text):",
        "",
        "| texts/request | served texts/s | served / model alone | model CPU / service CPU | mean forward batch "
        "| CPU ms per served text |",
        "|---|---|---|---|---|---|",
    ]
    for key, e in ((k, v) for k, v in eff.items() if k.startswith("texts_per_request_")):
        t, r = e["texts_per_s"], e["ratio"]
        cpu = ", ".join(f"{k} {v}" for k, v in sorted(e["cpu_ms_per_text"].items(), key=lambda kv: -kv[1]))
        lines.append(
            f"| {key.removeprefix('texts_per_request_')} | {t['median']} [{t['min']}, {t['max']}] | "
            f"{r['median']:.2f} [{r['min']:.2f}, {r['max']:.2f}] | {e['cpu_ratio']:.2f} | {e['mean_batch']['median']} "
            f"| {cpu} |"
        )
    return lines


if __name__ == "__main__":
    sys.exit(main())
