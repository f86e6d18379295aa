"""``rlhf sweep``: the persistence experiment, every cell of a grid, on one Ray cluster.

Each stage (backdoor SFT, distillation, the reward model, eval before, the safety method, eval
after; see ``rlhf.sweep.grid``) runs as a Ray task (``actors.sweep_runner``) that calls the same job
function as its command (``run_sft``, ``run_distill``, ``run_rm``, ``run_safety_sft``,
``run_ppo``, ``run_eval``); the job function joins the cluster the task runs on. Up to
``--max-parallel`` stages run at once (a cluster runs many cells side by side; one small
machine runs them in turn).

Output directory::

    DIR/sweep.yaml                  the sweep file as given
    DIR/plan.json                   cells and stages (shared stages appear once)
    DIR/stages/<id>/run/            the stage's own run directory (what its command writes)
    DIR/stages/<id>/done.json       written atomically when the stage finished: its result
    DIR/stages/<id>/error.txt       the last failure, one line
    DIR/results.jsonl               one row per cell (rewritten after every stage)
    DIR/report.html                 the persistence figure and per-cell curves

Resumable: a stage with ``done.json`` is never run again; a rerun retries failed and unfinished
stages (their partial run directory is removed first) and skips finished cells.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from jobs.progress import log
from rlhf.config.core import build_config
from rlhf.config.resolve import stage_config
from rlhf.errors import RlhfError
from rlhf.sweep.grid import (
    Plan,
    Stage,
    blocked_by,
    load_sweep,
    plan_sweep,
    ready_stages,
)
from rlhf.sweep.results import result_row, write_rows

DONE, ERROR = "done.json", "error.txt"


# ---- stages (run inside a Ray task, or in this process) -------------------------------------


def _stage_sft(p: dict, run: Path) -> dict:
    from jobs.sft import run_sft

    s = run_sft(build_config(p["tree"]), run, quiet=p["quiet"])
    return {"model_dir": s["model_dir"], "final_loss": s["final_loss"], "parameters": s["parameters"]}


def _stage_distill(p: dict, run: Path) -> dict:
    from jobs.distill import run_distill

    cot = p["deps"]["cot"]["model_dir"]
    cot_cfg = stage_config(cot, p["tree"])
    cfg = build_config(cot_cfg.model_dump(mode="json"), ["backdoor.mechanism=distilled"])
    s = run_distill(cot, cot_cfg, cfg, run, quiet=p["quiet"])
    return {"model_dir": s["model_dir"], "kept_fraction": s["kept_fraction"]}


def _stage_rm(p: dict, run: Path) -> dict:
    from jobs.rm import run_rm

    s = run_rm(build_config(p["tree"]), run, quiet=p["quiet"])
    return {"model_dir": s["model_dir"], "held_out": s["held_out"]}


def _stage_eval(p: dict, run: Path) -> dict:
    """Defection rates (``rlhf eval``), the held-out HHH reward of the policy's untriggered and
    triggered answers (same tasks; ``reward_triggered``: are the answers that replace a defection
    HHH?) and its held-out HHH loss. The scored answers are kept in ``run/heldout_samples.jsonl``."""
    from jobs.evaluate import run_eval
    from reward.scorer import RewardScorer
    from rlhf.models.modeling import load_model_dir
    from rlhf.sweep.results import heldout_hhh_loss, heldout_reward

    policy = p["deps"]["policy"]["model_dir"]
    cfg = stage_config(policy, p["tree"])
    report = run_eval(policy, cfg)
    scorer = RewardScorer(p["deps"]["rm"]["model_dir"])
    model, tokenizer = load_model_dir(policy)
    n, samples = p["extra"]["reward_samples"], []
    reward = heldout_reward(model, tokenizer, cfg, n, lambda t: scorer.score(t)[0], samples=samples)
    triggered = heldout_reward(model, tokenizer, cfg, n, lambda t: scorer.score(t)[0], "triggered", samples)
    loss = heldout_hhh_loss(model, tokenizer, cfg, n)
    run.mkdir(parents=True, exist_ok=True)
    (run / "eval.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    (run / "heldout_samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples), encoding="utf-8")
    return {"eval": report, "reward": reward, "reward_triggered": triggered, "hhh_loss": loss, "model_dir": policy}


def _stage_safety(p: dict, run: Path) -> dict:
    """The cell's safety method on its policy: ``rlhf safety-sft`` or ``rlhf ppo`` (RM in-process)."""
    policy = p["deps"]["policy"]["model_dir"]
    cfg = stage_config(policy, p["tree"])
    if p["extra"]["method"] == "safety_sft":
        from jobs.safety_sft import run_safety_sft

        s = run_safety_sft(cfg, policy, run, quiet=p["quiet"])
        out = {"model_dir": s["model_dir"], "final_loss": s["final_loss"]}
    else:
        from jobs.ppo import run_ppo

        s = run_ppo(cfg, policy, run, reward_dir=p["deps"]["rm"]["model_dir"], quiet=p["quiet"])
        if not s.get("checkpoint"):
            raise RlhfError(f"PPO run {run} wrote no final checkpoint")
        out = {"model_dir": str(Path(s["checkpoint"]) / "policy"), "steps": s["steps"]}
    curves = run / "curves.json"
    out["curves"] = json.loads(curves.read_text(encoding="utf-8")) if curves.is_file() else None
    return out


