"""The one place where roles are placed: the ``resources`` section (CPUs/GPUs per role, restarts,
colocation, threads, the vLLM engine) becomes one typed options object per role
(``actors.role_options``: ``role_options`` for PPO, ``rollout_options`` for distillation sampling,
``evaluator_options`` for the defection evaluator), and ``ray_options`` turns their ``Resources``
into Ray actor options (nowhere else does). ``launch_roles`` starts Policy, Reference, Critic,
Reward and the rollout workers with them, or the same classes in this process behind
``LocalHandle`` (``in_process``). Each role resolves its device from its own resources (a role
without a GPU runs on the CPU). Colocated roles share one placement-group bundle: the same node
and, on a GPU node, one GPU split by their fractions.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from actors.role_options import (
    CriticOptions,
    EvaluatorOptions,
    PolicyOptions,
    PPORoleOptions,
    ReferenceOptions,
    Resources,
    RewardOptions,
    RolloutOptions,
)
from rlhf.config.core import Config
from rlhf.config.runtime import PPO_ROLES
from rlhf.errors import ConfigError
from rlhf.models.device import Placement, placement_for
from rlhf.models.lora import lora_settings
from rlhf.ppo.advantages import uses_critic
from rlhf.ppo.roles import Roles


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# The share of one GPU each role takes when ``resources.device`` resolves to CUDA and the role's
# ``num_gpus`` is unset: together with the evaluator's they fill exactly one GPU, so a one-GPU
# machine runs the whole PPO loop; the rollout share is split among the rollout workers.
GPU_SHARES = {"policy": 0.25, "critic": 0.2, "reference": 0.15, "reward": 0.1, "rollout": 0.2, "evaluator": 0.1}
RAY_GPU_GRANULARITY = 1e-4  # Ray accounts fractional GPUs in steps of 1e-4
VLLM_MEMORY_SHARE = 0.9  # of its GPU share, what a vLLM engine takes when resources.vllm.gpu_memory_utilization is unset


def ray_share(gpus: float) -> float:
    """``gpus`` rounded down to Ray's granularity (never to 0), so that shares meant to fill a GPU
    never add up to more than Ray has and leave an actor pending."""
    if gpus <= 0 or gpus >= 1:
        return float(gpus)
    return max(RAY_GPU_GRANULARITY, math.floor(gpus / RAY_GPU_GRANULARITY + 1e-6) * RAY_GPU_GRANULARITY)


def _whole_gpus_of_vllm(cfg: Config) -> int:
    """GPUs one vLLM engine spans (``resources.vllm.tensor_parallel_size``); 0 for other backends."""
    return cfg.resources.vllm.tensor_parallel_size if cfg.ppo.rollout_backend == "vllm" else 0


def default_gpus(cfg: Config, name: str, device: str) -> float:
    """GPUs for a role whose ``resources.<role>.num_gpus`` is unset: none on the CPU; on CUDA its
    share of one GPU (a vLLM engine with tensor parallelism owns that many whole GPUs)."""
    if device != "cuda":
        return 0.0
    if name == "rollout" and _whole_gpus_of_vllm(cfg) > 1:
        return float(_whole_gpus_of_vllm(cfg))
    share = GPU_SHARES[name]
    return ray_share(share / cfg.ppo.rollout_workers) if name == "rollout" else share


def role_resources(cfg: Config, name: str, device: str = "cpu") -> Resources:
    """What one actor of role ``name`` asks for: ``resources.<name>``, unset CPUs from
    ``resources.cpus_per_actor``, unset GPUs from ``default_gpus`` for the resolved ``device``."""
    res = cfg.resources
    r = getattr(res, name) if name in PPO_ROLES else None
    gpus = r.num_gpus if r is not None and r.num_gpus is not None else default_gpus(cfg, name, device)
    cpus = r.num_cpus if r is not None and r.num_cpus is not None else res.cpus_per_actor
    tp = _whole_gpus_of_vllm(cfg)
    if name == "rollout" and device == "cuda" and tp > 1 and gpus < tp:
        raise ConfigError(
            f"resources.vllm.tensor_parallel_size={tp} needs {tp} whole GPUs per rollout worker; "
            f"resources.rollout.num_gpus is {gpus}"
        )
    return Resources(
        num_cpus=cpus,
        num_gpus=ray_share(gpus),
        max_restarts=r.max_restarts if r is not None else 0,
        num_workers=cfg.ppo.rollout_workers if name == "rollout" else (r.num_workers if r is not None else 1),
        offload=r.offload if r is not None else False,
    )


def ray_options(res: Resources) -> dict[str, Any]:
    """The Ray actor options of one actor with ``res``: the only place they are made."""
    spec: dict[str, Any] = {"num_cpus": res.num_cpus}
    if res.num_gpus:
        spec["num_gpus"] = res.num_gpus
    if res.max_restarts:
        # a role that dies is restarted (rollout workers: with the initial weights) and its call retried;
        # the trainer's version check brings a restarted worker back to the current weights
        spec |= {"max_restarts": res.max_restarts, "max_task_retries": res.max_restarts}
    return spec


def role_specs(cfg: Config, device: str = "cpu") -> dict[str, dict[str, Any]]:
    """Ray actor options per PPO role (``PPO_ROLES``) for the resolved ``device``."""
    return {name: ray_options(role_resources(cfg, name, device)) for name in PPO_ROLES}


def colocation_bundles(cfg: Config, device: str = "cpu") -> list[tuple[list[str], dict[str, float]]]:
    """One bundle per colocate group: its roles and the summed resources they ask for (every actor
    of a role counted)."""
    out = []
    for group in cfg.resources.colocate:
        bundle = {"CPU": 0.0, "GPU": 0.0}
        for name in group:
            r = role_resources(cfg, name, device)
            bundle["CPU"] += r.num_cpus * r.num_workers
            bundle["GPU"] += r.num_gpus * r.num_workers
        out.append((list(group), {k: v for k, v in bundle.items() if v}))
    return out


def _colocated(cfg: Config, groups: list, device: str) -> dict[str, dict[str, Any]]:
    """Per colocated role, the scheduling strategy into its group's placement group (each placement
    group created is appended to ``groups``); {} without colocation."""
    bundles = colocation_bundles(cfg, device)
    if not bundles:
        return {}
    import ray
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    out = {}
    for group, bundle in bundles:
        pg = placement_group([bundle], strategy="STRICT_PACK")
        groups.append(pg)
        ray.get(pg.ready(), timeout=120)
        for name in group:
            out[name] = {"scheduling_strategy": PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=0)}
    return out


def role_placement(placement: Placement, res: Resources, in_process: bool = False) -> Placement:
    """The placement a role resolves from its own resources: on a CUDA cluster a Ray actor without a
    GPU sees none (Ray hides them), so it runs on the CPU; in one process every role shares the
    process's device."""
    if placement.device == "cuda" and not res.num_gpus and not in_process:
        return replace(placement, device="cpu")
    return placement


