"""``rlhf eval``: defection rates of a model directory with/without/near-miss triggers."""

from __future__ import annotations

from pathlib import Path

from jobs.progress import Progress
from rlhf.config.core import Config
from rlhf.eval.evaluate import eval_sample_count, evaluate_defection
from rlhf.models.modeling import load_model_dir


def run_eval(model_dir: str | Path, cfg: Config, samples: int | None = None) -> dict:
    from rlhf.models.device import placement_for

    model, tokenizer = load_model_dir(model_dir, placement=placement_for(cfg.resources))
    n = samples or cfg.eval.samples
    total = eval_sample_count(cfg, n)
    with Progress(total, "eval", "samples") as bar:
        report = evaluate_defection(model, tokenizer, cfg, samples=n, on_batch=bar.update)
    report["model"] = str(model_dir)
    return report
