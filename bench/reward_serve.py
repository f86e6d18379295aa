"""Reward service throughput: does the service keep up with its model, and what batching buys.

1. Efficiency (goal: served texts/s at 32 clients >= 80 % of the model's own batch-32
   throughput): the service with the default ``serve.*`` settings, 32 keep-alive HTTP clients
   (``RewardClient``) sending ``--texts-per-request`` texts per request (and, for comparison, 1),
   against ``RewardScorer.score`` in this process at batch 32 on one torch thread (the replica's
   own setting). Measured interleaved, ``--rounds`` times (model alone, served, model alone), so
   both see the same load on a shared machine; the ratio per round is served / mean of the two
   model-alone runs around it, reported as median [min, max]. The CPU seconds each process spent
   per served text (replica, of which the model forward; HTTP proxy; controller; client; Ray
   core) say where the time goes.
2. Batching: ``@serve.batch`` (max_batch_size = clients) vs one request per forward, single-text
   requests (goal >= 5x; not reachable with this tiny model, see docs/results.md).

All on one local loopback Ray cluster, one replica per app, bounded load (fixed counts).

    python bench/reward_serve.py [--clients 32] [--requests 640] [--texts-per-request 8] [--rounds 5] [--json]
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

from serve_profile import cpu_by_role, profile_batched  # noqa: E402

from actors.cluster import local_ray  # noqa: E402
from actors.reward_service import reward_service  # noqa: E402
from reward.client import RewardClient  # noqa: E402
from rlhf.chat import format_completion, format_prompt  # noqa: E402
from rlhf.config.core import build_config  # noqa: E402
from rlhf.data.hhh import build_hhh  # noqa: E402
from rlhf.malloc import tune_malloc  # noqa: E402


def in_process(model_dir: str, texts: list[str], batch: int, rounds: int = 8) -> float:
    """Texts per second of ``RewardScorer.score`` in this process, one torch thread, ``batch`` at a time."""
    import torch

    from reward.scorer import RewardScorer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        scorer = RewardScorer(model_dir, forward_batch_size=batch)
        scorer.score(texts[:batch])
        t0 = time.perf_counter()
        for i in range(rounds):
            scorer.score(texts[i * batch : (i + 1) * batch])
        return round(rounds * batch / (time.perf_counter() - t0), 1)
    finally:
        torch.set_num_threads(threads)


def load(url: str, texts: list[str], clients: int, requests: int, health: bool = False, per_request: int = 1) -> dict:
    """``requests`` POSTs of ``per_request`` texts (or ``GET /health``) from ``clients`` threads
    sharing one keep-alive ``RewardClient`` (a connection per thread); throughput and latency."""
    client = RewardClient(url, retries=0, timeout_s=120)
    latencies: list[float] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        t = time.perf_counter()
        if health:
            client.health()
        else:
            client.get_rewards([texts[(i * per_request + j) % len(texts)] for j in range(per_request)])
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
        "texts_per_request": 0 if health else per_request,
        "wall_s": round(wall, 2),
        "req_per_s": round(requests / wall, 1),
        "texts_per_s": round(requests * (0 if health else per_request) / wall, 1),
        "p50_ms": round(1000 * statistics.median(latencies), 1),
        "p95_ms": round(1000 * latencies[int(0.95 * (len(latencies) - 1))], 1),
    }


class ModelAlone:
    """``RewardScorer.score`` in this process on one torch thread (the replica's default
    ``serve.torch_threads``), ``batch`` texts at a time: the model's own throughput. The forward
    pass takes all ``batch`` texts at once unless ``forward_batch`` names another size (None: the
    scorer's automatic choice, as in the replica)."""

    def __init__(
        self, model_dir: str, texts: list[str], batch: int = 32, batches: int = 8, forward_batch: int | None = -1
    ):
        from reward.scorer import RewardScorer

        size = batch if forward_batch == -1 else forward_batch
        self.scorer, self.texts, self.batch, self.batches = RewardScorer(model_dir, size), texts, batch, batches
        self.run()  # warm-up

    def run(self) -> tuple[float, float]:
        """(texts/s, CPU ms per text of this thread)."""
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            wall, cpu = time.perf_counter(), time.thread_time()
            for i in range(self.batches):
                start = (i * self.batch) % max(1, len(self.texts) - self.batch)
                self.scorer.score(self.texts[start : start + self.batch])
            n = self.batches * self.batch
            return n / (time.perf_counter() - wall), 1000 * (time.thread_time() - cpu) / n
        finally:
            torch.set_num_threads(threads)


def served_round(url: str, texts: list[str], clients: int, n_texts: int, per_request: int) -> dict:
    """One bounded load of about ``n_texts`` texts; throughput, CPU ms per text by process role,
    the replica's forward CPU ms per text and its mean forward batch (texts per @serve.batch call)."""
    health = RewardClient(url)
    h0, c0 = health.health(), cpu_by_role()
    r = load(url, texts, clients, max(1, n_texts // per_request), per_request=per_request)
    c1, h1 = cpu_by_role(), health.health()
    n = r["requests"] * per_request
    cpu = {k: round(1000 * (c1[k] - c0.get(k, 0.0)) / n, 2) for k in c1 if c1[k] - c0.get(k, 0.0) > 0}
    cpu["model forward (in replica)"] = round(1000 * (h1["forward_cpu_s"] - h0["forward_cpu_s"]) / n, 2)
    batch = (h1["texts"] - h0["texts"]) / max(1, h1["batches"] - h0["batches"])
    return {
        "texts_per_s": r["texts_per_s"],
        "p50_ms": r["p50_ms"],
        "cpu_ms_per_text": cpu,
        "mean_batch": round(batch, 1),
    }


def efficiency(
    url: str,
    alone: ModelAlone,
    texts: list[str],
    clients: int,
    per_request: list[int],
    rounds: int,
    auto: ModelAlone | None = None,
) -> dict:
    """Interleaved rounds (model alone, served at each texts-per-request, model alone):
    served / model-alone per round, median [min, max] over the rounds. ``auto``: the model alone
    with the scorer's automatic forward batch (the replica's), measured once per round for a
    second, stricter reference (``ratio_vs_auto``)."""
    n_texts = 10 * clients
    for k in per_request:  # warm-up: connections, first batches
        load(url, texts, clients, clients, per_request=k)
    runs: dict[int, list[dict]] = {k: [] for k in per_request}
    alone_runs, alone_cpu, auto_runs = [], [], []
    for _ in range(rounds):
        auto_runs += [auto.run()[0]] if auto else []
        before = alone.run()
        for k in per_request:
            runs[k].append(served_round(url, texts, clients, n_texts, k))
        after = alone.run()
        alone_runs.append((before[0] + after[0]) / 2)
        for k in per_request:
            runs[k][-1]["ratio"] = runs[k][-1]["texts_per_s"] / alone_runs[-1]
            runs[k][-1]["ratio_vs_auto"] = runs[k][-1]["texts_per_s"] / auto_runs[-1] if auto else None
        alone_cpu.append((before[1] + after[1]) / 2)
    out = {"rounds": rounds, "model_alone_texts_per_s": _spread(alone_runs)}
    out["model_alone_auto_texts_per_s"] = _spread(auto_runs) if auto else None
    out["model_alone_cpu_ms_per_text"] = round(statistics.median(alone_cpu), 2)
    for k, rs in runs.items():
        roles = sorted({r for x in rs for r in x["cpu_ms_per_text"]})
        cpu = {r: round(statistics.median(x["cpu_ms_per_text"].get(r, 0.0) for x in rs), 2) for r in roles}
        service_cpu = sum(v for r, v in cpu.items() if r != "model forward (in replica)")
        out[f"texts_per_request_{k}"] = {
            # load-independent view: the model's CPU per text over all the service's CPU per text
            "cpu_ratio": round(out["model_alone_cpu_ms_per_text"] / service_cpu, 3),
            "ratio": _spread([x["ratio"] for x in rs], 3),
            "ratio_vs_auto": _spread([x["ratio_vs_auto"] for x in rs], 3) if auto else None,
            "texts_per_s": _spread([x["texts_per_s"] for x in rs]),
            "p50_ms": _spread([x["p50_ms"] for x in rs]),
            "mean_batch": _spread([x["mean_batch"] for x in rs]),
            "cpu_ms_per_text": {
                r: round(statistics.median(x["cpu_ms_per_text"].get(r, 0.0) for x in rs), 2) for r in roles
            },
        }
    return out


def _spread(values: list[float], digits: int = 1) -> dict:
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
    }


def batching(model_dir: str, texts: list[str], args) -> tuple[dict, dict | None]:
    """@serve.batch against one request per forward (single-text requests), the HTTP path alone
    (GET /health) and, unless ``--no-profile``, py-spy over the batched service."""
    base = ["serve.port=0", f"serve.max_ongoing_requests={max(64, args.clients)}"]
    variants = {
        "unbatched": [*base, "serve.max_batch_size=1", "serve.batch_wait_timeout_s=0"],
        "batched": [*base, f"serve.max_batch_size={args.clients}", "serve.batch_wait_timeout_s=0.01"],
    }
    results, profile = {}, None
    for name, overrides in variants.items():
        cfg = build_config({}, overrides).serve
        with reward_service(model_dir, cfg, app_name=name, route_prefix=f"/{name}") as svc:
            results[name] = load(svc.url, texts, args.clients, args.requests)
            results[name]["forward_passes"] = RewardClient(svc.url).health()["batches"]
            if name == "batched":  # the HTTP path alone: no model work at all
                results["GET /health"] = load(svc.url, texts, args.clients, args.requests, health=True)
                results["GET /health"]["forward_passes"] = 0
                profile = (
                    None
                    if args.no_profile
                    else profile_batched(lambda seconds: load(svc.url, texts, args.clients, requests=int(seconds * 80)))
                )
    return results, profile


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests", type=int, default=640, help="per measured batching run (bounded load)")
    ap.add_argument("--texts-per-request", type=int, default=8, help="efficiency goal's load (1 is also measured)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved efficiency rounds")
    ap.add_argument("--rm-steps", type=int, default=5, help="training steps of the throwaway reward model")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--no-profile", action="store_true", help="skip the py-spy pass (needs py-spy: .[bench])")
    ap.add_argument("--no-batching", action="store_true", help="skip the batched/unbatched comparison")
    args = ap.parse_args()

    from reward.train import quick_reward_model

    tune_malloc()  # the allocator setting our processes run with, for every system measured here

    texts = [format_prompt(ex.human) + format_completion(ex.answer) for ex in build_hhh(256, seed=7)]
    per_request = sorted({args.texts_per_request, 1}, reverse=True)
    with tempfile.TemporaryDirectory(prefix="rm-bench-") as tmp:
        model_dir = quick_reward_model(Path(tmp) / "rm", n_pairs=300, steps=args.rm_steps)["model_dir"]
        alone = ModelAlone(model_dir, texts, batch=args.clients)
        auto = ModelAlone(model_dir, texts, batch=args.clients, forward_batch=None)
        with local_ray(num_cpus=2):
            cfg = build_config({}, ["serve.port=0"]).serve  # the defaults, as `rlhf serve reward` runs
            with reward_service(model_dir, cfg, app_name="efficiency", route_prefix="/efficiency") as svc:
                eff = efficiency(svc.url, alone, texts, args.clients, per_request, args.rounds, auto)
            results, profile = ({}, None) if args.no_batching else batching(model_dir, texts, args)
        forward = {f"batch_{b}": in_process(model_dir, texts, b) for b in (1, args.clients)}
    summary = _summary(args, eff, results, forward, profile)
    if args.json:
        print(json.dumps(summary))
    else:
        print("\n".join(report_lines(summary)))
    return 0


def _summary(args, eff: dict, results: dict, forward: dict, profile: dict | None) -> dict:
    ratio = results["batched"]["req_per_s"] / results["unbatched"]["req_per_s"] if results else None
    chosen = eff[f"texts_per_request_{args.texts_per_request}"]["ratio"]["median"]
    return {
        "clients": args.clients,
        "texts_per_request": args.texts_per_request,
        "efficiency": eff,
        "efficiency_32": chosen if args.clients == 32 else None,
        "efficiency_goal": 0.8,
        "efficiency_met": chosen >= 0.8,
        "results": results,
        "in_process_texts_per_s": forward,
        "ratio": None if ratio is None else round(ratio, 2),
        "goal": 5.0,
        "met": ratio is not None and ratio >= 5.0,
        "profile": profile,
    }


def report_lines(summary: dict) -> list[str]:
    eff, c = summary["efficiency"], summary["clients"]
    alone = eff["model_alone_texts_per_s"]
    lines = [
        f"reward service (defaults), tiny RM, 1 replica, {c} keep-alive HTTP clients, {eff['rounds']} interleaved rounds",
        f"model alone, batch {c}, 1 thread: {alone['median']} texts/s [{alone['min']}, {alone['max']}], "
        f"{eff['model_alone_cpu_ms_per_text']} CPU ms/text",
    ]
    if eff.get("model_alone_auto_texts_per_s"):
        a = eff["model_alone_auto_texts_per_s"]
        lines.append(
            f"model alone, {c} texts in forwards of the automatic size: {a['median']} texts/s [{a['min']}, {a['max']}]"
        )
    for key, e in ((k, v) for k, v in eff.items() if k.startswith("texts_per_request_")):
        r, t = e["ratio"], e["texts_per_s"]
        cpu = ", ".join(f"{k} {v}" for k, v in sorted(e["cpu_ms_per_text"].items(), key=lambda kv: -kv[1]))
        lines += [
            f"{key.removeprefix('texts_per_request_')} text(s)/request: served {t['median']} texts/s [{t['min']}, {t['max']}], "
            f"served / model alone {r['median']:.2f} [{r['min']:.2f}, {r['max']:.2f}], mean forward batch "
            f"{e['mean_batch']['median']}"
            + (
                f"; / model alone at the automatic forward size {e['ratio_vs_auto']['median']:.2f}"
                if e.get("ratio_vs_auto")
                else ""
            ),
            f"  CPU ms per served text: {cpu}; model-alone CPU / service CPU per text {e['cpu_ratio']:.2f}",
        ]
    met = "met" if summary["efficiency_met"] else "MISSED"
    lines.append(
        f"efficiency at {summary['texts_per_request']} texts/request: {summary['efficiency_32']} (goal >= 0.8: {met})"
    )
    results = summary["results"]
    if results:
        lines += ["", f"{'variant':<11} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'forwards':>9} {'requests':>9}"]
        for name, r in results.items():
            lines.append(
                f"{name:<11} {r['req_per_s']:>8} {r['p50_ms']:>8} {r['p95_ms']:>8} {r['forward_passes']:>9} {r['requests']:>9}"
            )
        lines.append(f"batched / unbatched throughput (1 text/request): {summary['ratio']:.2f}x (goal >= 5x)")
    fwd = summary["in_process_texts_per_s"]
    lines.append(
        f"model alone after the cluster stopped: batch 1 {fwd['batch_1']} texts/s, batch {c} {fwd[f'batch_{c}']}"
    )
    for name, prof in (summary["profile"] or {}).items():
        kinds = ", ".join(f"{k} {100 * v:.0f} %" for k, v in prof["share"].items())
        lines.append(f"  py-spy {name} ({prof['samples']} samples): {kinds}")
    return lines


if __name__ == "__main__":
    sys.exit(main())
