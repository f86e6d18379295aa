"""In-process stand-ins for actor handles: ``LocalHandle(obj).method.remote(*args)`` returns a
``Pending`` call that ``local_get`` runs (once) and unwraps, so a driver written against Ray
handles and ``ray.get`` runs unchanged in one process (no Ray). A ``Pending`` passed as an argument
is resolved first, as Ray resolves an ``ObjectRef`` argument. Calls run when resolved, in the
order they are resolved, so a driver's per-phase timers measure the same work in both modes. A
call that is never resolved never runs (the driver resolves every call it makes). Used for the
in-process PPO loop, the peer that measures what the actor split costs, and for debugging.
"""

from __future__ import annotations

from typing import Any


class Pending:
    """A call in the place of an ``ObjectRef``: it runs on the first ``result()``."""

    __slots__ = ("_call", "_value")

    def __init__(self, fn, args: tuple, kwargs: dict):
        self._call: tuple | None = (fn, args, kwargs)
        self._value: Any = None

    def result(self) -> Any:
        if self._call is not None:
            fn, args, kwargs = self._call
            args = tuple(a.result() if isinstance(a, Pending) else a for a in args)  # as Ray resolves refs
            self._value = fn(*args, **kwargs)
            self._call = None
        return self._value


class _Method:
    __slots__ = ("fn",)

    def __init__(self, fn):
        self.fn = fn

    def remote(self, *args: Any, **kwargs: Any) -> Pending:
        return Pending(self.fn, args, kwargs)


class LocalHandle:
    """Wraps a plain object in the call shape of an actor handle."""

    def __init__(self, obj: Any):
        self._obj = obj

    def __getattr__(self, name: str) -> _Method:
        return _Method(getattr(self._obj, name))


def local_get(refs: Pending | list[Pending]) -> Any:
    """``ray.get`` for ``Pending`` calls (one or a list, run in list order)."""
    if isinstance(refs, list):
        return [r.result() for r in refs]
    return refs.result()
