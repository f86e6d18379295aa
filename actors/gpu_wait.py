"""``resources.device=cuda`` on a Ray cluster: ask for a GPU and wait for the autoscaler to bring one.

A KubeRay GPU worker group may start at 0 pods, so at the moment a run starts the cluster often
offers no GPU yet. Asking Ray's autoscaler for one GPU (``request_resources``) makes it start a GPU
pod; the run then waits up to ``resources.gpu_wait_s`` for the GPU to join, and fails with one
line (exit 2) when none does. Our own loopback cluster cannot grow: there the answer is immediate.
``cpu`` never asks for GPUs.

``auto`` is decided by the cluster's configuration, never by which pods happen to be up: on our own
cluster it is this machine's GPUs; on a joined cluster it is ``RLHF_CLUSTER_GPUS``, the GPUs its
configuration can provide (the GPU overlay in ``k8s/`` sets it on every pod): > 0 makes ``auto`` act
as ``cuda`` (ask, wait), 0 or unset as ``cpu`` (a joined cluster that does not declare GPUs gets the
CPU every time, with a line saying how to ask for GPUs).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping

from rlhf.errors import ConfigError

POLL_S = 5.0
DECLARED = "RLHF_CLUSTER_GPUS"


def declared_gpus(env: Mapping[str, str] | None = None) -> float | None:
    """The GPUs a joined cluster's configuration declares (``RLHF_CLUSTER_GPUS``); None when unset."""
    raw = (os.environ if env is None else env).get(DECLARED)
    if raw is None or raw.strip() == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise ConfigError(f"{DECLARED} must be a number of GPUs >= 0, got {raw!r}")
    return value


def auto_on_joined(env: Mapping[str, str] | None = None) -> str:
    """What ``auto`` means on a joined cluster: ``cuda`` when its configuration declares GPUs, else ``cpu``."""
    declared = declared_gpus(env)
    if not declared:
        print(
            f"resources.device=auto: this Ray cluster declares no GPUs ({DECLARED} "
            f"{'unset' if declared is None else '= 0'}), so every stage runs on CPU; set resources.device=cuda "
            f"(or {DECLARED}) to use GPUs",
            file=sys.stderr,
            flush=True,
        )
        return "cpu"
    return "cuda"


def cluster_gpus(
    requested: str,
    wait_s: float,
    loopback: bool,
    gpus: Callable[[], float] | None = None,
    request: Callable[[], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    env: Mapping[str, str] | None = None,
) -> float:
    """The GPUs the Ray cluster offers a run asking for ``requested`` (``auto|cpu|cuda``). For ``cuda``
    on a cluster that can grow and has none yet: request one GPU from the autoscaler and poll until
    one joins or ``wait_s`` pass (then a one-line ``ConfigError``). ``auto`` on a joined cluster is
    ``auto_on_joined``'s answer (0 GPUs for ``cpu``)."""
    if requested == "auto" and not loopback:
        requested = auto_on_joined(env)
        if requested == "cpu":
            return 0.0
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
