"""Where the reward service's CPU goes under load (``bench/reward_serve.py``): py-spy stacks of the
Serve replica, the HTTP proxy and the client by kind, and CPU seconds by Ray role."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path


def _our_processes(marker: str) -> list[int]:
    """PIDs of this bench's own Ray processes (descendants of this process) whose title has ``marker``."""
    import psutil

    out = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if marker in " ".join(proc.cmdline()):
                out.append(proc.pid)
        except psutil.Error:
            continue
    return out


STACK_KINDS = (  # first match wins
    ("model forward", ("torch/", "transformers/", "reward/scorer.py")),
    ("HTTP (uvicorn/starlette)", ("uvicorn", "starlette", "h11", "httptools", "http/client.py", "socket.py")),
    ("Serve (router, batching, replica)", ("ray/serve/",)),
    ("Ray core (RPC, object store)", ("ray/_private", "ray/_raylet", "grpc")),
    ("asyncio", ("asyncio/",)),
    ("threads parked (threading, queue, selectors)", ("threading.py", "queue.py", "selectors.py")),
)


def _stack_kind(stack: str) -> str:
    for kind, markers in STACK_KINDS:
        if any(m in stack for m in markers):
            return kind
    return "other"


def profile_batched(busy: Callable[[int], object], seconds: int = 8) -> dict | None:
    """py-spy over the Serve replica, the HTTP proxy and this client process while ``busy(seconds)``
    keeps the batched service under load: where each one's sampled (non-idle) stacks are, by kind;
    None without py-spy."""
    import shutil
    import subprocess

    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        return None
    targets = {"replica": _our_processes("ServeReplica:batched"), "proxy": _our_processes("ProxyActor")}
    targets = {k: v[0] for k, v in targets.items() if v} | {"client": os.getpid()}
    rate = 50
    with tempfile.TemporaryDirectory(prefix="spy-") as tmp:
        procs = {
            name: subprocess.Popen(
                [
                    spy,
                    "record",
                    "--pid",
                    str(pid),
                    "--duration",
                    str(seconds),
                    "--rate",
                    str(rate),
                    "--format",
                    "raw",
                    "--nonblocking",
                    "--output",
                    f"{tmp}/{name}.txt",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for name, pid in targets.items()
        }
        busy(seconds)  # keeps the service busy past the window
        out = {}
        for name, proc in procs.items():
            proc.wait(timeout=60)
            stacks = Path(f"{tmp}/{name}.txt")
            if not stacks.is_file():
                continue
            kinds: dict[str, int] = {}
            total = 0
            for line in stacks.read_text().splitlines():
                stack, _, count = line.rpartition(" ")
                kinds[_stack_kind(stack)] = kinds.get(_stack_kind(stack), 0) + int(count)
                total += int(count)
            out[name] = {
                "samples": total,
                "share": {k: round(n / max(total, 1), 3) for k, n in sorted(kinds.items(), key=lambda kv: -kv[1])},
            }
    return out


def cpu_by_role() -> dict[str, float]:
    """CPU seconds so far of this process (the clients) and of its Ray descendants, by role."""
    import psutil

    def seconds(proc) -> float:
        t = proc.cpu_times()
        return t.user + t.system

    me = psutil.Process()
    out = {"client": seconds(me)}
    for proc in me.children(recursive=True):
        try:
            cmd = " ".join(proc.cmdline())
            role = next((r for r, m in CPU_ROLES if m in cmd), "Ray core (GCS, raylet, agents)")
            out[role] = out.get(role, 0.0) + seconds(proc)
        except psutil.Error:
            continue
    return out


CPU_ROLES = (("replica", "ServeReplica"), ("proxy", "ProxyActor"), ("controller", "ServeController"))
