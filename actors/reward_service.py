"""The reward service: a Ray Serve deployment around ``reward.scorer.RewardScorer``.

HTTP (on ``serve.host``, 127.0.0.1 by default):

- ``POST /get_reward`` -- OpenRLHF's remote reward-model protocol (see ``reward.protocol``);
  requests are merged by ``@serve.batch`` into one forward pass.
- ``GET /health`` -- model, context length, normalisation, requests, forward batches and texts
  served, and the wall and CPU seconds spent in the model forward (``forward_s``,
  ``forward_cpu_s``: the replica's model share, read by ``bench/reward_serve.py``). No token needed.

Inside the cluster, callers use the ``DeploymentHandle``:
``await handle.get_reward.remote(query=[...])`` returns the same dict as the HTTP answer.

Every refusal is a 4xx with ``{"error": "<one line>"}``; the replica keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ray import serve

from reward.protocol import (
    RequestError,
    RewardRequest,
    check_bearer,
    error_body,
    parse_reward_request,
    validate_reward_payload,
)
from rlhf.config.core import ServeConfig
from rlhf.errors import ConfigError

logger = logging.getLogger("ray.serve")

APP_NAME = "reward"


@serve.deployment(name="RewardModel")
class RewardModelDeployment:
    def __init__(self, model_dir: str, settings: dict[str, Any]):
        import torch

        from actors.cluster import keep_serve_replica_on_loopback
        from reward.scorer import RewardScorer
        from rlhf.malloc import tune_malloc
        from rlhf.models.device import Placement

        keep_serve_replica_on_loopback()
        tune_malloc()
        torch.set_num_threads(int(settings["torch_threads"]))
        self.settings = settings
        self.scorer = RewardScorer(
            model_dir,
            forward_batch_size=int(settings["forward_batch_size"]),
            strip_scratchpad=bool(settings["strip_scratchpad"]),
            normalize=bool(settings["normalize"]),
            placement=Placement("cuda" if settings.get("num_gpus") else "cpu", settings.get("precision", "fp32")),
        )
        self.token = settings.get("token") or None
        self._batched.set_max_batch_size(int(settings["max_batch_size"]))
        self._batched.set_batch_wait_timeout_s(float(settings["batch_wait_timeout_s"]))
        self.served = 0
        self.batches = 0
        self.texts = 0
        self.forward_s = 0.0  # wall and CPU seconds inside RewardScorer.score: the model's share
        self.forward_cpu_s = 0.0

    # ---- HTTP ---------------------------------------------------------------------------
    async def __call__(self, request):
        from starlette.responses import JSONResponse

        try:
            path = request.url.path.rstrip("/")
            if path.endswith("/health"):
                _require_method(request, "GET")
                return JSONResponse(self.health())
            if path.endswith("/get_reward"):
                _require_method(request, "POST")
                check_bearer(request.headers.get("authorization"), self.token)
                declared = request.headers.get("content-length", "")
                limit = int(self.settings["max_body_bytes"])
                if declared.isdigit() and int(declared) > limit:
                    raise RequestError(413, f"body is {declared} bytes; the limit is {limit}")
                body = await request.body()
                req = parse_reward_request(body, int(self.settings["max_items"]), limit)
                return JSONResponse(await self._answer(req))
            raise RequestError(404, f"no route {request.method} {path or '/'}; use POST /get_reward or GET /health")
        except RequestError as err:
            return JSONResponse(error_body(err.message), status_code=err.status)
        except Exception as exc:  # noqa: BLE001 - a fault of ours: log it, answer one line
            logger.exception("reward service: internal error")
            return JSONResponse(error_body(f"internal error: {type(exc).__name__}"), status_code=500)

    # ---- DeploymentHandle ---------------------------------------------------------------
    async def get_reward(self, query: Any, prompts: Any = None, labels: Any = None) -> dict[str, list[float]]:
        """Same checks and answer as ``POST /get_reward``; raises ``RequestError`` on bad input."""
        payload = {"query": query} | ({"prompts": prompts} if prompts is not None else {})
        payload |= {"labels": labels} if labels is not None else {}
        return await self._answer(validate_reward_payload(payload, int(self.settings["max_items"])))

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "model": str(self.scorer.model_dir),
            "max_len": self.scorer.max_len,
            "normalized": self.scorer.normalizer is not None,
            "strip_scratchpad": self.scorer.strip_scratchpad,
            "auth": bool(self.token),
            "served": self.served,
            "batches": self.batches,
            "texts": self.texts,
            "forward_s": round(self.forward_s, 4),
            "forward_cpu_s": round(self.forward_cpu_s, 4),
        }

    async def _answer(self, req: RewardRequest) -> dict[str, list[float]]:
        if self.settings["overlength"] == "reject":
            over = self.scorer.overlong(req.query)
            if over:
                raise RequestError(
                    413, f"query[{over[0]}] is longer than the model context ({self.scorer.max_len} tokens)"
                )
        rewards, scores = await self._batched(req.query)
        self.served += 1
        return {"rewards": rewards, "scores": scores}

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def _batched(self, queries: list[list[str]]) -> list[tuple[list[float], list[float]]]:
        """One forward pass for the texts of several requests; split back per request."""
        flat = [text for q in queries for text in q]
        rewards, scores = await asyncio.to_thread(self._score, flat)
        self.batches += 1
        self.texts += len(flat)
        out, start = [], 0
        for q in queries:
            out.append((rewards[start : start + len(q)], scores[start : start + len(q)]))
            start += len(q)
        return out

    def _score(self, texts: list[str]) -> tuple[list[float], list[float]]:
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            return self.scorer.score(texts)
        finally:
            self.forward_s += time.perf_counter() - wall
            self.forward_cpu_s += time.thread_time() - cpu


def _require_method(request, method: str) -> None:
    if request.method != method:
        raise RequestError(405, f"{request.url.path} takes {method}, not {request.method}")


def resolve_token(cfg: ServeConfig) -> str | None:
    """The bearer token: ``serve.token``, else the environment variable ``serve.token_env``."""
    return cfg.token or os.environ.get(cfg.token_env) or None


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def require_token_off_loopback(cfg: ServeConfig, app: str) -> str | None:
    """The resolved token; ``ConfigError`` when ``serve.host`` is not loopback and there is none:
    a service bound beyond this machine answers only with a token."""
    token = resolve_token(cfg)
    if token is None and not is_loopback_host(cfg.host):
        raise ConfigError(
            f"{app}: serve.host={cfg.host} is not a loopback address and no bearer token is set; "
            f"set serve.token or the environment variable {cfg.token_env} (on Kubernetes: the Secret rlhf-reward-token)"
        )
    return token


def deployment_options(cfg: ServeConfig) -> dict[str, Any]:
    opts: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": cfg.num_cpus} | ({"num_gpus": cfg.num_gpus} if cfg.num_gpus else {}),
        "max_ongoing_requests": cfg.max_ongoing_requests,
    }
    if cfg.autoscaling is not None:
        opts["autoscaling_config"] = cfg.autoscaling.model_dump()
    else:
        opts["num_replicas"] = cfg.replicas
    return opts


def reward_app(model_dir: str, cfg: ServeConfig):
    """The bound Serve application (what ``serve.run`` and a RayService ``import_path`` take)."""
    settings = cfg.model_dump(exclude={"host", "port", "replicas", "autoscaling", "token", "token_env"})
    settings["token"] = require_token_off_loopback(cfg, "the reward service")
    return RewardModelDeployment.options(**deployment_options(cfg)).bind(str(model_dir), settings)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


_HTTP: dict[str, tuple[str, int]] = {}  # Serve HTTP proxy per cluster (keyed by GCS address)


def ensure_serve(host: str, port: int) -> tuple[str, int]:
    """Start Serve's HTTP proxy on ``host:port`` once per cluster; return where it listens.
    Port 0 picks a free port."""
    import ray

    key = ray.get_runtime_context().gcs_address
    if key in _HTTP:
        return _HTTP[key]
    port = port or free_port(host)
    serve.start(http_options={"host": host, "port": port})
    _HTTP[key] = (host, port)
    return host, port


@dataclass
class RunningService:
    url: str
    handle: Any
    app_name: str


@contextlib.contextmanager
def reward_service(
    model_dir: str, cfg: ServeConfig, app_name: str = APP_NAME, route_prefix: str = "/"
) -> Iterator[RunningService]:
    """Deploy the reward service on the Ray this process joined; delete the app on exit.

    ``url`` is the base (``url + "/get_reward"`` is what OpenRLHF's ``--remote_rm_url`` takes)."""
    app = reward_app(model_dir, cfg)  # refuses a non-loopback bind without a token before binding
    host, port = ensure_serve(cfg.host, cfg.port)
    handle = serve.run(app, name=app_name, route_prefix=route_prefix)
    shown = "127.0.0.1" if host == "0.0.0.0" else host  # noqa: S104 - only displayed
    try:
        yield RunningService(f"http://{shown}:{port}{route_prefix.rstrip('/')}", handle, app_name)
    finally:
        with contextlib.suppress(Exception):
            serve.delete(app_name)