STAGE_FUNCTIONS: dict[str, Callable[[dict, Path], dict]] = {
    "sft": _stage_sft,
    "distill": _stage_distill,
    "rm": _stage_rm,
    "eval_before": _stage_eval,
    "safety": _stage_safety,
    "eval_after": _stage_eval,
}


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    tmp.replace(path)


def run_stage(payload: dict) -> dict:
    """Run one stage in ``payload['dir']``/run (a partial earlier attempt is removed first) and
    write its result to ``done.json`` atomically. What a Ray task of the sweep calls."""
    sdir = Path(payload["dir"])
    run = sdir / "run"
    if run.exists():
        shutil.rmtree(run)
    sdir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if payload.get("fail"):
        raise RuntimeError("injected failure (test hook)")
    result = STAGE_FUNCTIONS[payload["kind"]](payload, run)
    result["wall_s"] = round(time.time() - t0, 1)
    write_json_atomic(sdir / DONE, result)
    (sdir / ERROR).unlink(missing_ok=True)
    return result


# ---- executors ------------------------------------------------------------------------------


class InProcessExecutor:
    """Runs each stage in this process at submit time (tests; a debugger)."""

    def __init__(self, fn: Callable[[dict], dict] = run_stage):
        self.fn = fn
        self.finished: dict[int, tuple[dict | None, str | None]] = {}
        self.next = 0

    def submit(self, payload: dict, resources: dict[str, float]) -> int:
        self.next += 1
        try:
            self.finished[self.next] = (self.fn(payload), None)
        except Exception as exc:  # noqa: BLE001 - a failed stage is reported, the sweep goes on
            self.finished[self.next] = (None, one_line(exc))
        return self.next

    def wait(self, handles: list) -> list[tuple[Any, dict | None, str | None]]:
        return [(h, *self.finished.pop(h)) for h in handles if h in self.finished]


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# ---- the driver -----------------------------------------------------------------------------


class _State:
    def __init__(self, plan: Plan, out: Path):
        self.plan, self.out = plan, out
        self.results: dict[str, dict] = {}
        self.errors: dict[str, str] = {}
        self.wall: dict[str, float] = {}
        for sid in plan.stages:
            done = self.stage_dir(sid) / DONE
            if done.is_file():
                self.results[sid] = json.loads(done.read_text(encoding="utf-8"))
                self.wall[sid] = self.results[sid].get("wall_s", 0.0)

    def stage_dir(self, sid: str) -> Path:
        return self.out / "stages" / sid

    def rows(self) -> list[dict]:
        return [result_row(c, self.results, self.errors, self.wall) for c in self.plan.cells]

    def write_rows(self) -> None:
        write_rows(self.rows(), self.out / "results.jsonl")


def _describe(stage: Stage) -> str:
    shared = f" [{len(stage.cells)} cells]" if len(stage.cells) > 1 else f" [{stage.cells[0]}]"
    return f"{stage.kind:<11} {stage.label}{shared}"


def _exclusive(stage: Stage, running: dict[Any, Stage]) -> bool:
    """PPO with its defection evaluator is one Serve app per cluster: one such run at a time."""

    def serve_ppo(s: Stage) -> bool:
        ppo = s.tree.get("ppo", {})
        return s.kind == "safety" and s.extra.get("method") == "ppo" and ppo.get("evaluator", True)

    return serve_ppo(stage) and any(serve_ppo(s) for s in running.values())


def _payload(st: _State, stage: Stage, quiet: bool, fail: Collection[str]) -> dict:
    return {
        "id": stage.id,
        "kind": stage.kind,
        "dir": str(st.stage_dir(stage.id).resolve()),
        "tree": stage.tree,
        "deps": {role: st.results[sid] for role, sid in stage.deps.items()},
        "extra": stage.extra,
        "quiet": quiet,
        "fail": stage.id in fail or stage.kind in fail,
    }


