"""Rollout backends by name: the one factory every place that samples a policy goes through (PPO
rollout workers, the defection evaluator, distillation sampling, red-teaming, eval, steering).

A backend is registered with ``register_backend(BackendSpec(name, factory, ...))``; ``factory`` is
a callable ``(BackendRequest) -> RolloutBackend`` or ``"package.module:attr"``, imported on first
use (the vLLM backend lives in ``actors/vllm_backend.py`` because it imports vllm, and this
package may not). ``ppo.rollout_backend`` names a registered backend, or ``package.module:attr``
of a factory in a module of its own (a new backend touches its own module only:
``tests/unit/toy_backend.py``). The config layer cannot see this registry: ``check_backend`` is
the config check, called where the rollout workers are launched.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rlhf.errors import ConfigError
from rlhf.rollout.hf import HFGenerateBackend, RolloutBackend


@dataclass(frozen=True)
class BackendRequest:
    """What a factory is given: a model directory to load (placed by ``placement``, a
    ``Placement.as_dict``) or a model already loaded (``model`` and ``tokenizer``)."""

    model_dir: str | None = None
    model: Any = None
    tokenizer: Any = None
    placement: dict | None = None
    batch_size: int = 64
    version: int = 0
    engine: dict = field(default_factory=dict)  # the backend's own settings (vLLM: resources.vllm, dtype ...)
    # behaviour log-probs of a sample (``rlhf.ppo.models.completion_logprobs``): given by the rollout
    # worker, so that they are computed exactly as the trainer computes pi_old
    logprobs_fn: Callable | None = None


Factory = Callable[[BackendRequest], RolloutBackend]


@dataclass(frozen=True)
class BackendSpec:
    name: str
    factory: Factory | str  # a callable, or "package.module:attr" imported on first use
    behaviour_logprobs: bool = False  # ``logprobs`` works: the backend can serve asynchronous rollout


BACKENDS: dict[str, BackendSpec] = {}


def register_backend(spec: BackendSpec) -> BackendSpec:
    BACKENDS[spec.name] = spec
    return spec


def _resolve(path: str, what: str) -> Any:
    module, _, attr = path.partition(":")
    try:
        obj: Any = importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(f"{what}: cannot import {module} ({exc})") from None
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise ConfigError(f"{what}: {module} has no {attr}")
    return obj


def backend_spec(name: str) -> BackendSpec:
    """The spec of backend ``name``; ``package.module:attr`` names a factory (or a ``BackendSpec``)
    in a module of its own."""
    if name in BACKENDS:
        return BACKENDS[name]
    if ":" in name:
        obj = _resolve(name, f"ppo.rollout_backend={name}")
        return obj if isinstance(obj, BackendSpec) else BackendSpec(name, obj)
    raise ConfigError(f"ppo.rollout_backend: unknown backend {name!r} (registered: {', '.join(sorted(BACKENDS))})")


def check_backend(name: str, behaviour_logprobs: bool = False) -> BackendSpec:
    """``ppo.rollout_backend`` checked against the registry (one line, ``ConfigError``);
    ``behaviour_logprobs``: the run needs them (asynchronous rollout with prefetching)."""
    spec = backend_spec(name)
    if behaviour_logprobs and not spec.behaviour_logprobs:
        raise ConfigError(
            f"async_rollout needs behaviour log-probs from the rollout worker: rollout_backend={name} has none"
        )
    return spec


def make_backend(name: str, request: BackendRequest | None = None, **fields: Any) -> RolloutBackend:
    """Build backend ``name`` for ``request`` (or a request made of ``fields``)."""
    req = request if request is not None else BackendRequest(**fields)
    factory = backend_spec(name).factory
    if isinstance(factory, str):
        factory = _resolve(factory, f"rollout backend {name}")
    return factory(req)


def _hf(req: BackendRequest) -> HFGenerateBackend:
    model, tokenizer = req.model, req.tokenizer
    if model is None:
        from rlhf.models.device import Placement
        from rlhf.models.modeling import load_model_dir

        model, tokenizer = load_model_dir(req.model_dir, device=Placement.from_dict(req.placement).device)
        # a rollout worker samples (and scores behaviour log-probs) as the policy computes: the precision policy
        model = Placement.from_dict(req.placement).place_mirror(model)
    placement = Placement.from_dict(req.placement) if req.placement else None
    return HFGenerateBackend(
        model, tokenizer, req.batch_size, req.version, logprobs_fn=req.logprobs_fn, placement=placement
    )


register_backend(BackendSpec("hf", _hf, behaviour_logprobs=True))
register_backend(BackendSpec("vllm", "actors.vllm_backend:from_request"))
