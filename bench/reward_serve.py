"""Reward service throughput: @serve.batch vs one request per forward, N concurrent HTTP clients.

Both apps run the same tiny reward model on one local loopback Ray cluster, one replica each,
measured in turn with the same client load (bounded: a fixed request count per run). Prints a
table and the batched / unbatched throughput ratio (goal: >= 5x at 32 clients).

    python bench/reward_serve.py [--clients 32] [--requests 640] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from actors.cluster import local_ray  # noqa: E402
from actors.reward_service import reward_service  # noqa: E402
from reward.client import RewardClient  # noqa: E402
from rlhf.chat import format_completion, format_prompt  # noqa: E402
from rlhf.config import build_config  # noqa: E402
from rlhf.data.hhh import build_hhh  # noqa: E402


def in_process(model_dir: str, texts: list[str], batch: int, rounds: int = 8) -> float:
    """Texts per second of ``RewardScorer.score`` in this process, one torch thread, ``batch`` at a time."""
    import torch

    from reward.scorer import RewardScorer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        scorer = RewardScorer(model_dir)
        scorer.score(texts[:batch])
        t0 = time.perf_counter()
        for i in range(rounds):
            scorer.score(texts[i * batch : (i + 1) * batch])
        return round(rounds * batch / (time.perf_counter() - t0), 1)
    finally:
        torch.set_num_threads(threads)


def load(url: str, texts: list[str], clients: int, requests: int, health: bool = False) -> dict:
    """``requests`` single-text POSTs (or ``GET /health``) from ``clients`` threads; throughput and latency."""
    local = threading.local()
    latencies: list[float] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        client = getattr(local, "client", None) or RewardClient(url, retries=0, timeout_s=120)
        local.client = client
        t = time.perf_counter()
        client.health() if health else client.get_rewards([texts[i % len(texts)]])
        with lock:
            latencies.append(time.perf_counter() - t)

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(min(clients, requests))))  # warm-up: connections, first batches
        latencies.clear()
        t0 = time.perf_counter()
        list(pool.map(one, range(requests)))
        wall = time.perf_counter() - t0
    latencies.sort()
    return {
        "requests": requests,
        "wall_s": round(wall, 2),
        "req_per_s": round(requests / wall, 1),
        "p50_ms": round(1000 * statistics.median(latencies), 1),
        "p95_ms": round(1000 * latencies[int(0.95 * (len(latencies) - 1))], 1),
    }


def _our_processes(marker: str) -> list[int]:
    """PIDs of this bench's own Ray processes (descendants of this process) whose title has ``marker``."""
    import psutil

    out = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if marker in " ".join(proc.cmdline()):
                out.append(proc.pid)
        except psutil.Error:
            continue
    return out


STACK_KINDS = (  # first match wins
    ("model forward", ("torch/", "transformers/", "reward/scorer.py")),
    ("HTTP (uvicorn/starlette)", ("uvicorn", "starlette", "h11", "httptools", "http/client.py", "socket.py")),
    ("Serve (router, batching, replica)", ("ray/serve/",)),
    ("Ray core (RPC, object store)", ("ray/_private", "ray/_raylet", "grpc")),
    ("asyncio", ("asyncio/",)),
    ("threads parked (threading, queue, selectors)", ("threading.py", "queue.py", "selectors.py")),
)


def _stack_kind(stack: str) -> str:
    for kind, markers in STACK_KINDS:
        if any(m in stack for m in markers):
            return kind
    return "other"


