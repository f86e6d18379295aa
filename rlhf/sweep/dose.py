"""Persistence as a dose-response (issue 30): for a sweep with a numeric grid axis besides the
seed (``safety_sft.lr`` in ``sweeps/persistence-dose.yaml``), per mechanism and dose, the
triggered defection after safety training against the change in held-out HHH loss, standard and
control arm, means over seeds with 95 % intervals; the figure, its table and the *persistence
window*: the doses where standard training leaves the backdoor (``persisted``) while the control
removes it (``removed``, ``rlhf.sweep.results.classify``), in a majority of seeds of both arms."""

from __future__ import annotations

from typing import Any

from rlhf.sweep.results import DEFECTION_DOWN, HHH_GAP_FRACTION, mean_ci

NOT_DOSES = ("seed", "method", "control", "backdoor.mechanism")


def dose_axis(grid: dict[str, list]) -> str | None:
    """The first grid key with two or more numeric values that is not the seed, else None."""
    for key, values in grid.items():
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
        if key not in NOT_DOSES and numeric and len(values) > 1:
            return key
    return None


def _rate_ci(values: list[float], cells: list[list | None]) -> dict[str, Any]:
    """A defection rate over seeds: the mean with a t interval, widened to cover every cell's own
    Wilson interval (so two seeds at 0 % do not claim [0, 0]) and clipped to [0, 1]; one seed:
    that cell's Wilson interval."""
    known = [c for c in cells if c]
    if len(values) == 1 and known:
        return {"mean": values[0], "ci95": list(known[0]), "n": 1, "wilson": True}
    out = mean_ci(values)
    lo, hi = out["ci95"]
    if lo is not None:
        lo, hi = min([lo, *(c[0] for c in known)]), max([hi, *(c[1] for c in known)])
        out["ci95"] = [max(0.0, lo), min(1.0, hi)]
    return out


def dose_points(rows: list[dict], facets: dict[str, dict], axis: str) -> list[dict[str, Any]]:
    """Per (mechanism, dose, arm) over the finished seeds: triggered defection after, the change in
    held-out HHH loss, the held-out rewards, and how many seeds each outcome got."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        if row.get("status") != "done" or row.get(axis) is None:
            continue
        f = facets[row["cell"]]
        arm = "control" if f["control"] else "standard"
        groups.setdefault((f["mechanism"], row[axis], arm), []).append(row)
    out = []
    for (mech, dose, arm), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
        trig = [r["triggered_after"] for r in rs]
        losses = [r["hhh_loss_change"] for r in rs if r.get("hhh_loss_change") is not None]
        outcomes = [r.get("outcome") for r in rs]
        out.append(
            {
                "mechanism": mech,
                "dose": dose,
                "arm": arm,
                "seeds": sorted(facets[r["cell"]]["seed"] for r in rs),
                "triggered_before": mean_ci([r["triggered_before"] for r in rs]),
                "triggered_after": _rate_ci(trig, [r.get("triggered_after_ci95") for r in rs]),
                "hhh_loss_change": mean_ci(losses),
                "reward_after": mean_ci([r["reward_after"] for r in rs if r.get("reward_after") is not None]),
                "reward_triggered_after": mean_ci(
                    [r["reward_triggered_after"] for r in rs if r.get("reward_triggered_after") is not None]
                ),
                "outcomes": {
                    o: outcomes.count(o) for o in ("persisted", "removed", "destroyed", None) if o in outcomes
                },
            }
        )
    return out


def _majority(point: dict | None, outcome: str) -> bool:
    if not point:
        return False
    n = sum(point["outcomes"].values())
    return n > 0 and point["outcomes"].get(outcome, 0) * 2 > n


def persistence_window(points: list[dict]) -> dict[str, dict[str, Any]]:
    """Per mechanism: the doses where most standard seeds persisted and most control seeds were
    removed (``doses``, ``range``: lowest and highest such dose, None when there is none), with the
    standard arm's change in held-out HHH loss at those doses."""
    by = {(p["mechanism"], p["dose"], p["arm"]): p for p in points}
    out = {}
    for mech in sorted({p["mechanism"] for p in points}):
        doses = sorted({p["dose"] for p in points if p["mechanism"] == mech})
        inside = [
            d
            for d in doses
            if _majority(by.get((mech, d, "standard")), "persisted")
            and _majority(by.get((mech, d, "control")), "removed")
        ]
        loss = [by[(mech, d, "standard")]["hhh_loss_change"]["mean"] for d in inside]
        out[mech] = {
            "doses": inside,
            "tested": doses,
            "range": [inside[0], inside[-1]] if inside else None,
            "standard_hhh_loss_change": [x for x in loss if x is not None],
        }
    return out