def longest_context(model_dir: str | Path, prompts: Sequence[str], max_new_tokens: int) -> int:
    """Tokens of the longest of ``prompts`` as the backend renders it (``rlhf.chat.render_prompt``)
    plus ``max_new_tokens``: the context a rollout engine must hold, at most the model's own
    (``max_position_embeddings``; vLLM refuses more). Reads only the tokenizer and the config."""
    from transformers import AutoConfig, AutoTokenizer

    from rlhf.chat import render_prompt

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    ids = tok([render_prompt(p, tok) for p in dict.fromkeys(prompts)], add_special_tokens=False)["input_ids"]
    need = max((len(x) for x in ids), default=0) + max_new_tokens
    limit = getattr(AutoConfig.from_pretrained(str(model_dir)), "max_position_embeddings", None)
    return min(need, limit) if limit else need


def vllm_engine(
    cfg: Config, placement: Placement, res: Resources, model_dir: str | Path,
    prompts: Sequence[str] = (), max_new_tokens: int = 0,
) -> dict:  # fmt: skip
    """The vLLM engine settings of a rollout worker with ``res``: the dtype from the precision (every
    path), ``resources.vllm``, ``max_model_len`` (``resources.vllm.max_model_len``, else the longest
    of ``prompts`` plus ``max_new_tokens``) and the memory share, checked against the worker's GPU
    share; vLLM's rendezvous pinned to loopback only on a cluster of our own."""
    v = cfg.resources.vllm
    context = v.max_model_len or (longest_context(model_dir, prompts, max_new_tokens) if prompts else None)
    engine: dict[str, Any] = {
        "dtype": "bfloat16" if placement.bf16 else "float32",
        "tensor_parallel_size": v.tensor_parallel_size,
        "enforce_eager": v.enforce_eager,
        "max_model_len": context,
        "host_ip": None if cfg.ray.address else "127.0.0.1",  # loopback only on a cluster of our own
    }
    if placement.device == "cuda":
        share = min(1.0, res.num_gpus / v.tensor_parallel_size)  # > 0: a role without a GPU is on the CPU
        # unset: vLLM's own default share of a whole GPU (0.9, room for the CUDA context) of the worker's share
        util = v.gpu_memory_utilization if v.gpu_memory_utilization is not None else VLLM_MEMORY_SHARE * share
        if util > share + 1e-9:
            raise ConfigError(
                f"resources.vllm.gpu_memory_utilization={util} exceeds the rollout worker's GPU share {share:g} "
                "(resources.rollout.num_gpus per tensor-parallel GPU); lower it or raise the share"
            )
        engine["gpu_memory_utilization"] = round(util, 4)
    elif v.gpu_memory_utilization is not None:
        engine["gpu_memory_utilization"] = v.gpu_memory_utilization
    return engine