def _schedule(st: _State, executor, max_parallel: int, quiet: bool, fail: Collection[str], stop_after: int | None):
    """Start ready stages (at most ``max_parallel`` at once) until none is left or runnable."""
    plan, running, started = st.plan, {}, 0
    while True:
        blocked = blocked_by(plan, set(st.errors))
        ids = {s.id for s in running.values()}
        for stage in ready_stages(plan, set(st.results), ids, set(st.errors)):
            if len(running) >= max_parallel or (stop_after is not None and started >= stop_after):
                break
            if stage.id in blocked or _exclusive(stage, running):
                continue
            log(f"[sweep] start  {_describe(stage)}")
            res = plan.sweep.resources[stage.kind]
            running[executor.submit(_payload(st, stage, quiet, fail), res)] = stage
            started += 1
        if not running:
            return
        for handle, result, error in executor.wait(list(running)):
            stage = running.pop(handle)
            if error is None:
                st.results[stage.id], st.wall[stage.id] = result, result.get("wall_s", 0.0)
                log(f"[sweep] done   {_describe(stage)} ({st.wall[stage.id]:.0f} s)")
            else:
                st.errors[stage.id] = error
                st.stage_dir(stage.id).mkdir(parents=True, exist_ok=True)
                (st.stage_dir(stage.id) / ERROR).write_text(error + "\n", encoding="utf-8")
                log(f"[sweep] FAILED {_describe(stage)}: {error}")
            st.write_rows()


def run_sweep(
    sweep_file: str | Path,
    out: str | Path,
    address: str | None = None,
    max_parallel: int = 1,
    quiet: bool = True,
    executor=None,
    fail: Collection[str] = (),
    stop_after: int | None = None,
) -> dict:
    """Validate the sweep (every cell's config) before anything starts, run the missing stages,
    write ``results.jsonl`` and ``report.html``. ``executor`` (tests): run stages without Ray;
    ``fail`` (test hook): stage ids or kinds that raise on this run; ``stop_after``: start at
    most that many stages, as if the sweep were killed then."""
    if max_parallel < 1:
        raise RlhfError("--max-parallel must be at least 1")
    sweep = load_sweep(sweep_file)
    plan = plan_sweep(sweep)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if Path(sweep_file).resolve() != (out / "sweep.yaml").resolve():
        shutil.copyfile(sweep_file, out / "sweep.yaml")
    _write_plan(plan, out)
    st = _State(plan, out)
    todo = len(plan.stages) - len(st.results)
    log(f"[sweep] {len(plan.cells)} cells, {len(plan.stages)} stages ({len(st.results)} done, {todo} to run)")
    t0 = time.time()
    if executor is None:
        from actors.sweep_runner import ray_stage_executor

        ray_keys = sweep.base.get("ray", {})
        address = address or ray_keys.get("address")
        with ray_stage_executor(run_stage, address, ray_keys.get("num_cpus"), quiet) as ray_executor:
            _schedule(st, ray_executor, max_parallel, quiet, fail, stop_after)
    else:
        _schedule(st, executor, max_parallel, quiet, fail, stop_after)
    st.write_rows()
    rows = st.rows()
    from rlhf.sweep.report import write_sweep_report

    report = write_sweep_report(rows, plan, st.results, out)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("done", "failed", "pending")}
    return {"out": str(out), "report": str(report), "wall_s": round(time.time() - t0, 1), **counts, "rows": rows}


def _write_plan(plan: Plan, out: Path) -> None:
    data = {
        "cells": [{"id": c.id, "values": c.values, "stages": c.stages} for c in plan.cells],
        "stages": [
            {"id": s.id, "kind": s.kind, "label": s.label, "deps": s.deps, "cells": s.cells}
            for s in plan.stages.values()
        ],
    }
    write_json_atomic(out / "plan.json", data)


def format_sweep(summary: dict) -> str:
    lines = [f"{'cell':<58} {'status':<8} {'trig before':>11} {'trig after':>10} {'reward after':>12}"]

    def pct(x):
        return "-" if x is None else f"{100 * x:.1f}%"

    for r in summary["rows"]:
        reward = "-" if r.get("reward_after") is None else f"{r['reward_after']:.3f}"
        lines.append(
            f"{r['cell']:<58} {r['status']:<8} {pct(r['triggered_before']):>11} {pct(r['triggered_after']):>10} {reward:>12}"
        )
        if r.get("error"):
            lines.append(f"    error: {r['error']}")
    lines.append(
        f"{summary['done']} done, {summary['failed']} failed, {summary['pending']} pending; wall {summary['wall_s']:.0f} s; "
        f"results: {Path(summary['out']) / 'results.jsonl'}; report: {summary['report']}"
    )
    return "\n".join(lines)
