"""A Ray Train torch backend whose process group never listens beyond 127.0.0.1.

Ray Train's stock gloo setup creates torch's TCPStore from ``MASTER_ADDR``/``MASTER_PORT``; the
store's server binds every interface (measured: ``:::PORT``) whatever the address says. On a
single-machine loopback cluster we instead open the store's listening socket ourselves, bound
to 127.0.0.1, and hand its file descriptor to ``TCPStore(master_listen_fd=...)``; gloo's own
pair sockets are kept on the loopback device with ``GLOO_SOCKET_IFNAME=lo``. A multi-node
cluster uses the stock ``TorchConfig``.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta

import ray
from ray.train.torch import TorchConfig
from ray.train.torch.config import _set_torch_distributed_env_vars, _TorchBackend

_LISTENER: socket.socket | None = None  # rank 0 keeps the store's socket open in its worker


def _open_loopback_listener() -> int:
    """Rank 0: bind a listening socket on 127.0.0.1 (port chosen by the kernel); return the port."""
    global _LISTENER
    if _LISTENER is not None:
        _LISTENER.close()
    _LISTENER = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    _LISTENER.bind(("127.0.0.1", 0))
    _LISTENER.listen(128)
    return _LISTENER.getsockname()[1]


def _init_loopback_process_group(
    world_rank: int, world_size: int, port: int, timeout_s: int, backend: str = "gloo"
) -> None:
    import torch.distributed as dist

    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    os.environ.setdefault("NCCL_SOCKET_IFNAME", "lo")  # NCCL's bootstrap sockets (GPU workers) too
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    timeout = timedelta(seconds=timeout_s)
    if world_rank == 0:
        store = dist.TCPStore(
            "127.0.0.1", port, world_size, is_master=True, timeout=timeout, master_listen_fd=_LISTENER.fileno()
        )
    else:
        store = dist.TCPStore("127.0.0.1", port, world_size, is_master=False, timeout=timeout)
    dist.init_process_group(backend, store=store, rank=world_rank, world_size=world_size, timeout=timeout)


class _LoopbackTorchBackend(_TorchBackend):
    def on_start(self, worker_group, backend_config) -> None:
        worker_group.execute(_set_torch_distributed_env_vars)
        port = worker_group.execute_single(0, _open_loopback_listener)
        n = len(worker_group)
        ray.get(
            [
                worker_group.execute_single_async(
                    i,
                    _init_loopback_process_group,
                    world_rank=i,
                    world_size=n,
                    port=port,
                    timeout_s=backend_config.timeout_s,
                    backend=backend_config.backend or "gloo",
                )
                for i in range(n)
            ]
        )


@dataclass
class LoopbackTorchConfig(TorchConfig):
    """``TorchConfig`` for a single-machine loopback cluster: gloo on CPUs, ``backend="nccl"`` on GPUs."""

    backend: str | None = "gloo"

    @property
    def backend_cls(self):
        return _LoopbackTorchBackend
