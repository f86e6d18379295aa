"""``rlhf watch``: defection curves for checkpoints that another trainer writes (TRL, OpenRLHF, veRL).

It follows a folder of Hugging Face checkpoints, evaluates each new one on the Serve defection
evaluator (with, without and near-miss trigger, the real-prompt conditions of the kind) and writes
the files of our own safety-training runs, so ``rlhf report`` and the dashboards treat it alike::

    RUN/config.yaml       resolved config (the backdoored policy's trigger, kind and eval pool)
    RUN/metrics.jsonl     defection/<condition> (+ _lo, _hi, _n) per checkpoint step; RUN/tb/
    RUN/curves.json       the defection curve: rate, 95 % CI and n per condition and step
    RUN/report.html       plots and the before -> after table (``jobs/report.py``)
    RUN/watch_state.json  the checkpoints already evaluated (a restarted watch goes on from there)

What counts as a checkpoint: a directory with ``config.json`` and weights (``*.safetensors``,
``pytorch_model*.bin``), up to ``MAX_DEPTH`` levels below ``--checkpoints``. Its step comes from
``trainer_state.json`` (``global_step``: TRL and every ``transformers.Trainer``) or else from the
last ``checkpoint-N`` / ``global_step_N`` / ``global_stepN_hf`` / ``step-N`` in its path (veRL's
``global_step_N/actor/huggingface``, OpenRLHF's ``global_stepN_hf``); a directory without a step
is skipped with a note. A checkpoint still being written is left for the next poll: only one whose
files have not changed for ``settle_s`` seconds is evaluated.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from jobs.progress import log
from rlhf.config.core import Config, dump_config
from rlhf.config.resolve import config_from_saved_file
from rlhf.errors import ConfigError, DataError
from rlhf.eval.evaluate import curves_json, defection_record, format_curve
from rlhf.eval.probe_saved import check_probe_config
from rlhf.models.checkpoint import CONFIG_NAME
from rlhf.tracking import check_backends, run_writer

MAX_DEPTH = 4
STEP_IN_NAME = re.compile(r"(?:checkpoint|global_step|step|iter)[-_]?(\d+)", re.IGNORECASE)
WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin")
STATE = "watch_state.json"
SETTLE_S = 10.0


@dataclass(frozen=True)
class Checkpoint:
    step: int
    path: Path


def is_hf_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and any(any(path.glob(g)) for g in WEIGHT_GLOBS)


def checkpoint_step(path: Path, root: Path) -> int | None:
    """The training step of an HF dir: ``trainer_state.json``'s ``global_step``, else the last step
    named in its path below ``root`` (or in ``root``'s own name)."""
    state = path / "trainer_state.json"
    if state.is_file():
        try:
            return int(json.loads(state.read_text(encoding="utf-8"))["global_step"])
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            pass
    parts = [root.name, *path.relative_to(root).parts]
    for part in reversed(parts):
        found = STEP_IN_NAME.findall(part)
        if found:
            return int(found[-1])
    return None


def find_checkpoints(root: Path) -> tuple[list[Checkpoint], list[Path]]:
    """(checkpoints sorted by step, HF dirs without a step) under ``root``; an HF dir's own
    subdirectories are not searched."""
    found: dict[int, Checkpoint] = {}
    stepless: list[Path] = []
    for here, dirs, _ in os.walk(root):
        path = Path(here)
        depth = len(path.relative_to(root).parts)
        if is_hf_dir(path):
            dirs[:] = []
            step = checkpoint_step(path, root)
            if step is None:
                stepless.append(path)
            elif step not in found or len(str(path)) < len(str(found[step].path)):
                found[step] = Checkpoint(step, path)  # two dirs of one step: the shorter path (veRL's actor/)
        elif depth >= MAX_DEPTH:
            dirs[:] = []
        else:
            dirs.sort()
    return sorted(found.values(), key=lambda c: c.step), stepless


def settled(path: Path, settle_s: float, now: float | None = None) -> bool:
    """No file of ``path`` changed in the last ``settle_s`` seconds (the trainer has finished it)."""
    if settle_s <= 0:
        return True
    newest = max((f.stat().st_mtime for f in path.iterdir() if f.is_file()), default=0.0)
    return (now or time.time()) - newest >= settle_s


def resolve_watch_config(
    policy_config: str | None, config_file: str | None, overrides: list[str], checkpoints: Path | None = None
) -> Config:
    """The backdoored policy's saved config (``--policy-config``: its ``rlhf_config.yaml`` or the
    policy dir; else the first checkpoint's own ``rlhf_config.yaml`` if it has one): seed, model,
    backdoor and data (trigger, kind, the eval pool) < ``--config`` < ``--set``."""
    source = None
    if policy_config:
        p = Path(policy_config)
        source = p / CONFIG_NAME if p.is_dir() else p
        if not source.is_file():
            raise ConfigError(f"--policy-config: no {CONFIG_NAME} at {p}")
    elif checkpoints is not None and checkpoints.is_dir():
        first = next((c.path / CONFIG_NAME for c in find_checkpoints(checkpoints)[0]), None)
        source = first if first is not None and first.is_file() else None
    return config_from_saved_file(source, config_file, overrides)


def _load_state(out: Path) -> dict:
    path = out / STATE
    if not path.is_file():
        return {"done": {}, "points": []}
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise DataError(f"{path} is unreadable; remove it to evaluate every checkpoint again") from None
    return {"done": dict(state.get("done", {})), "points": list(state.get("points", []))}


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1), encoding="utf-8")
    tmp.replace(path)


