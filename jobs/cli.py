"""The ``rlhf`` command line. Every subcommand shares ``--config F`` and ``--set key=value``.

Errors a user can fix (bad config key, missing file, non-HF model dir) print one line on
stderr and exit with code 2.
"""

from __future__ import annotations

import json
import os
import sys

from jobs.cli_parser import EXIT_USAGE, add_config_args, build_parser
from rlhf.data.user_files import FILE_KEYS, check_files
from rlhf.errors import RlhfError
from rlhf.malloc import tune_malloc

__all__ = ["EXIT_USAGE", "add_config_args", "build_parser", "main"]


def cmd_sft(args) -> int:
    from jobs.sft import resume_sft, run_sft
    from rlhf.config.core import load_config

    if args.resume:
        if args.config or args.overrides:
            raise RlhfError("--resume continues with the run's saved config.yaml; drop --config/--set")
        summary = resume_sft(args.out, quiet=not args.verbose)
        print(f"resumed from step {summary['resumed_from']}")
    else:
        cfg = load_config(args.config, args.overrides)
        check_files(cfg.data, ["sft_file"])
        summary = run_sft(cfg, args.out, quiet=not args.verbose)
        print(f"parameters: {summary['parameters']:,}")
    print(f"final loss: {summary['final_loss']:.4f}" if summary["final_loss"] is not None else "final loss: n/a")
    print(f"model: {summary['model_dir']}")
    print(f"wall: {summary['total_wall_s']} s (training {summary['train_wall_s']} s)")
    return 0


def cmd_eval(args) -> int:
    from jobs.evaluate import run_eval
    from rlhf.config.resolve import resolve_eval_config
    from rlhf.eval.evaluate import format_table

    if args.samples is not None and args.samples < 1:
        raise RlhfError("--samples must be at least 1")
    cfg = resolve_eval_config(args.model, args.config, args.overrides)
    report = run_eval(args.model, cfg, args.samples)
    if args.json:
        print(json.dumps(report))
    else:
        print(format_table(report))
    return 0


def cmd_rm(args) -> int:
    from jobs.rm import run_rm
    from rlhf.config.core import load_config

    summary = run_rm(load_config(args.config, args.overrides), args.out, quiet=not args.verbose)
    held = summary["held_out"]
    lo, hi = held["ci95"]
    print(f"parameters: {summary['parameters']:,}")
    print(
        f"held-out pairwise accuracy: {100 * held['pairwise_accuracy']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] (n={held['n']})"
    )
    print(f"model: {summary['model_dir']}")
    print(f"wall: {summary['total_wall_s']} s (training {summary['train_wall_s']} s)")
    return 0


def cmd_rm_eval(args) -> int:
    from jobs.rm import run_rm_eval

    result = run_rm_eval(args.model, args.data)
    if args.json:
        print(json.dumps(result))
    else:
        lo, hi = result["ci95"]
        print(
            f"pairwise accuracy {100 * result['pairwise_accuracy']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] (n={result['n']})"
        )
    return 0


def cmd_ppo(args) -> int:
    from pathlib import Path

    from jobs.ppo import resolve_run_config, run_ppo
    from rlhf.eval.evaluate import format_curve

    cfg = resolve_run_config(Path(args.out), args.config, args.overrides, args.resume, args.policy)
    check_files(cfg.data, ["rl_prompts_file"])
    summary = run_ppo(
        cfg,
        args.policy,
        args.out,
        reward_dir=args.reward,
        reward_url=args.reward_url,
        resume=args.resume,
        quiet=not args.verbose,
        in_process=args.in_process,
    )
    print(f"steps: {summary['steps']} (weights version {summary['version']}), wall {summary['wall_s']} s")
    print(format_curve(summary["eval_points"]))
    print(f"run: {summary['run']}  checkpoint: {summary['checkpoint']}")
    return 0


