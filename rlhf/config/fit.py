"""Whether what a run asks for fits the cluster, checked before any worker or actor starts.

A stage or role asks for ``ranks`` processes of ``cpus`` and ``gpus`` each: a Ray Train stage one
rank per ``<section>.num_workers`` (1 CPU each, plus 1 GPU each on CUDA), a PPO role one rank per
``resources.<role>.num_workers``. Each must fit on its own, and the GPUs of all of them together
(they run side by side); on CUDA a sharded group (more than one rank) needs a whole GPU per rank,
since NCCL cannot run two ranks of one group on one device. A misfit is one ``ConfigError`` line
naming the key to change. Pure data: the caller passes the cluster's resources (``ray.cluster_resources()``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from rlhf.errors import ConfigError

EPS = 1e-6


@dataclass(frozen=True)
class Demand:
    """``ranks`` processes of ``cpus`` CPUs and ``gpus`` GPUs each; ``key`` names the config key that sets the ranks."""

    key: str
    ranks: int
    cpus: float
    gpus: float = 0.0


def train_stage_demand(section: str, num_workers: int, device: str) -> Demand:
    """A Ray Train stage: one CPU per worker, and one GPU each on CUDA (``train_launcher.train_scaling``)."""
    return Demand(f"{section}.num_workers", num_workers, 1.0, 1.0 if device == "cuda" else 0.0)


def _fmt(x: float) -> str:
    return f"{x:g}"


def check_fits(demands: Sequence[Demand], cluster: Mapping[str, float]) -> None:
    """Raise a one-line ``ConfigError`` unless every demand, and all their GPUs together, fit ``cluster``
    (``{"CPU": n, "GPU": m}``)."""
    cpus, gpus = float(cluster.get("CPU", 0.0)), float(cluster.get("GPU", 0.0))
    for d in demands:
        if d.ranks > 1 and 0 < d.gpus < 1:
            raise ConfigError(
                f"{d.key}={d.ranks} shards over NCCL, which needs a whole GPU per rank; "
                f"each rank asks for {_fmt(d.gpus)} (set its num_gpus to 1)"
            )
        for what, per, have in (("GPU", d.gpus, gpus), ("CPU", d.cpus, cpus)):
            need = d.ranks * per
            if need > have + EPS:
                raise ConfigError(
                    f"{d.key}={d.ranks} rank(s) x {_fmt(per)} {what} = {_fmt(need)} {what}s, but the cluster has "
                    f"{_fmt(have)}; lower {d.key} or the {what}s per rank"
                )
    total = sum(d.ranks * d.gpus for d in demands)
    if total > gpus + EPS:
        parts = ", ".join(f"{d.key}={d.ranks} x {_fmt(d.gpus)}" for d in demands if d.gpus)
        raise ConfigError(f"together the roles ask for {_fmt(total)} GPUs ({parts}), but the cluster has {_fmt(gpus)}")