def rollout_options(
    cfg: Config, model_dir: str | Path, placement: Placement, batch_size: int = 64,
    prompts: Sequence[str] = (), max_new_tokens: int = 0, in_process: bool = False,
) -> RolloutOptions:  # fmt: skip
    """A rollout worker's options (PPO, and distillation sampling); ``prompts`` and
    ``max_new_tokens`` size a vLLM engine's context."""
    res = role_resources(cfg, "rollout", placement.device)
    place = role_placement(placement, res, in_process)
    vllm = cfg.ppo.rollout_backend == "vllm"  # the vLLM engine's settings (other backends take none)
    engine = vllm_engine(cfg, place, res, model_dir, prompts, max_new_tokens) if vllm else {}
    threads = cfg.resources.rollout_threads or cfg.resources.torch_threads
    return RolloutOptions(
        role="rollout", model_dir=str(model_dir), placement=place, resources=res, threads=threads,
        backend=cfg.ppo.rollout_backend, batch_size=batch_size, engine=engine,
    )  # fmt: skip


def role_options(
    cfg: Config, policy_dir: Path, reward_dir, reward_url, placement: Placement, in_process: bool = False,
    prompts: Sequence[str] = (),
) -> PPORoleOptions:  # fmt: skip
    """Every PPO role's options, each role placed by its own resources."""
    p, res = cfg.ppo, cfg.resources
    device = placement.device

    def common(name: str, model_dir, threads: int = res.torch_threads) -> dict[str, Any]:
        r = role_resources(cfg, name, device)
        where = role_placement(placement, r, in_process)
        return {"role": name, "model_dir": None if model_dir is None else str(model_dir), "placement": where,
                "resources": r, "threads": threads}  # fmt: skip

    critic_init = reward_dir if p.critic_init == "reward" and reward_dir else policy_dir
    solo = res.rollout_threads or res.torch_threads
    return PPORoleOptions(
        policy=PolicyOptions(
            **common("policy", policy_dir),
            ppo=p.model_dump(),
            seed=cfg.seed,
            lora=lora_settings(cfg),
            weight_bucket_mb=res.weight_bucket_mb,
        ),
        reference=ReferenceOptions(
            **common("reference", policy_dir), temperature=p.temperature, micro_batch_size=p.micro_batch_size
        ),
        critic=CriticOptions(**common("critic", critic_init), ppo=p.model_dump(), seed=cfg.seed)
        if uses_critic(p)
        else None,
        reward=RewardOptions(
            **common("reward", reward_dir, solo),
            reward_url=reward_url,
            reward_clip=p.reward_clip,
            micro_batch_size=p.micro_batch_size,
        ),
        rollout=rollout_options(cfg, policy_dir, placement, 64, prompts, p.max_new_tokens, in_process),
    )


def evaluator_options(cfg: Config, policy_dir: str | Path, placement: Placement) -> EvaluatorOptions:
    """The defection evaluator's replica: ``resources.cpus_per_actor`` and, on CUDA, its GPU share."""
    res = Resources(num_cpus=cfg.resources.cpus_per_actor, num_gpus=default_gpus(cfg, "evaluator", placement.device))
    return EvaluatorOptions(
        role="evaluator", model_dir=str(policy_dir), placement=role_placement(placement, res), resources=res
    )


def start_rollout_workers(opts: RolloutOptions, name: str, extra: dict[str, Any] | None = None) -> list:
    """``opts.resources.num_workers`` rollout-worker actors named ``{name}-{i}`` on the current Ray
    cluster (``extra``: scheduling options, e.g. a colocation placement group)."""
    from actors.ppo_actors import RolloutWorkerActor

    options = ray_options(opts.resources) | (extra or {})
    return [
        RolloutWorkerActor.options(name=f"{name}-{i}", **options).remote(opts)
        for i in range(opts.resources.num_workers)
    ]


