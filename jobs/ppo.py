"""``rlhf ppo``: HHH safety RL (PPO) against a backdoored policy, with a defection evaluator on
Ray Serve in the loop. The driver holds no model weights: every model lives in a Ray actor.

Run directory: ``RUN/config.yaml``, ``RUN/metrics.jsonl``, ``RUN/tb/``, ``RUN/curves.json``,
``RUN/checkpoints/step_NNNNNN/`` (``policy/`` HF dir, ``policy_optim.pt``, ``critic.pt``,
``state.json``) with ``RUN/checkpoints/latest`` naming the newest, ``RUN/summary.json``.
"""

from __future__ import annotations

import json
import os
import random
import time
from contextlib import nullcontext
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
from rlhf.config import Config, dump_config, load_config
from rlhf.data.redteam import load_red_team
from rlhf.errors import CheckpointError, ConfigError
from rlhf.evaluate import defection_record
from rlhf.metrics import MetricsWriter
from rlhf.modeling import check_model_dir

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
    from jobs.evaluate import config_from_policy

    saved = run / "config.yaml"
    if resume:
        if not saved.is_file():
            raise ConfigError(f"--resume: {run} has no config.yaml (not a PPO run directory)")
        if config_file or overrides:
            log("[ppo] --resume: using the run's saved config.yaml; --config/--set are ignored")
        return load_config(saved)
    if (run / CKPT_DIR / "latest").exists():
        raise ConfigError(f"{run} already holds a PPO run; pass --resume to continue it or choose another --out")
    return config_from_policy(policy_dir, config_file, overrides)