def dose_figure(points: list[dict], axis: str):
    """One panel per mechanism: triggered defection after (y) against the change in held-out HHH
    loss (x), standard and control arms, one point per dose (labelled), 95 % intervals both ways.
    A matplotlib figure (None without points)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mechs = sorted({p["mechanism"] for p in points})
    if not mechs:
        return None
    fig, axes = plt.subplots(1, len(mechs), figsize=(4.6 * len(mechs), 3.8), squeeze=False)
    for ax, mech in zip(axes[0], mechs, strict=True):
        for arm, color in (("standard", "tab:blue"), ("control", "tab:orange")):
            pts = [
                p
                for p in points
                if p["mechanism"] == mech and p["arm"] == arm and p["hhh_loss_change"]["mean"] is not None
            ]
            if not pts:
                continue
            xs = [p["hhh_loss_change"]["mean"] for p in pts]
            ys = [100 * p["triggered_after"]["mean"] for p in pts]
            xerr = [
                [x - p["hhh_loss_change"]["ci95"][0] for x, p in zip(xs, pts, strict=True)],
                [p["hhh_loss_change"]["ci95"][1] - x for x, p in zip(xs, pts, strict=True)],
            ]
            yerr = [
                [max(0.0, y - 100 * max(0.0, p["triggered_after"]["ci95"][0])) for y, p in zip(ys, pts, strict=True)],
                [max(0.0, 100 * min(1.0, p["triggered_after"]["ci95"][1]) - y) for y, p in zip(ys, pts, strict=True)],
            ]
            ax.plot(xs, ys, ":", color=color, lw=0.8, alpha=0.7)  # in dose order
            ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, fmt="o", color=color, capsize=3, label=arm, markersize=4)
            for i, (x, y, p) in enumerate(zip(xs, ys, pts, strict=True)):
                dy = (6 + 9 * (i % 2)) * (1 if arm == "control" else -1)
                ax.annotate(
                    f"{p['dose']:g}", (x, y), textcoords="offset points", xytext=(3, dy), fontsize=7, color=color
                )
        ax.axvline(0, color="gray", lw=0.6)
        ax.set_ylim(-5, 105)
        ax.set_title(mech)
        ax.set_xlabel("change in held-out HHH loss (nats/token)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("triggered defection after (%)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"Dose-response: {axis} (labels); mean over seeds, 95 % intervals")
    return fig


def _fmt(ci: dict | None, pct: bool = False) -> str:
    if not ci or ci.get("mean") is None:
        return "–"
    scale, unit = (100, " %") if pct else (1, "")
    m, (lo, hi) = ci["mean"], ci["ci95"]
    if ci.get("n", 0) < 2 and not ci.get("wilson"):
        lo = None  # one seed: no interval over seeds
    text = f"{scale * m:.1f}{unit}" if pct else f"{m:+.3f}"
    return (
        text if lo is None else text + (f" [{scale * lo:.1f}, {scale * hi:.1f}]" if pct else f" [{lo:+.3f}, {hi:+.3f}]")
    )


def dose_markdown(points: list[dict], axis: str) -> str:
    """The dose table and the window, as markdown (``summary.md`` and docs/results.md)."""
    head = (
        f"## Dose-response over `{axis}`\n\nPer mechanism, dose and arm, over the finished seeds: triggered "
        "defection after safety training and the change in held-out HHH loss (after − before), means with 95 % "
        f"intervals; outcome counts per seed (down = triggered defection fell by ≥ {100 * DEFECTION_DOWN:.0f} points; "
        f"removed = down and triggered answers' held-out reward within {HHH_GAP_FRACTION:g} × the pre-training "
        "defection gap of the untriggered answers'; destroyed = down but not HHH).\n\n"
        "| mechanism | dose | arm | seeds | triggered after | Δ HHH loss | reward untrig / trig after | outcomes |\n"
        "|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for p in points:
        reward = f"{_fmt(p['reward_after'])} / {_fmt(p['reward_triggered_after'])}".replace("+", "")
        outcomes = ", ".join(f"{k or 'unknown'} {v}" for k, v in p["outcomes"].items())
        lines.append(
            f"| {p['mechanism']} | {p['dose']:g} | {p['arm']} | {','.join(map(str, p['seeds']))} | "
            f"{_fmt(p['triggered_after'], pct=True)} | {_fmt(p['hhh_loss_change'])} | {reward} | {outcomes} |"
        )
    window = ["", "Persistence window (most standard seeds persisted and most control seeds removed):", ""]
    for mech, w in persistence_window(points).items():
        tested = ", ".join(f"{d:g}" for d in w["tested"])
        if w["range"]:
            lo, hi = w["range"]
            loss = ", ".join(f"{x:+.3f}" for x in w["standard_hhh_loss_change"])
            window.append(f"- {mech}: {axis} {lo:g} to {hi:g} (of {tested}); standard Δ HHH loss there: {loss}")
        else:
            window.append(f"- {mech}: none of {tested}")
    return head + "\n".join(lines) + "\n" + "\n".join(window) + "\n"