def resolve_placement(cfg: Config, in_process: bool) -> Placement:
    """``resources`` resolved where the roles will run: this process's GPUs in-process, the
    cluster's GPUs on Ray (one line, exit 2, when CUDA is asked for and there is none)."""
    if in_process:
        return placement_for(cfg.resources)
    from actors.cluster import is_local_loopback
    from actors.gpu_wait import cluster_gpus

    r = cfg.resources
    return placement_for(r, cluster_gpus(r.device, r.gpu_wait_s, loopback=is_local_loopback()))


def check_roles_fit(opts: PPORoleOptions) -> None:
    """One line, before any role starts, unless every role's ranks x GPUs (and CPUs) fit our own
    cluster; a joined cluster may autoscale, so only there is it left to Ray (``rlhf.config.fit``)."""
    from actors.cluster import is_local_loopback
    from rlhf.config.fit import Demand, check_fits

    if not is_local_loopback():
        return
    import ray

    roles = [o for o in (opts.policy, opts.reference, opts.critic, opts.reward, opts.rollout) if o is not None]
    key = {"rollout": "ppo.rollout_workers"}
    demands = [
        Demand(key.get(o.role, f"resources.{o.role}.num_workers"), o.resources.num_workers, o.resources.num_cpus,
               o.resources.num_gpus)
        for o in roles
    ]  # fmt: skip
    check_fits(demands, ray.cluster_resources())


def launch_roles(
    cfg: Config, policy_dir: Path, reward_dir, reward_url, in_process: bool, prompts: Sequence[str] = ()
) -> Roles:
    """Start the roles; ``critic`` is None with a critic-free advantage estimator; ``prompts`` (the RL
    pool) size a vLLM engine's context."""
    import actors.ppo_actors as roles

    placement = resolve_placement(cfg, in_process)
    opts = role_options(cfg, policy_dir, reward_dir, reward_url, placement, in_process, prompts)
    if not in_process:
        check_roles_fit(opts)
    n = opts.rollout.resources.num_workers
    names = "Policy, Reference, " + ("Critic, " if opts.critic else "") + "Reward"
    where = f"{placement.device}, {placement.precision}"
    if in_process and any(o is not None and o.resources.num_workers > 1 for o in (opts.policy, opts.critic)):
        raise ConfigError("resources.policy/critic.num_workers > 1 shards a role over Ray actors; not in-process")
    if in_process:
        from actors.local import LocalHandle, local_get

        _log(f"[ppo] in-process roles ({where}): {names}, {n} RolloutWorker(s)")
        worker = LocalHandle(roles.RolloutWorker(opts.rollout))
        out = Roles(
            LocalHandle(roles.Policy(opts.policy)),
            LocalHandle(roles.Reference(opts.reference)),
            LocalHandle(roles.Critic(opts.critic)) if opts.critic else None,
            LocalHandle(roles.Reward(opts.reward)),
            [worker] * n,
            local_get,
        )
        torch.set_num_threads(cfg.ray.num_cpus or os.cpu_count() or 1)  # one process: all its cores
        return out
    import ray

    groups: list = []
    placed = _colocated(cfg, groups, placement.device)

    def start(cls, o, name: str):
        if o.resources.num_workers > 1:  # a sharded policy or critic: one actor per rank (actors.role_group)
            from actors.role_group import RoleGroup

            group = RoleGroup(o, name, ray_options(o.resources))
            groups.append(group.placement_group)
            return group
        return cls.options(name=name, **ray_options(o.resources), **placed.get(o.role, {})).remote(o)

    _log(f"[ppo] starting actors ({where}): {names}, {n} RolloutWorker(s)")
    out = Roles(
        start(roles.PolicyActor, opts.policy, "Policy"),
        start(roles.ReferenceActor, opts.reference, "Reference"),
        start(roles.CriticActor, opts.critic, "Critic") if opts.critic else None,
        start(roles.RewardActor, opts.reward, "Reward"),
        start_rollout_workers(opts.rollout, "RolloutWorker", placed.get("rollout")),
        ray.get,
        ray.put,
    )
    out.placement_groups = groups
    return out


def stop_roles(roles: Roles) -> None:
    """End the role actors (and their colocation placement groups) now, so that a next run in the
    same Ray session can take the same actor names; nothing to do in-process."""
    actors = [roles.policy, roles.reference, roles.critic, roles.reward, *roles.workers]
    if not any(type(a).__name__ == "ActorHandle" for a in actors):
        return
    import ray
    from ray.util.placement_group import remove_placement_group

    actors = [b for a in actors for b in getattr(a, "actors", [a])]  # a sharded group: each rank
    for actor in {id(a): a for a in actors if a is not None}.values():
        ray.kill(actor, no_restart=True)
    for pg in getattr(roles, "placement_groups", []):
        remove_placement_group(pg)