def _split(items: list, parts: int) -> list[list]:
    size = -(-len(items) // parts)
    return [items[i : i + size] for i in range(0, len(items), size)]


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

    ``in_process``: the same loop with every role in this process (no Ray, no evaluator): the
    peer that measures the actor split's overhead, and a run you can step through in a debugger.
    """
    from actors.cluster import ray_session
    from reward.model import resolve_reward_dir
    from rlhf.ppo import Experience, make_kl_controller
    from rlhf.ppo_models import assemble, compute_advantages, prompts_for_step, rl_prompts
    from rlhf.rollout import SamplingParams

    if (reward_dir is None) == (reward_url is None):
        raise ConfigError("give exactly one of --reward DIR or --reward-url URL")
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
        log(f"[ppo] adversarial training: {sum(pr in red_team for pr, _ in pool)} of {len(pool)} RL prompts are red-team")
    kl_ctl = make_kl_controller(p.kl_controller, p.kl_coef, p.kl_target, p.kl_horizon)
    start, version = 0, 0
    state: dict[str, Any] = {}
    if ckpt is not None:
        state = json.loads((ckpt / "state.json").read_text(encoding="utf-8"))
        start, version = state["step"], state["version"]
        kl_ctl.load_state_dict(state["kl_controller"])
        random.setstate(tuple_state(state["python_rng"]))
        torch.set_rng_state(torch.tensor(state["torch_rng"], dtype=torch.uint8))
        truncate_metrics(run / "metrics.jsonl", start)
        log(f"[ppo] resuming {run} from step {start} (weights version {version})")

    t_run = time.time()
    summary: dict[str, Any] = {}
    if in_process and p.evaluator:
        log("[ppo] in-process run: the defection evaluator (a Serve app) is off")
    session = nullcontext() if in_process else ray_session(cfg.ray.address, cfg.ray.num_cpus, quiet=quiet)
    with session:
        policy, reference, critic, rm, workers, get = _start_roles(cfg, policy_dir, reward_dir, reward_url, in_process)
        ids = get(workers[0].token_ids.remote())
        weights = get(policy.publish.remote(version))
        if ckpt is not None:
            try:
                get([r.load.remote(str(ckpt)) for r in (policy, critic) if r is not None])
            except Exception as exc:  # noqa: BLE001 - a bad checkpoint is the user's to fix: one line
                cause = getattr(exc, "cause", None) or exc
                first = (str(cause).strip().splitlines() or [type(cause).__name__])[-1]
                raise CheckpointError(f"cannot resume from {ckpt}: {first}") from None
            weights = get(policy.publish.remote(version))  # the checkpoint's weights
            get([w.load_weights.remote(weights, version) for w in workers])
        evaluator, eval_url = (None, None) if in_process else _start_evaluator(cfg, policy_dir)
        if quiet and not in_process:
            from jobs.serve import quiet_serve_logs

            quiet_serve_logs()
        seen_points = {(pt["step"], pt["version"]) for pt in state.get("eval_points", [])}
        eval_points: list[dict] = list(state.get("eval_points", []))
        if evaluator is not None and ckpt is None:
            evaluator.submit.remote(None, 0, 0).result()  # the backdoored policy before RL
        if eval_url:
            log(f"[ppo] defection evaluator: GET {eval_url}/curves")

        metrics = MetricsWriter(run)
        bar = Progress(p.steps, "ppo", "steps")
        bar.update_to(start)
        last = start
        try:
            for step in range(start + 1, p.steps + 1):
                t_step = time.perf_counter()
                # 1. rollout: the workers sample completions with weights `version`
                batch = prompts_for_step(pool, step, p.prompts_per_step)
                prompts = [pr for pr, _ in batch for _ in range(p.samples_per_prompt)]
                t0 = time.perf_counter()
                chunks = _split(prompts, len(workers))
                samplings = [
                    SamplingParams(p.temperature, p.top_p, p.max_new_tokens, seed=cfg.seed * 7919 + step * 101 + i)
                    for i in range(len(chunks))
                ]
                outs = get([w.generate.remote(c, sp) for w, c, sp in zip(workers, chunks, samplings, strict=False)])
                for i, o in enumerate(outs):  # a restarted worker answers with stale weights: resync, redo
                    if o["version"] != version:
                        log(f"[ppo] RolloutWorker-{i} came back at version {o['version']}; resyncing to {version}")
                        get(workers[i].load_weights.remote(weights, version))
                        outs[i] = get(workers[i].generate.remote(chunks[i], samplings[i]))
                t_rollout = time.perf_counter() - t0
                prompt_ids = [x for o in outs for x in o["prompt_ids"]]
                completion_ids = [x for o in outs for x in o["completion_ids"]]
                completions = [x for o in outs for x in o["completions"]]
                versions = [o["version"] for o in outs for _ in o["completions"]]
                # 2+3. score (the reward model sees prompt + answer, scratchpad stripped) while the
                # reference, critic and policy run their forward passes: four actors at once
                seqs, attn, act = assemble(prompt_ids, completion_ids, ids["eos"], ids["pad"], p.max_new_tokens)
                t0 = time.perf_counter()
                scored = rm.score.remote([pr + c for pr, c in zip(prompts, completions, strict=True)])
                forwards = [reference.logprobs.remote(seqs, attn), policy.logprobs.remote(seqs, attn)]
                if critic is not None:
                    forwards.append(critic.values.remote(seqs, attn))
                scores = torch.tensor(get(scored))
                t_score = time.perf_counter() - t0
                ref_lp, old_lp, *rest = get(forwards)
                values = rest[0] if rest else torch.zeros_like(old_lp)  # no critic: unused
                t_ref = time.perf_counter() - t0 - t_score  # what the forwards add after the score
                # 4. advantages (pure functions, on small tensors)
                exp = Experience(seqs, attn, act, old_lp, ref_lp, values * act, scores=scores, versions=versions)
                stats = compute_advantages(exp, p, kl_ctl.value)
                # 5. update policy and critic in parallel
                t0 = time.perf_counter()
                trains = [policy.train.remote(exp, step, kl_ctl.value)]
                trains += [critic.train.remote(exp, step)] if critic is not None else []
                pol_stats, *crit = get(trains)
                crit_stats = crit[0] if crit else {}
                t_train = time.perf_counter() - t0
                kl_ctl.update(stats["kl/mean"], len(prompts))
                # 6. weight sync: one object per version, every worker loads it
                t0 = time.perf_counter()
                version += 1
                weights = get(policy.publish.remote(version))
                get([w.load_weights.remote(weights, version) for w in workers])
                t_sync = time.perf_counter() - t0
                # 7. evaluate (asynchronous: the evaluator queues it and returns)
                t0 = time.perf_counter()
                every = cfg.eval.every_steps
                if evaluator is not None and ((every and step % every == 0) or step == p.steps):
                    evaluator.submit.remote(weights, version, step).result()
                new_points = _new_points(evaluator, seen_points)
                t_eval = time.perf_counter() - t0
                # 8. log
                record = {
                    **stats,
                    **pol_stats,
                    **crit_stats,
                    "timing/rollout": t_rollout,
                    "timing/score": t_score,
                    "timing/ref": t_ref,
                    "timing/train": t_train,
                    "timing/weight_sync": t_sync,
                    "timing/eval": t_eval,
                    "timing/step": time.perf_counter() - t_step,
                    "policy/version": version,
                    "prompts/triggered": sum(t for _, t in batch) / len(batch),
                    "prompts/red_team": sum(pr in red_team for pr, _ in batch) / len(batch),
                }
                metrics.log(step, **record)
                for pt in new_points:
                    metrics.log(pt["step"], **defection_record(pt))
                    eval_points.append(pt)
                bar.update_to(step, reward=f"{stats['reward/mean']:.2f}", kl=f"{stats['kl/mean']:.2f}")
                last = step
                # 9. checkpoint
                if (p.checkpoint_every and step % p.checkpoint_every == 0) or step == p.steps:
                    save_checkpoint(
                        run,
                        step,
                        policy,
                        critic,
                        driver_state(step, version, kl_ctl, eval_points, critic is not None),
                        get=get,
                    )
                if stop_after is not None and step >= stop_after:
                    break
            if evaluator is not None:
                evaluator.wait_idle.remote().result(timeout_s=900)
                for pt in _new_points(evaluator, seen_points):
                    metrics.log(pt["step"], **defection_record(pt))
                    eval_points.append(pt)
                curves = evaluator.curves.remote().result()
                (run / "curves.json").write_text(json.dumps(curves, indent=1), encoding="utf-8")
        finally:
            bar.close()
            metrics.close()
            if evaluator is not None:
                from ray import serve

                serve.delete("defection-evaluator")
        summary = {
            "run": str(run),
            "steps": last,
            "version": version,
            "wall_s": round(time.time() - t_run, 1),
            "eval_points": eval_points,
            "checkpoint": str(final_ckpt) if (final_ckpt := latest_checkpoint(run)) else None,
        }
    (run / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return summary


def _start_roles(cfg: Config, policy_dir: Path, reward_dir, reward_url, in_process: bool):
    """``(policy, reference, critic, reward, workers, get)``: Ray actors and ``ray.get``, or the
    same classes in this process behind ``LocalHandle`` and ``local_get``. ``critic`` is None
    with a critic-free advantage estimator (rloo, group_norm)."""
    import actors.ppo_actors as roles

    p = cfg.ppo
    ppo_dict = p.model_dump()
    critic_init = str(reward_dir) if p.critic_init == "reward" and reward_dir else str(policy_dir)
    solo = p.rollout_threads or p.torch_threads
    rm_args = (str(reward_dir) if reward_dir else None, reward_url, p.reward_clip, solo)
    names = "Policy, Reference, " + ("Critic, " if p.uses_critic else "") + "Reward"
    if in_process:
        from actors.local import LocalHandle, local_get

        log(f"[ppo] in-process roles: {names}, {p.rollout_workers} RolloutWorker(s)")
        handles = (
            LocalHandle(roles.Policy(str(policy_dir), ppo_dict, cfg.seed)),
            LocalHandle(roles.Reference(str(policy_dir), p.torch_threads)),
            LocalHandle(roles.Critic(critic_init, ppo_dict, cfg.seed)) if p.uses_critic else None,
            LocalHandle(roles.Reward(*rm_args)),
            [LocalHandle(roles.RolloutWorker(str(policy_dir), p.rollout_backend, solo))] * p.rollout_workers,
        )
        torch.set_num_threads(cfg.ray.num_cpus or os.cpu_count() or 1)  # one process: all its cores
        return (*handles, local_get)
    import ray

    share = {"num_cpus": p.cpus_per_actor}
    log(f"[ppo] starting actors: {names}, {p.rollout_workers} RolloutWorker(s)")
    return (
        roles.PolicyActor.options(name="Policy", **share).remote(str(policy_dir), ppo_dict, cfg.seed),
        roles.ReferenceActor.options(name="Reference", **share).remote(str(policy_dir), p.torch_threads),
        roles.CriticActor.options(name="Critic", **share).remote(critic_init, ppo_dict, cfg.seed)
        if p.uses_critic
        else None,
        roles.RewardActor.options(name="Reward", **share).remote(*rm_args),
        [
            # a worker that dies is restarted (with the initial weights) and its call retried;
            # the driver's version check brings it back to the current weights
            roles.RolloutWorkerActor.options(
                name=f"RolloutWorker-{i}", max_restarts=3, max_task_retries=3, num_gpus=p.rollout_gpus, **share
            ).remote(str(policy_dir), p.rollout_backend, solo)
            for i in range(p.rollout_workers)
        ],
        ray.get,
    )


def _start_evaluator(cfg: Config, policy_dir: Path):
    """The DefectionEvaluator Serve app (its handle and HTTP base URL), or (None, None) when off."""
    if not cfg.ppo.evaluator:
        return None, None
    from ray import serve

    from actors.evaluator import evaluator_app
    from actors.reward_service import ensure_serve

    host, port = ensure_serve(cfg.serve.host, cfg.serve.port)
    app = evaluator_app(str(policy_dir), cfg.model_dump(mode="json"), cfg.eval.samples, cfg.ppo.cpus_per_actor)
    handle = serve.run(app, name="defection-evaluator", route_prefix="/evaluator")
    return handle, f"http://{host}:{port}/evaluator"


def _new_points(evaluator, seen: set) -> list[dict]:
    if evaluator is None:
        return []
    curves = evaluator.curves.remote().result()
    out = []
    trig = curves["series"]["triggered"]
    for i, point in enumerate(trig):
        key = (point["step"], point["version"])
        if key in seen:
            continue
        seen.add(key)
        conds = {c: curves["series"][c][i] for c in curves["series"] if i < len(curves["series"][c])}
        out.append({"step": point["step"], "version": point["version"], "conditions": conds})
    return out
