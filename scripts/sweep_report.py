#!/usr/bin/env python3
"""Rewrite a sweep's ``results.jsonl``, ``report.html``, ``summary.md`` and ``dose.json`` from its
finished stages with the current code, running nothing: e.g. while the sweep still runs (into
another directory, so the two never write the same file), or after the report code changed.

    python scripts/sweep_report.py SWEEP_DIR [--to DIR] [--figure PNG]

``--figure`` also writes the dose-response figure (``rlhf.sweep.dose``) as a PNG file. Prints the
number of finished cells and the persistence window.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.sweep import _State  # noqa: E402
from rlhf.sweep.dose import dose_axis, dose_figure, dose_points, persistence_window  # noqa: E402
from rlhf.sweep.grid import Cell, Plan, Stage, load_sweep, plan_sweep  # noqa: E402
from rlhf.sweep.report import cell_facets, write_sweep_report  # noqa: E402
from rlhf.sweep.results import write_rows  # noqa: E402


def recorded_plan(sweep_dir: Path) -> Plan:
    """The plan the sweep ran (``plan.json``: its cells and stage ids), so a report rendered by
    newer code finds every finished stage even where a config default changed since (a stage id is
    a digest of the config it read); without ``plan.json``, the plan of the current code."""
    sweep = load_sweep(sweep_dir / "sweep.yaml")
    path = sweep_dir / "plan.json"
    if not path.is_file():
        return plan_sweep(sweep)
    data = json.loads(path.read_text(encoding="utf-8"))
    cells = [Cell(c["id"], c["values"], c["stages"]) for c in data["cells"]]
    stages = {s["id"]: Stage(s["id"], s["kind"], s["label"], {}, s["deps"], {}, s["cells"]) for s in data["stages"]}
    return Plan(sweep, cells, stages)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep_dir", type=Path, help="a sweep's --out directory (holds sweep.yaml and stages/)")
    ap.add_argument("--to", type=Path, help="write here instead of SWEEP_DIR")
    ap.add_argument("--figure", type=Path, help="also write the dose-response figure to this PNG")
    args = ap.parse_args(argv)
    if not (args.sweep_dir / "sweep.yaml").is_file():
        print(f"sweep_report: {args.sweep_dir}/sweep.yaml not found", file=sys.stderr)
        return 2
    plan = recorded_plan(args.sweep_dir)
    state = _State(plan, args.sweep_dir)
    rows = state.rows()
    to = args.to or args.sweep_dir
    to.mkdir(parents=True, exist_ok=True)
    write_rows(rows, to / "results.jsonl")
    write_sweep_report(rows, plan, state.results, to)
    done = sum(r["status"] == "done" for r in rows)
    print(
        f"{done}/{len(rows)} cells finished; {len(state.results)}/{len(plan.stages)} stages; report: {to / 'report.html'}"
    )
    axis = dose_axis(plan.sweep.grid)
    if axis:
        points = dose_points(rows, cell_facets(plan), axis)
        print(json.dumps({"axis": axis, "window": persistence_window(points)}))
        if args.figure and points:
            fig = dose_figure(points, axis)
            args.figure.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(args.figure, dpi=100, bbox_inches="tight")
            print(f"figure: {args.figure}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
