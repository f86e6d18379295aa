"""The object-store weight transport: one ``ray.put`` per published version, fetched by each
subscriber with ``ray.get`` (a subscriber on the same node maps the shared-memory object; no
copy per worker through the driver). Registered as ``object_store`` in every process that imports
this module (the PPO roles and the defection evaluator do)."""

from __future__ import annotations

from typing import Any

import ray

from rlhf.rollout.weight_sync import register_transport


class ObjectStoreTransport:
    def put(self, state: dict) -> Any:
        return ray.put(state)

    def get(self, ref: Any) -> dict:
        return ray.get(ref)


register_transport("object_store", ObjectStoreTransport())


def default_transport() -> str:
    """``object_store`` inside a Ray worker or driver, ``local`` in a plain process."""
    return "object_store" if ray.is_initialized() else "local"