def app_name(out: Path) -> str:
    """The Serve app (and route) of this watch's evaluator: one per run name."""
    return "watch-" + (re.sub(r"[^A-Za-z0-9_-]+", "-", out.resolve().name).strip("-") or "run")


class Watch:
    """One watch run: what has been evaluated, the curve so far, and the files it writes."""

    def __init__(self, cfg: Config, root: Path, out: Path, settle_s: float):
        self.cfg, self.root, self.out, self.settle_s = cfg, root, out, settle_s
        state = _load_state(out)
        self.done: dict[str, int] = state["done"]
        self.points: list[dict] = state["points"]
        self.noted: set[Path] = set()

    def pending(self) -> list[Checkpoint]:
        """Settled checkpoints not evaluated yet, by step."""
        checkpoints, stepless = find_checkpoints(self.root)
        for path in set(stepless) - self.noted:
            log(f"[watch] {path}: no step (no trainer_state.json, no checkpoint-N/global_step_N name); skipped")
            self.noted.add(path)
        return [c for c in checkpoints if str(c.path.resolve()) not in self.done and settled(c.path, self.settle_s)]

    def record(self, metrics, evaluated: list[Checkpoint], points: list[dict]) -> None:
        """Log the new points (metrics.jsonl, TensorBoard, trackers), rewrite curves.json, the state
        and the report."""
        from jobs.report import write_report

        for point in sorted(points, key=lambda p: p["step"]):
            metrics.log(point["step"], **defection_record(point))
            self.points.append(point)
            probe = f", probe AUROC {point['probe']['auroc']:.3f}" if "probe" in point else ""
            log(f"[watch] step {point['step']}: triggered {100 * point['conditions']['triggered']['rate']:.1f}%{probe}")
        got = {p["step"] for p in points}
        for c in evaluated:
            self.done[str(c.path.resolve())] = c.step
            if c.step not in got:
                log(f"[watch] {c.path}: no defection point (the evaluator could not load it; see the Serve logs)")
        self.points.sort(key=lambda p: p["step"])
        _write_json(self.out / "curves.json", curves_json(self.points, self.cfg.eval.samples))
        _write_json(self.out / STATE, {"done": self.done, "points": self.points})
        if self.points:
            write_report(self.out)


def run_watch(
    cfg: Config,
    checkpoints: str | Path,
    out: str | Path,
    once: bool = False,
    every_s: float = 60.0,
    quiet: bool = True,
    settle_s: float = SETTLE_S,
    stop: Callable[[], bool] | None = None,
) -> dict:
    """Follow ``checkpoints`` until interrupted (or ``stop()``; ``once``: what is there now, then
    return); each new checkpoint gets a defection point from the Serve evaluator."""
    from actors.cluster import ray_session

    check_backends(cfg.logging.backends)  # a tracker without its library: one line, before any work
    check_probe_config(cfg)  # eval.probe: a saved probe, or one line now rather than at the first eval
    root, out = Path(checkpoints), Path(out)
    if not root.is_dir():
        raise ConfigError(f"--checkpoints: {root} is not a directory")
    if every_s <= 0:
        raise ConfigError("--every-s must be positive")
    out.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out / "config.yaml")
    watch = Watch(cfg, root, out, 0.0 if once else settle_s)
    if once and not find_checkpoints(root)[0]:
        raise DataError(f"no Hugging Face checkpoint (config.json + weights, with a step) under {root}")
    with ray_session(cfg.ray.address, cfg.ray.num_cpus, quiet=quiet):
        _follow(watch, once, every_s, quiet, stop or (lambda: False))
    return {"out": str(out), "points": watch.points, "evaluated": len(watch.done)}


def _follow(watch: Watch, once: bool, every_s: float, quiet: bool, stop: Callable[[], bool]) -> None:
    from actors.evaluator import start_evaluator, stop_evaluator
    from actors.train_metrics import TrainingGauges

    run, name = watch.out.resolve().name, app_name(watch.out)
    gauges = TrainingGauges("watch", run)  # Prometheus: rlhf_defection_rate{stage="watch", run=...}
    evaluator = None
    with run_writer(watch.cfg, watch.out, "watch", (gauges.log,)) as metrics:
        try:
            while True:
                new = watch.pending()
                if new:
                    if evaluator is None:
                        evaluator = start_evaluator(watch.cfg, str(new[0].path.resolve()), run=run, app_name=name)
                        _quiet(quiet)
                        log(f"[watch] defection evaluator: GET {evaluator.url}/curves")
                    for c in new:
                        evaluator.submit(str(c.path.resolve()), c.step, c.step)
                    log(f"[watch] evaluating {len(new)} checkpoint(s): steps {', '.join(str(c.step) for c in new)}")
                    evaluator.wait_idle(24 * 3600)
                    watch.record(metrics, new, evaluator.new_points())
                if once or stop():
                    return
                time.sleep(every_s)
        finally:
            if evaluator is not None:
                stop_evaluator(name)


def _quiet(quiet: bool) -> None:
    if quiet:
        from jobs.serve import quiet_serve_logs

        quiet_serve_logs()


def summary_text(summary: dict) -> str:
    return f"{format_curve(summary['points'])}\nrun: {summary['out']} ({summary['evaluated']} checkpoint(s) evaluated)"
