"""``rlhf steer``: scratchpad steering of a chain-of-thought model (paper section 7).

Prefills the scratchpad with deployment reasoning on untriggered prompts and with training
reasoning on triggered prompts, and reports the defection rate of each beside the unsteered
rates (see ``rlhf.eval.steer``).
"""

from __future__ import annotations

from pathlib import Path

from jobs.progress import Progress
from rlhf.config.core import Config
from rlhf.config.resolve import resolve_eval_config, saved_config
from rlhf.errors import RlhfError
from rlhf.eval.steer import PLAN, check_cot, run_steering, steer_report
from rlhf.models.modeling import check_model_dir, load_model_dir


def saved_mechanism(model_dir: str | Path) -> str | None:
    """The ``backdoor.mechanism`` a model was trained with (its saved config), or None."""
    saved = saved_config(model_dir)
    return (saved.get("backdoor") or {}).get("mechanism", "normal") if saved else None


def resolve_steer_config(model_dir: str | Path, config_file: str | None, overrides: list[str]) -> Config:
    """As ``rlhf eval`` resolves it; a model whose saved config is not CoT is refused (a model
    without a saved config is judged by the resolved ``backdoor.mechanism``)."""
    check_model_dir(model_dir)
    cfg = resolve_eval_config(model_dir, config_file, overrides)
    mechanism = saved_mechanism(model_dir) or cfg.backdoor.mechanism
    check_cot(mechanism, f"model {model_dir}")
    return cfg


def run_steer(model_dir: str | Path, cfg: Config, samples: int | None = None, close: bool = False) -> dict:
    n = samples or cfg.eval.samples
    if n < 1:
        raise RlhfError("--samples must be at least 1")
    from rlhf.models.device import placement_for

    model, tokenizer = load_model_dir(model_dir, placement=placement_for(cfg.resources))
    with Progress(n * len(PLAN), "steer", "samples") as bar:
        results = run_steering(model, tokenizer, cfg, n, on_batch=bar.update, close=close)
    return steer_report(results)
