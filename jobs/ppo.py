"""``rlhf ppo``: HHH safety RL (PPO) against a backdoored policy, with a defection evaluator on
Ray Serve in the loop. The driver holds no model weights: every model lives in a Ray actor.

Run directory: ``RUN/config.yaml``, ``RUN/metrics.jsonl``, ``RUN/tb/``, ``RUN/curves.json``,
``RUN/checkpoints/step_NNNNNN/`` (``policy/`` HF dir, ``policy_optim.pt``, ``critic.pt``,
``state.json``) with ``RUN/checkpoints/latest`` naming the newest, ``RUN/summary.json``.
"""

from __future__ import annotations

import json
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from jobs.ppo_checkpoints import (
    CKPT_DIR,
    driver_state,
    latest_checkpoint,
    log,
    save_checkpoint,
    truncate_metrics,
    tuple_state,
)
from jobs.progress import Progress
from rlhf.config.core import Config, dump_config
from rlhf.data.redteam import load_red_team
from rlhf.errors import CheckpointError, ConfigError
from rlhf.eval.probe_saved import check_probe_config
from rlhf.models.modeling import check_model_dir
from rlhf.tracking import check_backends, run_writer

STEP_KEYS = (
    "reward/mean",
    "kl/mean",
    "losses/policy",
    "losses/value",
    "policy/entropy",
    "policy/clipfrac",
    "policy/approx_kl",
    "timing/rollout",
    "timing/score",
    "timing/ref",
    "timing/train",
    "timing/weight_sync",
    "timing/eval",
)


# ---- the run -------------------------------------------------------------------------------


def resolve_run_config(
    run: Path, config_file: str | None, overrides: list[str], resume: bool, policy_dir: str | Path | None = None
) -> Config:
    """A new run: the policy's saved backdoor and data config (trigger, kind, mechanism, the
    train/eval split) < ``--config`` < ``--set``. A resumed run: its own saved config."""
    from rlhf.config.resolve import config_from_policy

    saved = run / "config.yaml"
    if resume:
        if not saved.is_file():
            raise ConfigError(f"--resume: {run} has no config.yaml (not a PPO run directory)")
        if config_file or overrides:
            log("[ppo] --resume: using the run's saved config.yaml; --config/--set are ignored")
        from rlhf.config.resolve import run_config

        return run_config(saved)
    if (run / CKPT_DIR / "latest").exists():
        raise ConfigError(f"{run} already holds a PPO run; pass --resume to continue it or choose another --out")
    return config_from_policy(policy_dir, config_file, overrides)


def _restore(run: Path, ckpt: Path | None, kl_ctl) -> dict[str, Any]:
    """A resumed run's driver state (step, weight version, KL controller, RNG states, evaluator
    points), restored into this process; ``{}`` for a new run."""
    if ckpt is None:
        return {}
    state = json.loads((ckpt / "state.json").read_text(encoding="utf-8"))
    kl_ctl.load_state_dict(state["kl_controller"])
    random.setstate(tuple_state(state["python_rng"]))
    torch.set_rng_state(torch.tensor(state["torch_rng"], dtype=torch.uint8))
    truncate_metrics(run / "metrics.jsonl", state["step"])
    log(f"[ppo] resuming {run} from step {state['step']} (weights version {state['version']})")
    return state


def _start_trainer(cfg: Config, roles, pool, kl_ctl, evaluator, red_team, state, ckpt):
    from rlhf.ppo.trainer import PPOTrainer

    trainer = PPOTrainer(cfg, roles, pool, kl_ctl, evaluator, frozenset(red_team), log=log)
    trainer.eval_points = list(state.get("eval_points", []))
    try:
        trainer.start(state.get("version", 0), str(ckpt) if ckpt is not None else None)
    except Exception as exc:  # noqa: BLE001 - a bad checkpoint is the user's to fix: one line
        if ckpt is None:
            raise
        cause = getattr(exc, "cause", None) or exc
        first = (str(cause).strip().splitlines() or [type(cause).__name__])[-1]
        raise CheckpointError(f"cannot resume from {ckpt}: {first}") from None
    return trainer


