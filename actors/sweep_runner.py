"""The sweep's stages as Ray tasks (``rlhf sweep``, ``jobs/sweep.py``).

Each stage is one task that declares its resources (``resources:`` in the sweep file; by default
the training stages hold no CPU themselves, since the Ray Train workers and PPO actors they start
ask the cluster for theirs, and an evaluation holds one CPU). The task calls the function the
driver hands it (``jobs.sweep.run_stage``; this module never imports jobs/), and the job function
inside joins the cluster the task runs on (``actors.cluster.ray_session`` reuses an initialised
Ray). A task is never retried by Ray: a failed stage is reported to the driver, which records it
and goes on with the other cells; the next run of the sweep retries it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import ray

from actors.cluster import ray_session


@ray.remote(max_retries=0)
def _stage_task(fn: Callable[[dict], dict], payload: dict) -> dict:
    from rlhf.malloc import tune_malloc

    tune_malloc()
    return fn(payload)


def _one_line(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None) or exc
    text = " ".join(str(cause).split()) if cause is not exc else (str(exc).strip().splitlines() or [""])[-1]
    name = type(cause).__name__
    return f"{name}: {text}" if text else name


class RayStageExecutor:
    """``submit`` a stage as a Ray task; ``wait`` for at least one to finish."""

    def __init__(self, fn: Callable[[dict], dict]):
        self.fn = fn

    def submit(self, payload: dict, resources: dict[str, float]) -> Any:
        options = {"num_cpus": resources.get("num_cpus", 0), "name": f"sweep:{payload['id']}"}
        if resources.get("num_gpus"):
            options["num_gpus"] = resources["num_gpus"]
        return _stage_task.options(**options).remote(self.fn, payload)

    def wait(self, handles: list) -> list[tuple[Any, dict | None, str | None]]:
        ready, _ = ray.wait(handles, num_returns=1)
        rest = [h for h in handles if h not in ready]
        more = ray.wait(rest, num_returns=len(rest), timeout=0)[0] if rest else []
        out = []
        for ref in [*ready, *more]:
            try:
                out.append((ref, ray.get(ref), None))
            except Exception as exc:  # noqa: BLE001 - a failed stage is reported, the sweep goes on
                out.append((ref, None, _one_line(exc)))
        return out


@contextlib.contextmanager
def ray_stage_executor(
    fn: Callable[[dict], dict], address: str | None, num_cpus: int | None, quiet: bool
) -> Iterator[RayStageExecutor]:
    """The cluster of ``address`` (or ``$RAY_ADDRESS``, or a private loopback one) and an executor on it."""
    with ray_session(address, num_cpus, quiet=quiet):
        yield RayStageExecutor(fn)
