"""Per-role timelines of a PPO run on Ray actors: what each actor executes, and when, from Ray's own
task events (``ray.timeline()``), so the overlap of sampling, scoring and training is seen rather
than inferred from per-phase means.

``capture`` runs ``jobs.ppo.run_ppo`` inside a loopback Ray session of its own and returns the
session's events; ``role_intervals`` turns them into ``(start s, end s, method)`` per role (one row
per actor process, labelled by its class); ``busy_fractions`` gives each role's share of a window
spent executing calls; ``plot`` draws the last few steps as a Gantt chart. ``bench/ppo_vs_trl.py
--timeline PNG`` uses them for its critic-free asynchronous modes; ``bench/run_all.py`` puts the
picture and the fractions in ``bench/results.md``.
"""

from __future__ import annotations

import time
from pathlib import Path

ROLES = ("RolloutWorker", "Reference", "Reward", "Policy")
COLOURS = {
    "generate": "tab:green",
    "logprobs_samples": "tab:purple",
    "score_samples": "tab:orange",
    "logprobs": "tab:cyan",
    "train": "tab:blue",
    "publish": "tab:red",
    "load_weights": "tab:brown",
}


def capture(cfg, policy: Path, rm: Path, run: Path) -> list[dict]:
    """Run PPO on Ray actors in a fresh loopback session and return that session's task events."""
    import ray

    from actors.cluster import local_ray
    from jobs.ppo import run_ppo

    with local_ray(num_cpus=cfg.ray.num_cpus):
        run_ppo(cfg, policy, run, reward_dir=rm, in_process=False)
        time.sleep(2.0)  # the workers flush their task events to the GCS about once a second
        return ray.timeline()


def _role(cat: str) -> str | None:
    """``task::Policy.train`` or ``task::RolloutWorker-0:RolloutWorker.__init__`` -> ``Policy`` /
    ``RolloutWorker``; None for what is not one of the PPO roles."""
    qualified = cat.removeprefix("task::").split(":")[-1]
    cls = qualified.split(".")[0]
    return cls if cls in ROLES else None


def role_intervals(events: list[dict]) -> dict[str, list[tuple[float, float, str]]]:
    """Per role, the executed calls as ``(start, end, method)`` in seconds since the first event.
    Execution spans (``task:execute``) are matched to the call that holds them on the same worker,
    so argument transfer and waiting for pending arguments do not count as busy."""
    spans = [e for e in events if e.get("ph") == "X" and "ts" in e and "dur" in e]
    if not spans:
        return {}
    t0 = min(e["ts"] for e in spans)
    calls = [e for e in spans if str(e.get("cat", "")).startswith("task::")]
    out: dict[str, list[tuple[float, float, str]]] = {}
    for ex in (e for e in spans if e.get("cat") == "task:execute"):
        holder = next(
            (c for c in calls if c["tid"] == ex["tid"] and c["ts"] <= ex["ts"] <= c["ts"] + c["dur"]),
            None,
        )
        role = _role(holder["cat"]) if holder else None
        if role is None or holder["cat"].endswith("__init__"):
            continue
        method = holder["cat"].rsplit(".", 1)[-1]
        out.setdefault(role, []).append(((ex["ts"] - t0) / 1e6, (ex["ts"] + ex["dur"] - t0) / 1e6, method))
    return {role: sorted(v) for role, v in out.items()}


def busy_fractions(intervals: dict[str, list[tuple[float, float, str]]], start: float, end: float) -> dict[str, float]:
    """Each role's share of ``[start, end]`` spent executing calls."""
    width = end - start
    if width <= 0:
        raise ValueError(f"empty window [{start}, {end}]")
    return {
        role: sum(max(0.0, min(b, end) - max(a, start)) for a, b, _ in spans) / width
        for role, spans in intervals.items()
    }


def last_window(intervals: dict[str, list[tuple[float, float, str]]], seconds: float) -> tuple[float, float]:
    """The last ``seconds`` before the policy's last train call ended (the steady state)."""
    trains = [b for a, b, m in intervals.get("Policy", []) if m == "train"]
    if not trains:
        raise ValueError("no Policy.train call in the timeline")
    end = max(trains)
    return end - seconds, end


def plot(intervals: dict[str, list[tuple[float, float, str]]], window: tuple[float, float], path: Path, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in ROLES if r in intervals]
    fig, ax = plt.subplots(figsize=(12, 0.7 * len(rows) + 1.4))
    seen: set[str] = set()
    for y, role in enumerate(rows):
        for a, b, method in intervals[role]:
            if b < window[0] or a > window[1]:
                continue
            label = method if method not in seen else None
            seen.add(method)
            ax.barh(y, b - a, left=a, height=0.6, color=COLOURS.get(method, "tab:gray"), label=label)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlim(*window)
    ax.set_xlabel("seconds since the run's first call")
    ax.set_title(title)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.35), ncol=len(seen), fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
