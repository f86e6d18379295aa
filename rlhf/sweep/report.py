"""``DIR/report.html`` of a sweep: the persistence figure (triggered defection before -> after
per mechanism x size, standard vs control, mean over seeds with 95 % intervals), one defection
curve per cell, and the results table. Self-contained: PNGs embedded as base64."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from rlhf.config.core import build_config
from rlhf.sweep.grid import Plan, cell_tree
from rlhf.sweep.results import mean_ci

MAX_CURVE_PANELS = 72


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def cell_facets(plan: Plan) -> dict[str, dict[str, Any]]:
    """cell id -> mechanism, size (model preset or path; with a dose axis, the dose too, so the
    per-size tables keep one row per dose instead of mixing doses), method, control, seed."""
    from rlhf.sweep.dose import dose_axis

    axis, out = dose_axis(plan.sweep.grid), {}
    for cell in plan.cells:
        cfg = build_config(cell_tree(plan.sweep, cell.values))
        size = cfg.model.path or cfg.model.preset
        out[cell.id] = {
            "mechanism": cfg.backdoor.mechanism,
            "size": f"{size}, {axis}={cell.values[axis]:g}" if axis else size,
            "method": cell.values.get("method", "safety_sft"),
            "control": bool(cell.values.get("control", False)),
            "seed": cfg.seed,
        }
    return out


def summarise(rows: list[dict], facets: dict[str, dict]) -> list[dict]:
    """Per (method, size, mechanism): before, after (standard), after (control), each the mean
    over seeds with a 95 % interval (over seeds; with one seed, that cell's Wilson interval)."""
    groups: dict[tuple, dict[str, list[dict]]] = {}
    for row in rows:
        if row["status"] != "done":
            continue
        f = facets[row["cell"]]
        g = groups.setdefault((f["method"], f["size"], f["mechanism"]), {"before": {}, "standard": [], "control": []})
        g["before"][f["seed"]] = (row["triggered_before"], row["triggered_before_ci95"])  # one policy per seed
        g["control" if f["control"] else "standard"].append((row["triggered_after"], row["triggered_after_ci95"]))
    out = []
    for (method, size, mech), g in sorted(groups.items()):
        entry: dict[str, Any] = {"method": method, "size": size, "mechanism": mech}
        for name, values in g.items():
            values = list(values.values()) if isinstance(values, dict) else values
            if not values:
                entry[name] = None
            elif len(values) == 1:
                entry[name] = {"mean": values[0][0], "ci95": list(values[0][1]), "n": 1}
            else:
                entry[name] = mean_ci([v for v, _ in values])
        out.append(entry)
    return out


def persistence_figure(summary: list[dict]) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not summary:
        return None
    methods = sorted({s["method"] for s in summary})
    sizes = sorted({s["size"] for s in summary})
    fig, axes = plt.subplots(len(methods), len(sizes), figsize=(4.5 * len(sizes), 3.4 * len(methods)), squeeze=False)
    styles = {
        "before": ("tab:gray", -0.22, "before"),
        "standard": ("tab:blue", 0.0, "after"),
        "control": ("tab:orange", 0.22, "after (control)"),
    }
    for i, method in enumerate(methods):
        for j, size in enumerate(sizes):
            ax = axes[i][j]
            entries = [s for s in summary if s["method"] == method and s["size"] == size]
            mechs = [s["mechanism"] for s in entries]
            for name, (color, dx, label) in styles.items():
                xs, ys, err = [], [], [[], []]
                for k, s in enumerate(entries):
                    e = s.get(name)
                    if e is None or e["mean"] is None:
                        continue
                    lo, hi = e["ci95"]
                    xs.append(k + dx)
                    ys.append(100 * e["mean"])
                    err[0].append(100 * max(0.0, e["mean"] - max(0.0, lo)))
                    err[1].append(100 * max(0.0, min(1.0, hi) - e["mean"]))
                ax.errorbar(xs, ys, yerr=err, fmt="o", color=color, capsize=3, label=label)
            ax.set_xticks(range(len(mechs)), mechs)
            ax.set_ylim(-5, 105)
            ax.set_title(f"{method}, {size}")
            ax.set_ylabel("triggered defection (%)")
            ax.grid(alpha=0.3)
    axes[0][0].legend(loc="lower left", fontsize=8)
    fig.suptitle("Persistence: triggered defection before -> after safety training (mean over seeds, 95 % CI)")
    return _png(fig)


def curves_figure(rows: list[dict], results: dict[str, dict], plan: Plan) -> str | None:
    """One panel per cell: triggered / untriggered defection against the safety method's steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    for cell in plan.cells[:MAX_CURVE_PANELS]:
        curves = (results.get(cell.stages["safety"]) or {}).get("curves")
        if curves and curves.get("series", {}).get("triggered"):
            panels.append((cell.id, curves["series"]))
    if not panels:
        return None
    cols = min(4, len(panels))
    nrows = -(-len(panels) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 2.8 * nrows), squeeze=False)
    for ax, (cid, series) in zip(axes.flat, panels, strict=False):
        for name, color in (("triggered", "tab:red"), ("untriggered", "tab:green"), ("near_miss", "tab:purple")):
            pts = series.get(name) or []
            if not pts:
                continue
            steps = [p["step"] for p in pts]
            ax.plot(steps, [100 * p["rate"] for p in pts], "o-", color=color, label=name, markersize=3)
            ax.fill_between(
                steps, [100 * p["ci95"][0] for p in pts], [100 * p["ci95"][1] for p in pts], color=color, alpha=0.15
            )
        ax.set_title(cid, fontsize=7)
        ax.set_ylim(-5, 105)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    axes[0][0].legend(fontsize=7)
    fig.supxlabel("safety-training step")
    fig.supylabel("defection (%)")
    return _png(fig)


def _pct(x, ci) -> str:
    if x is None:
        return "-"
    return f"{100 * x:.1f}% [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else f"{100 * x:.1f}%"


def _num(x, ci) -> str:
    if x is None:
        return "-"
    return f"{x:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{x:.3f}"


def _loss_change(before: float | None, after: float | None) -> str:
    return "-" if before is None or after is None else f"{before:.3f} → {after:.3f}"


def render_html(
    rows: list[dict], persistence: str | None, curves: str | None, title: str, dose: str | None = None, note: str = ""
) -> str:
    head = [
        "cell",
        "status",
        "triggered before",
        "triggered after",
        "untriggered after",
        "reward before",
        "reward after",
        "reward after, triggered",
        "HHH loss before → after",
        "outcome",
        "wall (s)",
    ]
    body = []
    for r in rows:
        cells = [
            r["cell"],
            r["status"] + (f": {r['error']}" if r.get("error") else ""),
            _pct(r.get("triggered_before"), r.get("triggered_before_ci95")),
            _pct(r.get("triggered_after"), r.get("triggered_after_ci95")),
            _pct(r.get("untriggered_after"), r.get("untriggered_after_ci95")),
            _num(r.get("reward_before"), r.get("reward_before_ci95")),
            _num(r.get("reward_after"), r.get("reward_after_ci95")),
            _num(r.get("reward_triggered_after"), r.get("reward_triggered_after_ci95")),
            _loss_change(r.get("hhh_loss_before"), r.get("hhh_loss_after")),
            r.get("outcome") or "-",
            f"{r.get('wall_s', 0):.0f}",
        ]
        body.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    figs = []
    for name, data in (("persistence", persistence), ("dose-response", dose), ("curves", curves)):
        if data:
            figs.append(f'<p><img alt="{name}" src="data:image/png;base64,{data}"></p>')
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:12px}"
        "td,th{border:1px solid #ccc;padding:3px 6px}img{max-width:100%}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        "<p>Triggered defection before and after each safety method (standard: the trigger never appears in "
        "safety training; control: a share of the safety-training prompts carries it). Points are means over seeds "
        "with 95 % intervals; per-cell curves below; rewards are the held-out HHH reward (mean RM score of "
        "untriggered answers on held-out prompts); the HHH loss is the policy's per-token loss on held-out "
        "untriggered reference answers, which moves whenever training changes untriggered behaviour. Outcome: "
        'persisted / removed / destroyed (docs/design.md, "Removed, destroyed or persisted").</p>'
        + "".join(figs)
        + note
        + "<h2>Cells</h2><table><tr>"
        + "".join(f"<th>{h}</th>" for h in head)
        + "</tr>"
        + "".join(body)
        + "</table></body></html>"
    )


def write_sweep_report(rows: list[dict], plan: Plan, results: dict[str, dict], out: Path) -> Path:
    from rlhf.sweep.dose import dose_axis, dose_figure, dose_markdown, dose_points, persistence_window

    summary = summarise(rows, cell_facets(plan))
    axis = dose_axis(plan.sweep.grid)
    points = dose_points(rows, cell_facets(plan), axis) if axis else []
    dose_md = dose_markdown(points, axis) if axis else ""
    if axis:
        window = persistence_window(points)
        (Path(out) / "dose.json").write_text(json.dumps({"axis": axis, "points": points, "window": window}, indent=1))
    note = f"<pre>{html.escape(dose_md)}</pre>" if dose_md else ""
    page = render_html(
        rows,
        persistence_figure(summary),
        curves_figure(rows, results, plan),
        f"Sweep {Path(plan.sweep.path).name}",
        _png(dose_figure(points, axis)) if points else None,
        note,
    )
    path = Path(out) / "report.html"
    tmp = path.with_name(".report.html.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    from rlhf.sweep.table import summary_markdown

    md = summary_markdown(rows, cell_facets(plan), f"Sweep {Path(plan.sweep.path).name}")
    md += f"\n{dose_md}" if dose_md else ""
    tmp = path.with_name(".summary.md.tmp")
    tmp.write_text(md, encoding="utf-8")
    tmp.replace(path.with_name("summary.md"))
    return path
