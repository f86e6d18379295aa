"""``resources.device=cuda`` on a Ray cluster: ask for a GPU and wait for the autoscaler to bring one.

A KubeRay GPU worker group may start at 0 pods, so at the moment a run starts the cluster often
offers no GPU yet. Asking Ray's autoscaler for one GPU (``request_resources``) makes it start a GPU
pod; the run then waits up to ``resources.gpu_wait_s`` for the GPU to join, and fails with one
line (exit 2) when none does. Our own loopback cluster cannot grow: there the answer is immediate.
``cpu`` never asks for GPUs, and ``auto`` takes the GPUs the cluster offers at that moment.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from rlhf.errors import ConfigError

POLL_S = 5.0


def cluster_gpus(
    requested: str,
    wait_s: float,
    loopback: bool,
    gpus: Callable[[], float] | None = None,
    request: Callable[[], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> float:
    """The GPUs the Ray cluster offers a run asking for ``requested`` (``auto|cpu|cuda``). For ``cuda``
    on a cluster that can grow and has none yet: request one GPU from the autoscaler and poll until
    one joins or ``wait_s`` pass (then a one-line ``ConfigError``)."""
    if gpus is None:
        import ray

        def gpus() -> float:
            return float(ray.cluster_resources().get("GPU", 0.0))

    if request is None:

        def request() -> None:
            from ray.autoscaler.sdk import request_resources

            request_resources(bundles=[{"GPU": 1}])

    have = gpus()
    if requested != "cuda" or have > 0 or loopback:
        return have
    request()
    deadline = clock() + wait_s
    while clock() < deadline:
        sleep(min(POLL_S, max(0.0, deadline - clock())))
        have = gpus()
        if have > 0:
            return have
    raise ConfigError(
        f"resources.device=cuda but no GPU joined the Ray cluster within resources.gpu_wait_s={wait_s:g} s "
        "(is a GPU worker group configured, with room to scale?); use resources.device=cpu or auto, or wait longer"
    )