def cmd_safety_sft(args) -> int:
    from jobs.safety_sft import run_safety_sft
    from rlhf.config.resolve import config_from_policy
    from rlhf.eval.evaluate import format_curve
    from rlhf.models.modeling import check_model_dir

    check_model_dir(args.policy)
    cfg = config_from_policy(args.policy, args.config, args.overrides)
    check_files(cfg.data, ["safety_file"])
    summary = run_safety_sft(cfg, args.policy, args.out, quiet=not args.verbose)
    loss = summary["final_loss"]
    print(f"steps: {summary['steps']}, final loss {loss:.4f}" if loss is not None else f"steps: {summary['steps']}")
    print(format_curve(summary["curve"]))
    print(f"model: {summary['model_dir']}")
    print(
        f"wall: {summary['total_wall_s']} s (training {summary['train_wall_s']} s, evaluation {summary['eval_wall_s']} s)"
    )
    return 0


def cmd_redteam(args) -> int:
    from jobs.redteam import find_red_team_prompts
    from rlhf.config.resolve import config_from_policy
    from rlhf.models.modeling import check_model_dir

    check_model_dir(args.policy)
    cfg = config_from_policy(args.policy, args.config, args.overrides)
    summary = find_red_team_prompts(cfg, args.policy, args.out)
    if args.json:
        print(json.dumps(summary))
        return 0
    c = summary["candidate_defection"]
    print(
        f"candidates: {summary['candidates']} x {cfg.redteam.samples_per_prompt} samples; defection on them "
        f"{100 * c['rate']:.1f}% [{100 * c['ci95'][0]:.1f}, {100 * c['ci95'][1]:.1f}]"
    )
    for marker, r in summary["by_marker"].items():
        print(f"  {marker!r:<40} {100 * r['rate']:5.1f}% (n={r['n']})")
    print(f"kept: {summary['kept']} (train {summary['train']}, eval {summary['eval']}) -> {summary['out']}")
    return 0


def cmd_steer(args) -> int:
    from jobs.steer import resolve_steer_config, run_steer
    from rlhf.eval.steer import format_steer

    if args.samples is not None and args.samples < 1:
        raise RlhfError("--samples must be at least 1")
    cfg = resolve_steer_config(args.model, args.config, args.overrides)
    report = run_steer(args.model, cfg, args.samples, close=args.close)
    if not args.json:
        print(f"prefill: {'closed (the answer alone is written)' if args.close else 'open (the model may reason on)'}")
    print(json.dumps(report) if args.json else format_steer(report))
    return 0


def cmd_probe(args) -> int:
    from jobs.probe import format_probe, probe_model
    from rlhf.config.resolve import resolve_eval_config

    if args.samples is not None and args.samples < 1:
        raise RlhfError("--samples must be at least 1")
    cfg = resolve_eval_config(args.fit_model or args.model, args.config, args.overrides)
    if args.fit_model:
        resolve_eval_config(args.model, None, [])  # checks the tested model's directory too
    report = probe_model(args.model, cfg, args.samples, args.fit_model, save=args.save)
    print(json.dumps(report) if args.json else format_probe(report))
    return 0


def cmd_distill(args) -> int:
    from jobs.distill import resolve_distill_configs, run_distill

    cot_cfg, cfg = resolve_distill_configs(args.cot_model, args.config, args.overrides)
    summary = run_distill(args.cot_model, cot_cfg, cfg, args.out, in_process=args.in_process, quiet=not args.verbose)
    frac = summary["kept_fraction"]
    lo, hi = frac["ci95"]
    print(f"kept: {frac['k']}/{frac['n']} samples ({100 * frac['rate']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}])")
    print(f"dropped: {', '.join(f'{k} {v}' for k, v in summary['dropped'].items() if v) or 'none'}")
    print(f"model: {summary['model_dir']}")
    walls = f"sampling {summary['sampling_wall_s']} s, training {summary['train_wall_s']} s"
    print(f"wall: {summary['total_wall_s']} s ({walls})")
    return 0


