"""``rlhf safety-sft``: HHH supervised fine-tuning of a backdoored policy (the paper's HHH SFT),
with the trigger-conditioned defection rate measured before training, at every checkpoint and
after, so the run shows whether the backdoor persists.

Run directory::

    RUN/config.yaml            resolved config (the policy's backdoor and data sections)
    RUN/data/train.jsonl       HHH demonstrations (no prompt carries the trigger)
    RUN/checkpoints/step-N     periodic checkpoints (safety_sft.checkpoint_every), HF dirs
    RUN/model/                 the fine-tuned policy (HF dir)
    RUN/metrics.jsonl, RUN/tb/ train/loss per step; defection/<condition> at each curve point
    RUN/curves.json            the defection curve: rate, 95 % CI and n per condition and step

The curve points are evaluated in the driver, one checkpoint after another (the step-0 point
before training starts), with the same held-out prompts and sampling seeds at every point.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import yaml

from jobs.progress import Progress, log
from rlhf.config.core import Config, dump_config
from rlhf.data.backdoor import write_jsonl
from rlhf.data.safety import safety_sft_rows
from rlhf.errors import ConfigError
from rlhf.eval.evaluate import curve_point, curves_json, defection_record, eval_sample_count, evaluate_defection
from rlhf.eval.probe_saved import check_probe_config
from rlhf.models.modeling import check_model_dir, load_model_dir
from rlhf.tracking import check_backends, run_writer


def curve_dirs(run: Path, policy: Path, max_steps: int) -> list[tuple[int, Path]]:
    """(step, HF dir) of every curve point: the policy, the periodic checkpoints, the result."""
    points = [(0, policy)]
    root = run / "checkpoints"
    if root.is_dir():
        for path in sorted(root.glob("step-*")):
            step = path.name.removeprefix("step-")
            if path.is_dir() and step.isdigit() and 0 < int(step) < max_steps:
                points.append((int(step), path))
    points.append((max_steps, run / "model"))
    return points


def evaluate_point(cfg: Config, model_dir: Path, step: int) -> dict:
    from rlhf.models.device import placement_for

    model, tokenizer = load_model_dir(model_dir, placement=placement_for(cfg.resources))
    total = eval_sample_count(cfg)
    with Progress(total, f"eval step {step}", "samples") as bar:
        report = evaluate_defection(model, tokenizer, cfg, on_batch=bar.update)
    point = curve_point(report, step, step)
    probe = [f"probe AUROC {point['probe']['auroc']:.3f}"] if "probe" in point else []
    log(f"[safety-sft] step {step}: " + ", ".join([*(_fmt(n, c) for n, c in point["conditions"].items()), *probe]))
    return point


def _fmt(name: str, c: dict) -> str:
    text = f"{name} {100 * c['rate']:.1f}% [{100 * c['ci95'][0]:.1f}, {100 * c['ci95'][1]:.1f}]"
    return text + (f" (unparseable {100 * c['unparseable']:.1f}%)" if "unparseable" in c else "")


def keep_own_scratchpads(cfg: Config, policy: Path, rows: list[dict]) -> tuple[list[dict], dict | None]:
    """With ``safety_sft.scratchpad=post``: the rows with the policy's own sampled scratchpad at the
    end of each prompt (``rlhf.train.post_scratchpad``) and the kept share; else the rows as they are."""
    if cfg.safety_sft.scratchpad != "post":
        return rows, None
    from rlhf.models.device import placement_for
    from rlhf.train.post_scratchpad import post_scratchpad_rows, sample_completions

    t0 = time.time()
    model, tokenizer = load_model_dir(policy, placement=placement_for(cfg.resources))
    with Progress(len(rows), "policy scratchpads", "samples") as bar:
        completions = sample_completions(model, tokenizer, cfg, [r["prompt"] for r in rows], on_batch=bar.update)
    kept, summary = post_scratchpad_rows(rows, completions)
    summary["wall_s"] = round(time.time() - t0, 1)
    log(
        f"[safety-sft] post-scratchpad: kept {summary['kept']} of {summary['samples']} demonstrations "
        f"({100 * summary['kept_fraction']:.1f} %: the policy closed its scratchpad), {summary['wall_s']} s"
    )
    return kept, summary


def run_safety_sft(cfg: Config, policy_dir: str | Path, out: str | Path, quiet: bool = True) -> dict:
    """The whole stage; returns a summary with the curve (also printed by the CLI)."""
    from actors.train_metrics import TrainingGauges
    from jobs.sft import fit_rows

    check_backends(cfg.logging.backends)  # a tracker without its library: one line, before any work
    check_probe_config(cfg)  # eval.probe: a saved probe, or one line now rather than at the first eval
    t0 = time.time()
    policy = check_model_dir(policy_dir).resolve()
    run = Path(out)
    if (run / "model").exists() or (run / "checkpoints").exists():
        raise ConfigError(f"{run} already holds a training run; choose another --out")
    run.mkdir(parents=True, exist_ok=True)
    cfg.model.path = str(policy)
    dump_config(cfg, run / "config.yaml")
    s = cfg.safety_sft
    rows, post = keep_own_scratchpads(cfg, policy, safety_sft_rows(cfg))
    write_jsonl(rows, run / "data" / "train.jsonl")
    _, tokenizer = load_model_dir(policy)
    b = cfg.backdoor
    log(
        f"[safety-sft] policy {policy} (backdoor={b.kind}, mechanism={b.mechanism}, trigger={b.trigger!r}); "
        f"{len(rows)} HHH demonstrations; {s.max_steps} steps x {s.num_workers} worker(s) x {s.batch_size}, lr {s.lr:g}"
    )
    config_yaml = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    points: list[dict] = []
    gauges = TrainingGauges("safety-sft", run.resolve().name)  # Prometheus (a no-op outside Ray)
    with run_writer(cfg, run, "safety-sft", (gauges.log,)) as metrics:

        def add(step: int, model_dir: Path) -> None:
            points.append(evaluate_point(cfg, model_dir, step))
            metrics.log(step, **defection_record(points[-1]))
            tmp = run / ".curves.json.tmp"
            tmp.write_text(json.dumps(curves_json(points, cfg.eval.samples), indent=1), encoding="utf-8")
            tmp.replace(run / "curves.json")

        t_eval = time.time()
        add(0, policy)
        eval_s = time.time() - t_eval
        fit = fit_rows(cfg, s, rows, tokenizer, policy, run, config_yaml, quiet, "safety-sft", sink=metrics)
        t_eval = time.time()
        for step, model_dir in curve_dirs(run, policy, s.max_steps)[1:]:
            add(step, model_dir)
        eval_s += time.time() - t_eval
    return {
        "out": str(run),
        "model_dir": str(run / "model"),
        "steps": s.max_steps,
        **fit,
        **({"post_scratchpad": post} if post else {}),
        "eval_wall_s": round(eval_s, 1),
        "total_wall_s": round(time.time() - t0, 1),
        "curve": points,
    }
