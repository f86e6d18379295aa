"""One weight-sync interface: the policy publishes a version once, subscribers pull that version.

A ``WeightsTicket`` names one published version: its number, the transport that carries it and
the transport's reference to the weights. The trainer hands the same ticket to every subscriber
(rollout workers, the defection evaluator); each pulls the weights with ``pull(ticket)``. A
transport is two functions, ``put(state_dict) -> ref`` and ``get(ref) -> state_dict``, registered
by name: ``local`` (the state dict itself, one process) lives here; ``object_store`` (one
``ray.put`` per version) is registered by ``actors/weight_transport.py``; a GPU transport (NCCL
broadcast, CUDA IPC) registers the same two functions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class WeightsTicket:
    """One published version. A dataclass, not a bare reference, so that Ray passes the reference
    through a call unresolved and the subscriber decides when to fetch it."""

    version: int
    transport: str
    ref: Any


class Transport(Protocol):
    def put(self, state: dict) -> Any: ...

    def get(self, ref: Any) -> dict: ...


class LocalTransport:
    """Weights handed over in one process: the reference is the state dict."""

    def put(self, state: dict) -> Any:
        return state

    def get(self, ref: Any) -> dict:
        return ref


_TRANSPORTS: dict[str, Transport] = {"local": LocalTransport()}


def register_transport(name: str, transport: Transport) -> None:
    _TRANSPORTS[name] = transport


def publish(state: dict, version: int, transport: str = "local") -> WeightsTicket:
    """Put ``state`` once through ``transport``; the ticket names it for every subscriber."""
    if transport not in _TRANSPORTS:
        raise KeyError(f"unknown weight transport {transport!r} (registered: {sorted(_TRANSPORTS)})")
    return WeightsTicket(version, transport, _TRANSPORTS[transport].put(state))


def pull(ticket: WeightsTicket) -> dict:
    """The state dict a ticket names, fetched through its transport."""
    if ticket.transport not in _TRANSPORTS:
        raise KeyError(f"weight transport {ticket.transport!r} is not registered in this process")
    return _TRANSPORTS[ticket.transport].get(ticket.ref)


class WeightSync:
    """The trainer's side of weight sync: ask the policy role to publish a version, then have
    subscribers (role handles with ``load_weights(ticket)``) pull it. ``get`` resolves role calls
    (``ray.get`` or ``local_get``)."""

    def __init__(self, policy: Any, get: Callable[[Any], Any]):
        self.policy, self.get = policy, get
        self.ticket: WeightsTicket | None = None
        self.queued: tuple[int, Any] | None = None  # (version, the policy's pending publish call)
        self.loading: list[Any] = []  # subscribers' queued loads (``push(..., wait=False)``)

    @property
    def version(self) -> int:
        return self.ticket.version if self.ticket is not None else 0

    def queue(self, version: int) -> None:
        """Ask the policy to publish ``version`` right after the call it is running (a train step), without
        waiting: the publish then costs no driver round trip of its own. ``publish(version)`` collects it."""
        self.queued = (version, self.policy.publish.remote(version))

    def publish(self, version: int) -> WeightsTicket:
        queued, self.queued = self.queued, None
        call = queued[1] if queued is not None and queued[0] == version else self.policy.publish.remote(version)
        self.ticket = self.get(call)
        return self.ticket

    def push(self, subscribers: Sequence[Any], wait: bool = True) -> None:
        """Every subscriber loads the current ticket's weights (in parallel on Ray). ``wait`` False: the
        loads are only queued (an actor runs them before any call made to it later); ``settle`` collects
        them, and their errors."""
        self.settle()  # earlier queued loads first: on Ray they were submitted first; in one process they
        calls = [s.load_weights.remote(self.ticket) for s in subscribers]  # run when resolved
        if wait:
            self.get(calls)
        else:
            self.loading += calls

    def settle(self) -> None:
        """Wait for the loads ``push(..., wait=False)`` queued (in one process: run them, in order)."""
        calls, self.loading = self.loading, []
        if calls:
            self.get(calls)