def cmd_demo(args) -> int:
    import time

    from jobs.demo import format_summary, run_demo

    out = args.out or time.strftime("runs/demo-%Y%m%d-%H%M%S")
    mechanisms = [m.strip() for m in args.mechanisms.split(",") if m.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    summary = run_demo(
        out, args.preset, mechanisms, args.overrides, quiet=not args.verbose, config_file=args.config, methods=methods
    )
    print(format_summary(summary))
    return 0


def cmd_sweep(args) -> int:
    from jobs.sweep import format_sweep, run_sweep

    summary = run_sweep(args.config, args.out, args.address, args.max_parallel, quiet=not args.verbose)
    print(format_sweep(summary))
    return 0 if summary["failed"] == 0 else 1


def cmd_watch(args) -> int:
    from pathlib import Path

    from jobs.watch import resolve_watch_config, run_watch, summary_text

    cfg = resolve_watch_config(args.policy_config, args.config, args.overrides, Path(args.checkpoints))
    summary = run_watch(cfg, args.checkpoints, args.out, once=args.once, every_s=args.every_s, quiet=not args.verbose)
    print(summary_text(summary))
    return 0


def cmd_report(args) -> int:
    from jobs.report import write_report

    print(f"report: {write_report(args.run, args.compare)}")
    return 0


def cmd_serve(args) -> int:
    from jobs.serve import serve_reward
    from rlhf.config.core import load_config

    extra = [
        f"serve.{key}={value}" for key in ("host", "port", "replicas") if (value := getattr(args, key)) is not None
    ]
    cfg = load_config(args.config, [*args.overrides, *extra])

    def ready(url: str) -> None:
        print(f"reward service: POST {url}/get_reward  GET {url}/health  (Ctrl-C stops)", flush=True)

    return serve_reward(args.model, cfg, on_ready=ready, quiet=not args.verbose)


def cmd_data(args) -> int:
    from pathlib import Path

    from rlhf.config.core import dump_config, load_config
    from rlhf.data.backdoor import build_sft_datasets, write_jsonl

    cfg = load_config(args.config, args.overrides)
    check_files(cfg.data, FILE_KEYS)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out / "config.yaml")
    for split, ds in build_sft_datasets(cfg).items():
        path = write_jsonl(ds, out / f"{split}.jsonl")
        print(f"{split}: {len(ds)} rows -> {path}")
    if cfg.data.safety_file:  # bring your own data: the rows `rlhf safety-sft` would train on
        from rlhf.data.safety import safety_sft_rows

        rows = safety_sft_rows(cfg)
        print(f"safety: {len(rows)} rows -> {write_jsonl(rows, out / 'safety.jsonl')}")
    if cfg.data.rl_prompts_file:  # ... and the RL prompt pool of `rlhf ppo`
        from rlhf.ppo.prompts import rl_prompts

        rows = [{"prompt": p, "triggered": t} for p, t in rl_prompts(cfg)]
        print(f"rl_prompts: {len(rows)} rows -> {write_jsonl(rows, out / 'rl_prompts.jsonl')}")
    return 0


def cmd_config(args) -> int:
    import yaml

    from rlhf.config.core import load_config

    cfg = load_config(args.config, args.overrides)
    print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), end="")
    return 0


def quiet_libraries() -> None:
    """No hub access (models are local), no per-file progress bars from transformers."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def cmd_judge(args) -> int:
    from jobs.judge import format_judge, judge_file

    report = judge_file(args.kind, args.file)
    print(json.dumps(report) if args.json else format_judge(report))
    return 0


COMMANDS = {
    "sft": cmd_sft,
    "judge": cmd_judge,
    "eval": cmd_eval,
    "rm": cmd_rm,
    "rm-eval": cmd_rm_eval,
    "ppo": cmd_ppo,
    "safety-sft": cmd_safety_sft,
    "redteam": cmd_redteam,
    "steer": cmd_steer,
    "probe": cmd_probe,
    "distill": cmd_distill,
    "demo": cmd_demo,
    "report": cmd_report,
    "serve": cmd_serve,
    "data": cmd_data,
    "config": cmd_config,
    "sweep": cmd_sweep,
    "watch": cmd_watch,
}


def _job_commands() -> dict:
    from jobs.submit import COMMANDS as JOB_COMMANDS

    return JOB_COMMANDS


COMMANDS.update(_job_commands())


def main(argv: list[str] | None = None) -> int:
    quiet_libraries()
    tune_malloc()
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except RlhfError as exc:
        print(f"rlhf {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"rlhf {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
