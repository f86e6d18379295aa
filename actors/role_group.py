"""A sharded PPO role on Ray: ``resources.<policy|critic>.num_workers`` = N > 1 actors, one per rank,
in one placement group, joined by a process group (gloo on CPUs, NCCL on GPUs), each holding an
FSDP2 shard (``actors.sharded_roles``).

``RoleGroup`` is called exactly like the one actor it replaces: ``group.train.remote(...)`` returns
one ``ObjectRef``. Every rank gets the same arguments (a pending ``ObjectRef`` argument resolves in
each rank) and takes its own rows; a small task joins the ranks' answers: ``logprobs`` and
``values`` concatenated in rank order, ``train`` and ``publish`` rank 0's (the statistics are
all-reduced; rank 0 publishes the gathered weights), after every rank has finished.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import ray
import torch

from actors.role_options import CriticOptions, PolicyOptions
from rlhf.models import fsdp

JOIN = {
    "logprobs": "concat",
    "values": "concat",
    "train": "first",
    "publish": "first",
    "save": "first",
    "load": "first",
}


@ray.remote(num_cpus=0)
def _concat(*parts: torch.Tensor) -> torch.Tensor:
    return torch.cat(parts)


@ray.remote(num_cpus=0)
def _first(*results):
    return results[0]


class ShardedRank:
    """One rank of a sharded policy or critic."""

    def __init__(self, opts: PolicyOptions | CriticOptions, rank: int, world: int):
        from actors.ppo_actors import _threads

        _threads(opts.threads)
        self.opts, self.rank, self.world = opts, rank, world
        saved = Path(opts.model_dir) / "rlhf_config.yaml"
        self.config_yaml = saved.read_text(encoding="utf-8") if saved.is_file() else None

    def address(self) -> tuple[str, int]:
        from actors.cluster import is_local_loopback

        host = "127.0.0.1" if is_local_loopback() else ray.util.get_node_ip_address()
        return host, fsdp.free_port()

    def join(self, host: str, port: int) -> None:
        """Join the group's process group, then load and shard the model (a collective)."""
        import torch.distributed as dist

        from actors.sharded_roles import ShardedCriticTrainer, ShardedPolicyTrainer
        from rlhf.config.core import PPOConfig

        os.environ.update({"MASTER_ADDR": host, "MASTER_PORT": str(port)})
        cuda = self.opts.placement.device == "cuda"
        if cuda:
            torch.cuda.set_device(0)  # Ray shows each rank its own GPU as device 0
        dist.init_process_group("nccl" if cuda else "gloo", rank=self.rank, world_size=self.world)
        ppo = PPOConfig.model_validate(self.opts.ppo)
        cls = ShardedPolicyTrainer if self.opts.role == "policy" else ShardedCriticTrainer
        offload = self.opts.resources.offload
        self.trainer = cls(self.opts.model_dir, ppo, self.opts.seed, self.opts.placement, offload=offload)

    def logprobs(self, sequences, attention_mask, temperature=None, first: int = 0) -> torch.Tensor:
        return self.trainer.logprobs(sequences, attention_mask, temperature, first)

    def values(self, sequences, attention_mask) -> torch.Tensor:
        return self.trainer.values(sequences, attention_mask)

    def train(self, exp, step: int, kl_coef: float | None = None) -> dict[str, float]:
        if kl_coef is not None:
            self.trainer.kl_coef = kl_coef
        t0 = time.perf_counter()
        stats = self.trainer.train(exp, step)
        return stats | {f"timing/{self.opts.role}_train": time.perf_counter() - t0}

    def publish(self, version: int):
        """Every rank gathers the weights bucket by bucket (collectives); rank 0 puts each bucket as it
        comes and drops it, so no process holds the full model beside its shard."""
        from actors.weight_transport import default_transport
        from rlhf.rollout.weight_sync import publish_buckets

        buckets = self.trainer.weight_buckets(self.opts.weight_bucket_mb << 20)
        if self.rank == 0:
            return publish_buckets(buckets, version, default_transport())
        for _ in buckets:  # take part in each gather
            pass
        return None

    def save(self, directory: str) -> None:
        """Every rank writes its own shards of the weights and AdamW state with
        ``torch.distributed.checkpoint`` into ``<role>_shards/`` (a manifest of sizes and digests; no
        rank gathers the optimiser state); the policy also leaves an HF dir of its full weights (gathered
        on rank 0) for ``rlhf eval``."""
        from rlhf.models.checkpoint import CONFIG_NAME, save_hf_dir

        model, d = self.trainer.model, Path(directory)
        fsdp.save_sharded(model, self.trainer.optimizer, d / fsdp.shards_dir(self.opts.role))
        if self.opts.role != "policy":
            return
        weights = fsdp.gathered_state(model)
        if self.rank == 0:
            extra = {CONFIG_NAME: self.config_yaml} if self.config_yaml else None
            save_hf_dir(model, self.trainer.tokenizer, d / "policy", extra, state_dict=weights)

    def load(self, directory: str) -> None:
        """Load this role's shards (any world size: ``torch.distributed.checkpoint`` reshards); a missing,
        partial or corrupt shard is one ``CheckpointError`` line on every rank."""
        from rlhf.errors import CheckpointError

        d = Path(directory)
        if not (d / fsdp.shards_dir(self.opts.role)).is_dir():
            raise CheckpointError(f"{d} was saved by a one-rank {self.opts.role}; resume it with num_workers=1")
        fsdp.load_sharded(self.trainer.model, self.trainer.optimizer, d / fsdp.shards_dir(self.opts.role))


ShardedRankActor = ray.remote(ShardedRank)


class _GroupMethod:
    def __init__(self, group: RoleGroup, name: str):
        self.group, self.name = group, name

    def remote(self, *args, **kwargs):
        refs = [getattr(a, self.name).remote(*args, **kwargs) for a in self.group.actors]
        join = _concat if JOIN[self.name] == "concat" else _first
        return join.remote(*refs)


class RoleGroup:
    """N ``ShardedRank`` actors in one placement group (PACK: one node when it fits), called like one actor."""

    def __init__(self, opts: PolicyOptions | CriticOptions, name: str, actor_options: dict):
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        n, res = opts.resources.num_workers, opts.resources
        bundle = {"CPU": res.num_cpus} | ({"GPU": res.num_gpus} if res.num_gpus else {})
        self.placement_group = placement_group([dict(bundle) for _ in range(n)], strategy="PACK")
        ray.get(self.placement_group.ready())
        self.actors = [
            ShardedRankActor.options(
                name=f"{name}-{rank}",
                **actor_options,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    self.placement_group, placement_group_bundle_index=rank
                ),
            ).remote(opts, rank, n)
            for rank in range(n)
        ]
        host, port = ray.get(self.actors[0].address.remote())
        ray.get([a.join.remote(host, port) for a in self.actors])

    def __getattr__(self, name: str) -> _GroupMethod:
        if name not in JOIN:
            raise AttributeError(name)
        return _GroupMethod(self, name)
