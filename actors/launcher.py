"""The one place where the PPO roles are placed: ``role_specs`` turns the ``resources`` section
(CPUs/GPUs per role, restarts, colocation) into Ray actor options, and ``launch_roles`` starts
Policy, Reference, Critic, Reward and the rollout workers with them, or the same classes in this
process behind ``LocalHandle`` (``in_process``). Colocated roles share one placement-group
bundle: the same node and, on a GPU node, one GPU split by their fractions.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch

from rlhf.config.core import Config
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


def default_gpus(cfg: Config, name: str, device: str) -> float:
    """GPUs for a role whose ``resources.<role>.num_gpus`` is unset."""
    p = cfg.ppo
    if device != "cuda":
        return p.rollout_gpus if name == "rollout" else 0.0
    share = GPU_SHARES[name]
    return round(share / p.rollout_workers, 6) if name == "rollout" else share


def role_specs(cfg: Config, device: str = "cpu") -> dict[str, dict[str, Any]]:
    """Ray actor options per role (``policy``, ``reference``, ``critic``, ``reward``, ``rollout``);
    unset CPUs fall back to ``ppo.cpus_per_actor``, unset GPUs to ``default_gpus`` for the resolved
    ``device`` (``cpu``: none but ``ppo.rollout_gpus``; ``cuda``: a share of one GPU)."""
    p, res = cfg.ppo, cfg.resources
    specs = {}
    for name in ("policy", "reference", "critic", "reward", "rollout"):
        r = getattr(res, name)
        gpus = r.num_gpus if r.num_gpus is not None else default_gpus(cfg, name, device)
        spec: dict[str, Any] = {"num_cpus": r.num_cpus if r.num_cpus is not None else p.cpus_per_actor}
        if gpus:
            spec["num_gpus"] = gpus
        if r.max_restarts:
            # a role that dies is restarted (rollout workers: with the initial weights) and its call retried;
            # the trainer's version check brings a restarted worker back to the current weights
            spec |= {"max_restarts": r.max_restarts, "max_task_retries": r.max_restarts}
        specs[name] = spec
    return specs


def colocation_bundles(cfg: Config, device: str = "cpu") -> list[tuple[list[str], dict[str, float]]]:
    """One bundle per colocate group: its roles and the summed resources they ask for (every rollout
    worker counted)."""
    specs, out = role_specs(cfg, device), []
    for group in cfg.resources.colocate:
        bundle = {"CPU": 0.0, "GPU": 0.0}
        for name in group:
            times = cfg.ppo.rollout_workers if name == "rollout" else 1
            bundle["CPU"] += specs[name]["num_cpus"] * times
            bundle["GPU"] += specs[name].get("num_gpus", 0.0) * times
        out.append((list(group), {k: v for k, v in bundle.items() if v}))
    return out


def _placed_options(cfg: Config, groups: list, device: str) -> dict[str, dict[str, Any]]:
    """``role_specs`` plus a scheduling strategy into its group's placement group for colocated roles
    (each placement group created is appended to ``groups``)."""
    specs = role_specs(cfg, device)
    bundles = colocation_bundles(cfg, device)
    if not bundles:
        return specs
    import ray
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    for group, bundle in bundles:
        pg = placement_group([bundle], strategy="STRICT_PACK")
        groups.append(pg)
        ray.get(pg.ready(), timeout=120)
        for name in group:
            specs[name]["scheduling_strategy"] = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=0)
    return specs


def _role_args(cfg: Config, policy_dir: Path, reward_dir, reward_url, placement: Placement) -> dict[str, tuple]:
    p = cfg.ppo
    critic_init = str(reward_dir) if p.critic_init == "reward" and reward_dir else str(policy_dir)
    solo = p.rollout_threads or p.torch_threads
    place = placement.as_dict()
    vllm = {**cfg.resources.vllm.model_dump(), "dtype": "bfloat16" if placement.bf16 else "float32"}
    return {
        "policy": (str(policy_dir), p.model_dump(), cfg.seed, place, lora_settings(cfg)),
        "reference": (str(policy_dir), p.torch_threads, p.temperature, place),
        "critic": (critic_init, p.model_dump(), cfg.seed, place),
        "reward": (str(reward_dir) if reward_dir else None, reward_url, p.reward_clip, solo, place),
        "rollout": (str(policy_dir), p.rollout_backend, solo, 64, place, vllm),
    }


def resolve_placement(cfg: Config, in_process: bool) -> Placement:
    """``resources`` resolved where the roles will run: this process's GPUs in-process, the
    cluster's GPUs on Ray (one line, exit 2, when CUDA is asked for and there is none)."""
    if in_process:
        return placement_for(cfg.resources)
    import ray

    return placement_for(cfg.resources, ray.cluster_resources().get("GPU", 0.0))


def launch_roles(cfg: Config, policy_dir: Path, reward_dir, reward_url, in_process: bool) -> Roles:
    """Start the roles; ``critic`` is None with a critic-free advantage estimator."""
    import actors.ppo_actors as roles

    p = cfg.ppo
    placement = resolve_placement(cfg, in_process)
    args = _role_args(cfg, policy_dir, reward_dir, reward_url, placement)
    critic = uses_critic(p)
    names = "Policy, Reference, " + ("Critic, " if critic else "") + "Reward"
    where = f"{placement.device}, {placement.precision}"
    if in_process:
        from actors.local import LocalHandle, local_get

        _log(f"[ppo] in-process roles ({where}): {names}, {p.rollout_workers} RolloutWorker(s)")
        worker = LocalHandle(roles.RolloutWorker(*args["rollout"]))
        out = Roles(
            LocalHandle(roles.Policy(*args["policy"])),
            LocalHandle(roles.Reference(*args["reference"])),
            LocalHandle(roles.Critic(*args["critic"])) if critic else None,
            LocalHandle(roles.Reward(*args["reward"])),
            [worker] * p.rollout_workers,
            local_get,
        )
        torch.set_num_threads(cfg.ray.num_cpus or os.cpu_count() or 1)  # one process: all its cores
        return out
    import ray

    groups: list = []
    opts = _placed_options(cfg, groups, placement.device)
    _log(f"[ppo] starting actors ({where}): {names}, {p.rollout_workers} RolloutWorker(s)")
    out = Roles(
        roles.PolicyActor.options(name="Policy", **opts["policy"]).remote(*args["policy"]),
        roles.ReferenceActor.options(name="Reference", **opts["reference"]).remote(*args["reference"]),
        roles.CriticActor.options(name="Critic", **opts["critic"]).remote(*args["critic"]) if critic else None,
        roles.RewardActor.options(name="Reward", **opts["reward"]).remote(*args["reward"]),
        [
            roles.RolloutWorkerActor.options(name=f"RolloutWorker-{i}", **opts["rollout"]).remote(*args["rollout"])
            for i in range(p.rollout_workers)
        ],
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

    for actor in {id(a): a for a in actors if a is not None}.values():
        ray.kill(actor, no_restart=True)
    for pg in getattr(roles, "placement_groups", []):
        remove_placement_group(pg)
