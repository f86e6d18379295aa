"""One weight-sync interface: the policy publishes a version once, subscribers pull that version.

A ``WeightsTicket`` names one published version: its number, the transport that carries it and
the transport's reference to the weights. The trainer hands the same ticket to every subscriber
(rollout workers, the defection evaluator); each pulls the weights with ``pull(ticket)``. A
transport is two functions, ``put(state_dict) -> ref`` and ``get(ref) -> state_dict``, registered
by name: ``local`` (the state dict itself, one process) lives here; ``object_store`` (one
``ray.put`` per version) is registered by ``actors/weight_transport.py``; a GPU transport (NCCL
broadcast, CUDA IPC) registers the same two functions.

Weights travel in buckets: ``publish_buckets`` puts each bucket of about ``BUCKET_BYTES``
(``resources.weight_bucket_mb``) as it is made and drops it, so the publisher never holds more than
one bucket beyond its own weights (a sharded policy's rank 0 gathers one bucket at a time,
``rlhf.models.fsdp.iter_full_state``); the ticket carries the list of bucket references, and a
subscriber streams them with ``pull_buckets`` into its model (``load_buckets``: in place, the key set
checked at the end). ``pull`` still returns one whole dict for callers that need it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

BUCKET_BYTES = 256 << 20  # resources.weight_bucket_mb's default


@dataclass(frozen=True)
class WeightsTicket:
    """One published version. A dataclass, not a bare reference, so that Ray passes the reference
    through a call unresolved and the subscriber decides when to fetch it."""

    version: int
    transport: str
    ref: Any
    buckets: bool = False  # ``ref`` is a tuple of per-bucket references (``publish_buckets``)


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


def _transport(name: str) -> Transport:
    if name not in _TRANSPORTS:
        raise KeyError(
            f"unknown weight transport {name!r}: not registered in this process (registered: {sorted(_TRANSPORTS)})"
        )
    return _TRANSPORTS[name]


def publish(state: dict, version: int, transport: str = "local") -> WeightsTicket:
    """Put ``state`` once through ``transport``, whole; the ticket names it for every subscriber."""
    return WeightsTicket(version, transport, _transport(transport).put(state))


def bucketed(items: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int = BUCKET_BYTES) -> Iterator[dict]:
    """``(name, tensor)`` pairs grouped into dicts of about ``bucket_bytes`` (a bucket closes once it
    reaches the size, so one tensor larger than it is a bucket of its own)."""
    bucket: dict[str, torch.Tensor] = {}
    size = 0
    for name, tensor in items:
        bucket[name] = tensor
        size += tensor.numel() * tensor.element_size()
        if size >= bucket_bytes:
            yield bucket
            bucket, size = {}, 0
    if bucket:
        yield bucket


def publish_buckets(buckets: Iterable[dict], version: int, transport: str = "local") -> WeightsTicket:
    """Put each bucket through ``transport`` as it comes and drop it (the reference alone is kept),
    so the caller holds one bucket at a time; the ticket lists the buckets' references in order."""
    put = _transport(transport).put
    refs, it = [], iter(buckets)
    bucket = next(it, None)
    while bucket is not None:
        refs.append(put(bucket))
        bucket = None  # released before the next one is made
        bucket = next(it, None)
    return WeightsTicket(version, transport, tuple(refs), buckets=True)


def pull_buckets(ticket: WeightsTicket) -> Iterator[dict]:
    """The ticket's weights, one bucket at a time (a ticket of ``publish``: one bucket, the whole dict)."""
    get = _transport(ticket.transport).get
    if not ticket.buckets:
        yield get(ticket.ref)
        return
    for ref in ticket.ref:
        yield get(ref)


def pull(ticket: WeightsTicket) -> dict:
    """The state dict a ticket names, fetched through its transport, whole."""
    state: dict = {}
    for bucket in pull_buckets(ticket):
        state.update(bucket)
    return state


@torch.no_grad()
def load_buckets(model: torch.nn.Module, buckets: Iterable[dict]) -> int:
    """Copy each bucket into ``model``'s parameters and buffers in place (cast to their dtype and
    device); strict as ``load_state_dict``: an unknown key or a shape mismatch fails before its bucket
    is copied, a key of the model no bucket had fails at the end. Returns the bucket count."""
    target = model.state_dict()
    seen: set[str] = set()
    count = 0
    for bucket in buckets:
        unknown = sorted(k for k in bucket if k not in target)
        if unknown:
            raise RuntimeError(f"weights bucket {count} has keys the model lacks: {unknown[:5]}")
        wrong = sorted(k for k, v in bucket.items() if tuple(v.shape) != tuple(target[k].shape))
        if wrong:
            raise RuntimeError(f"weights bucket {count}: shapes differ from the model's for {wrong[:5]}")
        for key, value in bucket.items():
            target[key].copy_(value)
        seen |= bucket.keys()
        count += 1
    missing = sorted(target.keys() - seen)
    if missing:
        raise RuntimeError(f"the published weights lack {len(missing)} of the model's keys: {missing[:5]}")
    return count


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