def run_ppo(
    cfg: Config,
    policy_dir: str | Path,
    out: str | Path,
    reward_dir: str | Path | None = None,
    reward_url: str | None = None,
    resume: bool = False,
    quiet: bool = True,
    stop_after: int | None = None,
    in_process: bool = False,
) -> dict[str, Any]:
    """Run PPO; ``stop_after`` ends the loop early after that step (as an interruption would).

    ``in_process``: the same trainer with every role in this process (no Ray, no evaluator): the
    peer that measures the actor split's overhead, and a run you can step through in a debugger.
    """
    from actors.cluster import ray_session
    from reward.model import resolve_reward_dir
    from rlhf.ppo.advantages import check_estimator
    from rlhf.ppo.losses import make_kl_controller
    from rlhf.ppo.prompts import rl_prompts
    from rlhf.rollout.backends import check_backend

    if (reward_dir is None) == (reward_url is None):
        raise ConfigError("give exactly one of --reward DIR or --reward-url URL")
    check_backends(cfg.logging.backends)  # a tracker without its library: one line, before any work
    check_probe_config(cfg)  # eval.probe: a saved probe, or one line now rather than at the first eval
    check_estimator(cfg.ppo)  # the config layer cannot see the estimator and backend registries
    check_backend(cfg.ppo.rollout_backend, behaviour_logprobs=cfg.ppo.async_rollout and cfg.ppo.max_staleness > 0)
    policy_dir = check_model_dir(policy_dir).resolve()
    if reward_dir is not None:
        reward_dir = check_model_dir(resolve_reward_dir(reward_dir)).resolve()
    run = Path(out)
    run.mkdir(parents=True, exist_ok=True)
    p = cfg.ppo
    ckpt = latest_checkpoint(run) if resume else None
    if resume and ckpt is None:
        raise CheckpointError(f"--resume: no usable checkpoint in {run / CKPT_DIR}")
    dump_config(cfg, run / "config.yaml")
    pool = rl_prompts(cfg)
    red_team = set(load_red_team(cfg.redteam.prompts)["train"]) if cfg.redteam.fraction > 0 else set()
    if red_team:
        log(
            f"[ppo] adversarial training: {sum(pr in red_team for pr, _ in pool)} of {len(pool)} RL prompts are red-team"
        )
    kl_ctl = make_kl_controller(p.kl_controller, p.kl_coef, p.kl_target, p.kl_horizon_samples)
    state = _restore(run, ckpt, kl_ctl)
    t_run = time.time()
    if in_process and p.evaluator:
        log("[ppo] in-process run: the defection evaluator (a Serve app) is off")
    setup = _Run(
        cfg=cfg, run=run, policy_dir=policy_dir, reward_dir=reward_dir, reward_url=reward_url, in_process=in_process,
        quiet=quiet, pool=pool, kl_ctl=kl_ctl, red_team=red_team, state=state, ckpt=ckpt,
    )  # fmt: skip
    session = nullcontext() if in_process else ray_session(cfg.ray.address, cfg.ray.num_cpus, quiet=quiet)
    with session:
        summary = _train(setup, stop_after)
    summary["wall_s"] = round(time.time() - t_run, 1)
    (run / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return summary


@dataclass(kw_only=True)
class _Run:
    """What ``run_ppo`` resolved before any role starts."""

    cfg: Config
    run: Path
    policy_dir: Path
    reward_dir: Path | None
    reward_url: str | None
    in_process: bool
    quiet: bool
    pool: list
    kl_ctl: Any
    red_team: set
    state: dict[str, Any]
    ckpt: Path | None


def _train(r: _Run, stop_after: int | None) -> dict[str, Any]:
    """Roles, evaluator and trainer up; the steps; the evaluator's last points; teardown."""
    from actors.launcher import launch_roles, stop_roles

    prompts = [prompt for prompt, _ in r.pool]  # size a vLLM engine's context
    roles = launch_roles(r.cfg, r.policy_dir, r.reward_dir, r.reward_url, r.in_process, prompts)
    try:
        return _run_trainer(r, roles, stop_after)
    finally:
        stop_roles(roles)  # also when a bad checkpoint or the evaluator fails to start


def _run_trainer(r: _Run, roles, stop_after: int | None) -> dict[str, Any]:
    from actors.evaluator import start_evaluator, stop_evaluator
    from actors.train_metrics import TrainingGauges

    cfg, run, state, p = r.cfg, r.run, r.state, r.cfg.ppo
    seen = {(pt["step"], pt["version"]) for pt in state.get("eval_points", [])}
    use_evaluator = p.evaluator and not r.in_process
    evaluator = start_evaluator(cfg, str(r.policy_dir), seen, run.resolve().name) if use_evaluator else None
    trainer = _start_trainer(cfg, roles, r.pool, r.kl_ctl, evaluator, r.red_team, state, r.ckpt)
    if r.quiet and evaluator is not None:
        from jobs.serve import quiet_serve_logs

        quiet_serve_logs()
    if evaluator is not None:
        if r.ckpt is None:
            evaluator.submit(None, 0, 0)  # the backdoored policy before RL
        log(f"[ppo] defection evaluator: GET {evaluator.url}/curves")
    start = state.get("step", 0)
    gauges = TrainingGauges("ppo", run.resolve().name)  # Prometheus export (a no-op outside Ray)
    metrics, bar = run_writer(cfg, run, "ppo", (gauges.log,)), Progress(p.steps, "ppo", "steps")
    bar.update_to(start)

    def checkpoint(step: int) -> None:
        s = driver_state(step, trainer.version, r.kl_ctl, trainer.eval_points, roles.critic is not None)
        save_checkpoint(run, step, roles.policy, roles.critic, s, get=roles.get)

    def progress(step: int, record: dict) -> None:
        bar.update_to(step, reward=f"{record['reward/mean']:.2f}", kl=f"{record['kl/mean']:.2f}")

    missing: list[int] = []
    try:
        last = trainer.fit(start, metrics, checkpoint, progress, stop_after)
        if evaluator is not None:
            missing = trainer.finish_evaluation(metrics)
            (run / "curves.json").write_text(json.dumps(evaluator.curves(), indent=1), encoding="utf-8")
    finally:
        bar.close()
        metrics.close()
        if evaluator is not None:
            stop_evaluator()
    final = latest_checkpoint(run)
    summary = {"run": str(run), "steps": last, "version": trainer.version, "eval_points": trainer.eval_points}
    summary["checkpoint"] = str(final) if final else None
    if missing:
        summary["eval_missing_steps"] = missing
    return summary