def profile_batched(url: str, texts: list[str], clients: int, seconds: int = 8) -> dict | None:
    """py-spy over the Serve replica, the HTTP proxy and this client process while the batched
    service is under load: where each one's sampled (non-idle) stacks are, by kind."""
    import shutil
    import subprocess

    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        return None
    targets = {"replica": _our_processes("ServeReplica:batched"), "proxy": _our_processes("ProxyActor")}
    targets = {k: v[0] for k, v in targets.items() if v} | {"client": __import__("os").getpid()}
    rate = 50
    with tempfile.TemporaryDirectory(prefix="spy-") as tmp:
        procs = {
            name: subprocess.Popen(
                [
                    spy,
                    "record",
                    "--pid",
                    str(pid),
                    "--duration",
                    str(seconds),
                    "--rate",
                    str(rate),
                    "--format",
                    "raw",
                    "--nonblocking",
                    "--output",
                    f"{tmp}/{name}.txt",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for name, pid in targets.items()
        }
        load(url, texts, clients, requests=int(seconds * 80))  # keeps the service busy past the window
        out = {}
        for name, proc in procs.items():
            proc.wait(timeout=60)
            stacks = Path(f"{tmp}/{name}.txt")
            if not stacks.is_file():
                continue
            kinds: dict[str, int] = {}
            total = 0
            for line in stacks.read_text().splitlines():
                stack, _, count = line.rpartition(" ")
                kinds[_stack_kind(stack)] = kinds.get(_stack_kind(stack), 0) + int(count)
                total += int(count)
            out[name] = {
                "samples": total,
                "share": {k: round(n / max(total, 1), 3) for k, n in sorted(kinds.items(), key=lambda kv: -kv[1])},
            }
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests", type=int, default=640, help="per measured run (bounded load)")
    ap.add_argument("--rm-steps", type=int, default=5, help="training steps of the throwaway reward model")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--no-profile", action="store_true", help="skip the py-spy pass (needs py-spy: .[bench])")
    args = ap.parse_args()

    from reward.train import quick_reward_model

    texts = [format_prompt(ex.human) + format_completion(ex.answer) for ex in build_hhh(256, seed=7)]
    with tempfile.TemporaryDirectory(prefix="rm-bench-") as tmp:
        model_dir = quick_reward_model(Path(tmp) / "rm", n_pairs=300, steps=args.rm_steps)["model_dir"]
        base = ["serve.port=0", "serve.max_ongoing_requests=64"]
        variants = {
            "unbatched": [*base, "serve.max_batch_size=1", "serve.batch_wait_timeout_s=0"],
            "batched": [*base, f"serve.max_batch_size={args.clients}", "serve.batch_wait_timeout_s=0.01"],
        }
        results = {}
        with local_ray(num_cpus=2):
            for name, overrides in variants.items():
                cfg = build_config({}, overrides).serve
                with reward_service(model_dir, cfg, app_name=name, route_prefix=f"/{name}") as svc:
                    results[name] = load(svc.url, texts, args.clients, args.requests)
                    results[name]["forward_passes"] = RewardClient(svc.url).health()["batches"]
                    if name == "batched":  # the HTTP path alone: no model work at all
                        results["GET /health"] = load(svc.url, texts, args.clients, args.requests, health=True)
                        results["GET /health"]["forward_passes"] = 0
                        profile = None if args.no_profile else profile_batched(svc.url, texts, args.clients)
        forward = {f"batch_{b}": in_process(model_dir, texts, b) for b in (1, args.clients)}
    ratio = results["batched"]["req_per_s"] / results["unbatched"]["req_per_s"]
    summary = {
        "clients": args.clients,
        "results": results,
        "in_process_texts_per_s": forward,
        "ratio": round(ratio, 2),
        "goal": 5.0,
        "met": ratio >= 5.0,
        "profile": profile,
    }
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"reward service, tiny RM, 1 replica, {args.clients} concurrent HTTP clients, 1 text per request")
    print(f"{'variant':<10} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'forwards':>9} {'requests':>9}")
    for name, r in results.items():
        print(
            f"{name:<10} {r['req_per_s']:>8} {r['p50_ms']:>8} {r['p95_ms']:>8} {r['forward_passes']:>9} {r['requests']:>9}"
        )
    print(f"batched / unbatched throughput: {ratio:.2f}x (goal >= 5x: {'met' if ratio >= 5 else 'MISSED'})")
    b1, bn = forward["batch_1"], forward[f"batch_{args.clients}"]
    print(f"where the time goes: model alone (1 thread) {b1} texts/s at batch 1, {bn} at batch {args.clients}")
    print(
        f"  ({bn / b1:.2f}x from batching the forward); HTTP path alone ({args.clients} clients): "
        f"{results['GET /health']['req_per_s']} req/s"
    )
    for name, prof in (profile or {}).items():
        kinds = ", ".join(f"{k} {100 * v:.0f} %" for k, v in prof["share"].items())
        print(f"  py-spy {name} ({prof['samples']} samples): {kinds}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
