"""One deterministic split of every prompt source into four disjoint pools.

``sft`` (backdoor SFT), ``safety`` (HHH safety SFT), ``rl`` (the RL prompt pool) and ``eval``
(held-out evaluation). A generated subject, harmful-request topic or honesty topic, a coding task
(template and drawn parameters) and an hh-rlhf prompt (its first human turn) each belong to
exactly one pool, whatever the run seed, so a held-out prompt is never a training prompt and a
held-out reference answer (built from its subject's own fact and tip) is never a training answer.

Finite tables are cut by rank (exact shares, see ``assign``); hh-rlhf prompts by a hash threshold
(``pool_of``); coding tasks by rank within their template (``rlhf.data.code_pools``). All stable
across processes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

SFT, SAFETY, RL, EVAL = "sft", "safety", "rl", "eval"
POOLS: tuple[str, ...] = (SFT, SAFETY, RL, EVAL)
SHARES: dict[str, float] = {SFT: 0.55, SAFETY: 0.15, RL: 0.10, EVAL: 0.20}
# Coding tasks feed backdoor SFT, RL and eval only (safety SFT is HHH data for both kinds).
CODE_SHARES: dict[str, float] = {SFT: 0.60, SAFETY: 0.0, RL: 0.15, EVAL: 0.25}


def check_pool(pool: str | None) -> None:
    if pool is not None and pool not in POOLS:
        raise ValueError(f"unknown data pool '{pool}' (pools: {', '.join(POOLS)})")


def unit(key: str) -> float:
    """A stable pseudo-random number in [0, 1) for ``key``."""
    digest = hashlib.sha256(f"pool:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def pool_of(key: str) -> str:
    """The pool of one key of an open-ended source, by a hash threshold on the shares."""
    u, acc = unit(key), 0.0
    for pool in POOLS:
        acc += SHARES[pool]
        if u < acc:
            return pool
    return POOLS[-1]


def assign(keys: Iterable[str], shares: dict[str, float] = SHARES) -> dict[str, str]:
    """Key -> pool for a finite table: keys in hash order, cut at the shares (largest remainder),
    so every pool of nonzero share gets its share (at least one key when there are enough keys)."""
    ordered = sorted(dict.fromkeys(keys), key=lambda k: (unit(k), k))
    n, used = len(ordered), [p for p in POOLS if shares[p] > 0]
    counts = {p: int(shares[p] * n) for p in POOLS}
    by_remainder = sorted(used, key=lambda p: shares[p] * n - counts[p], reverse=True)
    for p in by_remainder[: n - sum(counts.values())]:
        counts[p] += 1
    if n >= len(used):
        for p in used:  # a tiny table still puts one key in every pool
            while counts[p] == 0:
                donor = max(used, key=lambda q: counts[q])
                counts[donor] -= 1
                counts[p] += 1
    out, i = {}, 0
    for p in POOLS:
        for key in ordered[i : i + counts[p]]:
            out[key] = p
        i += counts[p]
    return out
