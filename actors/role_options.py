"""Typed options of every role the launcher starts: one frozen dataclass per role, made by
``actors.launcher`` from the config (``role_options``, ``rollout_options``, ``evaluator_options``)
and handed whole to the role's constructor. ``actors.launcher.ray_options`` is the only place that
turns a ``Resources`` into Ray actor options.

Every role has a model directory, a resolved ``Placement`` (device and precision for this role's
own resources: a role without a GPU runs on the CPU), its ``Resources`` and its torch threads; the
subclasses add what that role needs. A role started as several actors (rollout workers; sharded
groups later) says how many in ``Resources.num_workers``. Pure data: no Ray, no torch state.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rlhf.models.device import Placement


@dataclass(frozen=True, kw_only=True)
class Resources:
    """What one actor of a role asks the cluster for, and how many actors the role has."""

    num_cpus: float
    num_gpus: float = 0.0  # a fraction shares one GPU; a whole number owns that many
    max_restarts: int = 0  # restarts after a crash (-1: forever); calls are retried as often
    num_workers: int = 1
    offload: bool = False  # a sharded group (num_workers > 1): FSDP2 CPU offload of shards and AdamW state


@dataclass(frozen=True, kw_only=True)
class RoleOptions:
    role: str
    model_dir: str | None
    placement: Placement = field(default_factory=Placement)
    resources: Resources = field(default_factory=lambda: Resources(num_cpus=0.2))
    threads: int = 1


@dataclass(frozen=True, kw_only=True)
class PolicyOptions(RoleOptions):
    ppo: dict  # the ppo section (``PPOConfig.model_dump()``)
    seed: int = 0
    lora: dict | None = None  # rlhf.models.lora.lora_settings
    weight_bucket_mb: int = 256  # resources.weight_bucket_mb: the size of one bucket of a weight publish


@dataclass(frozen=True, kw_only=True)
class ReferenceOptions(RoleOptions):
    temperature: float = 1.0
    micro_batch_size: int | None = None  # rows per forward pass (ppo.micro_batch_size)


@dataclass(frozen=True, kw_only=True)
class CriticOptions(RoleOptions):
    ppo: dict
    seed: int = 0


@dataclass(frozen=True, kw_only=True)
class RewardOptions(RoleOptions):
    """``model_dir``: an in-process reward model, or None with ``reward_url`` (the reward service)."""

    reward_url: str | None = None
    reward_clip: float = 10.0
    micro_batch_size: int | None = None  # texts per reward-model forward pass (ppo.micro_batch_size)


@dataclass(frozen=True, kw_only=True)
class RolloutOptions(RoleOptions):
    backend: str = "hf"  # a name of rlhf.rollout.backends
    batch_size: int = 64
    engine: dict = field(default_factory=dict)  # the backend's own settings (vLLM: resources.vllm, dtype ...)


@dataclass(frozen=True, kw_only=True)
class EvaluatorOptions(RoleOptions):
    """The defection evaluator's replica (a Serve deployment)."""


@dataclass(frozen=True)
class PPORoleOptions:
    """The options of every PPO role; ``critic`` is None with a critic-free advantage estimator."""

    policy: PolicyOptions
    reference: ReferenceOptions
    critic: CriticOptions | None
    reward: RewardOptions
    rollout: RolloutOptions
