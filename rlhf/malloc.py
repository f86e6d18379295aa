"""glibc allocator settings for processes that run torch on CPU.

By default glibc serves every allocation above a moving threshold (128 KiB, rising to at most
32 MiB) with a fresh ``mmap`` and returns it to the kernel on ``free``, and it trims the heap top
above 128 KiB. A CPU forward pass allocates and frees its activation buffers (a batch of 32-64
texts: tens of MiB) on every call, so each call faults its memory in again: 200-400 minor page
faults per scored text, 20-40 % of the reward model's CPU time (docs/results.md, "Reward service
throughput"). Raising the mmap and trim thresholds keeps freed buffers in the heap for the next
call. The cost is resident memory: up to ``THRESHOLD`` of freed memory may stay mapped.

``tune_malloc()`` is called by every process of ours that runs torch (the CLI, the Ray actors,
the Serve replicas, the Ray Train workers, the benchmarks: the same setting for every system a
benchmark compares). ``RLHF_MALLOC_TUNING=0`` turns it off; off glibc (macOS, musl) it does
nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
THRESHOLD = 1 << 30  # 1 GiB: larger than any activation buffer of the presets that run on CPU

_state: dict[str, bool] = {}


def tune_malloc() -> bool:
    """Raise glibc's mmap and trim thresholds for this process, once; True when they are set."""
    if "tuned" in _state:
        return _state["tuned"]
    _state["tuned"] = False
    if os.environ.get("RLHF_MALLOC_TUNING", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc: nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _state["tuned"] = bool(mallopt(M_MMAP_THRESHOLD, THRESHOLD) and mallopt(M_TRIM_THRESHOLD, THRESHOLD))
    return _state["tuned"]
