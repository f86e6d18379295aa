"""The one way this project starts Ray on a single machine: on loopback, silent, self-contained.

Measured on Ray 2.60 (docs/ray-on-one-machine.md): Ray swaps ``127.0.0.1`` for the eth0
address, probes cloud metadata and reports usage unless all four settings below are in place
before it starts. Every entry point and test goes through ``local_ray``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"

# (1) keep the node IP we pass; (2) no usage reporting, and its lookup pointed at a dead port.
LOOPBACK_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_USAGE_STATS_REPORT_URL": "http://127.0.0.1:9/",
    # read by keep_serve_replica_on_loopback() inside Serve replicas of this cluster
    "RLHF_LOOPBACK_ONLY": "1",
}


# Token authentication stays on (Ray's default for ray.init). The token is one per process and
# handed over in the environment: Ray caches the token it first saw, so a second cluster in the
# same process (tests, pipelines) would otherwise look for it in the first cluster's HOME.
_PROCESS_TOKEN = secrets.token_hex(32)


def auth_environment() -> dict[str, str]:
    """Ray switches token mode on by itself for a new local cluster; we only supply the token."""
    return {"RAY_AUTH_TOKEN": os.environ.get("RAY_AUTH_TOKEN") or _PROCESS_TOKEN}


def prepare_home(home: Path) -> Path:
    """(3) A bootstrap config that tells Ray's dashboard it runs on a local provider, so it does
    not probe cloud metadata services."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "ray_bootstrap_config.yaml").write_text("provider:\n  type: local\n")
    return home


def loopback_environment(home: Path) -> dict[str, str]:
    """Environment variables a Ray process (``ray start``, job driver, ``ray.init``) needs."""
    return {**LOOPBACK_ENV, "HOME": str(prepare_home(home))}


@contextlib.contextmanager
def patched_environ(values: dict[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


_LOCAL_CLUSTERS = 0  # how many loopback clusters this process holds (0 or 1)


def is_local_loopback() -> bool:
    """True while this process holds a cluster started by ``local_ray``, or runs inside a
    loopback cluster of ours (a job driver on the local head: ``RLHF_LOOPBACK_ONLY=1``)."""
    return _LOCAL_CLUSTERS > 0 or os.environ.get("RLHF_LOOPBACK_ONLY") == "1"


@contextlib.contextmanager
def local_ray(
    num_cpus: int | None = None, quiet: bool = True, keep_temp: bool = False, dashboard: bool = False
) -> Iterator[str]:
    """Start a fresh single-node Ray bound to 127.0.0.1; yields its temp dir; always shuts down.
    ``dashboard=True`` adds the dashboard (on 127.0.0.1), which the Ray state API needs.

    (4) The temp dir is the run's own (a short path: Ray's unix sockets must fit in 107 bytes)
    and ``address="local"`` forces a new cluster, so a stale ``ray_current_cluster`` file
    cannot point us at a dead one.
    """
    import ray

    if ray.is_initialized():
        raise RuntimeError("Ray is already initialised in this process; use the existing cluster")
    root = Path(tempfile.mkdtemp(prefix="rlhf-ray-"))
    env = {**loopback_environment(root / "home"), **auth_environment()}
    with patched_environ(env), _single_node_constant():
        try:
            ray.init(
                address="local",
                num_cpus=num_cpus,
                _node_ip_address=LOOPBACK,
                _temp_dir=str(root / "t"),
                include_dashboard=dashboard,  # the state API (ray list actors) needs it
                dashboard_host=LOOPBACK,
                log_to_driver=not quiet,
                logging_level="ERROR" if quiet else "INFO",
                configure_logging=True,
            )
            global _LOCAL_CLUSTERS
            _LOCAL_CLUSTERS += 1
            try:
                yield str(root)
            finally:
                _LOCAL_CLUSTERS -= 1
        finally:
            _shutdown_serve()
            ray.shutdown()
            if not keep_temp:
                shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def _single_node_constant() -> Iterator[None]:
    """Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER once, when ``ray`` is first imported, so the
    environment variable alone only reaches the processes Ray starts. The driver process may
    have imported ray already (e.g. ``ray.train``): set the constant it read, for this cluster's
    lifetime only, so a later connection to a real multi-node cluster is unaffected."""
    from ray._private import ray_constants

    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


def keep_serve_replica_on_loopback() -> None:
    """Ray Serve 2.60 replicas start an inter-deployment gRPC server on ``[::]:0``: every
    interface, whatever the node IP. In a cluster started by ``local_ray`` (which marks its
    processes with ``RLHF_LOOPBACK_ONLY=1``) bind it to 127.0.0.1 instead. Call it from a
    deployment's ``__init__``: the server starts right after the constructor returns."""
    if os.environ.get("RLHF_LOOPBACK_ONLY") != "1":
        return
    from ray.serve._private import replica

    original = replica.add_port_to_grpc_server
    if getattr(original, "loopback_only", False):
        return

    def bind_loopback(server, address: str):
        if address.startswith(("[::]:", "0.0.0.0:")):
            address = f"{LOOPBACK}:{address.rsplit(':', 1)[1]}"
        return original(server, address)

    bind_loopback.loopback_only = True
    replica.add_port_to_grpc_server = bind_loopback


def _shutdown_serve() -> None:
    """A Serve instance outlives its driver unless shut down explicitly."""
    if "ray.serve" not in sys.modules:
        return
    from ray import serve

    with contextlib.suppress(Exception):
        serve.shutdown()


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None, quiet: bool = True) -> Iterator[None]:
    """Use the Ray this process already joined; else join ``address`` (or ``$RAY_ADDRESS``, as
    set for a submitted Ray job); with neither, start a private loopback cluster (``local_ray``)."""
    import ray

    if ray.is_initialized():  # a caller (pipeline, test fixture) already holds a cluster
        yield
        return
    target = address or os.environ.get("RAY_ADDRESS")
    if not target:
        with local_ray(num_cpus=num_cpus, quiet=quiet):
            yield
        return
    ray.init(address=target, logging_level="ERROR" if quiet else "INFO", log_to_driver=not quiet)
    try:
        yield
    finally:
        ray.shutdown()


def ray_get(refs: Any) -> Any:
    """``ray.get``: the results of remote calls (one ``ObjectRef`` or a list), in order."""
    import ray

    return ray.get(refs)
