"""``rlhf serve reward``: the reward service on a local loopback Ray (or a joined cluster) until
interrupted (Ctrl-C or SIGTERM), then a clean shutdown of the app, Serve and Ray."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from rlhf.config.core import Config
from rlhf.models.modeling import check_model_dir


def quiet_serve_logs() -> None:
    for name in ("ray", "ray.serve"):
        logging.getLogger(name).setLevel(logging.WARNING)


def serve_reward(
    model_dir: str | Path,
    cfg: Config,
    on_ready: Callable[[str], None] = print,
    stop: threading.Event | None = None,
    quiet: bool = True,
) -> int:
    """Deploy, call ``on_ready(url)``, block until ``stop`` is set or a SIGINT/SIGTERM arrives."""
    from actors.cluster import ray_session
    from actors.reward_service import require_token_off_loopback, resolve_token, reward_service
    from reward.model import resolve_reward_dir

    require_token_off_loopback(cfg.serve, "rlhf serve reward")  # before Ray starts
    model = check_model_dir(resolve_reward_dir(model_dir)).resolve()
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    if quiet:
        quiet_serve_logs()
    with ray_session(cfg.ray.address, cfg.ray.num_cpus, quiet=quiet):
        with reward_service(str(model), cfg.serve) as svc:
            if quiet:
                quiet_serve_logs()
            auth = "bearer token required" if resolve_token(cfg.serve) else "no token"
            replicas = (
                f"autoscaling {cfg.serve.autoscaling.min_replicas}-{cfg.serve.autoscaling.max_replicas}"
                if cfg.serve.autoscaling
                else f"{cfg.serve.replicas} replica(s)"
            )
            print(f"[serve] reward model {model}: {replicas}, {auth}", file=sys.stderr, flush=True)
            on_ready(svc.url)
            while not stop.wait(0.5):
                pass
            print("[serve] stopping", file=sys.stderr, flush=True)
    return 0
