"""``rlhf eval``: defection rates of a model directory with/without/near-miss triggers."""

from __future__ import annotations

from pathlib import Path

from jobs.progress import Progress
from rlhf.config.core import Config, build_config, read_yaml
from rlhf.eval.evaluate import eval_sample_count, evaluate_defection
from rlhf.models.checkpoint import CONFIG_NAME
from rlhf.models.modeling import check_model_dir, load_model_dir


def deep_merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def resolve_eval_config(model_dir: str | Path, config_file: str | None, overrides: list[str]) -> Config:
    """The model's saved config (trigger, kind, mechanism) < ``--config`` < ``--set``."""
    p = check_model_dir(model_dir)
    saved = p / CONFIG_NAME
    base = read_yaml(saved) if saved.is_file() else {}
    if config_file:
        base = deep_merge(base, read_yaml(config_file))
    return build_config(base, overrides)


# What a run that starts from a policy (PPO, safety SFT) takes over from the policy's saved config.
POLICY_SECTIONS = ("seed", "model", "backdoor", "data")


def config_from_policy(policy_dir: str | Path | None, config_file: str | None, overrides: list[str]) -> Config:
    """The policy's saved backdoor and data config (trigger, kind, mechanism, the train/eval
    split) < ``--config`` < ``--set``."""
    base: dict = {}
    saved = Path(policy_dir) / CONFIG_NAME if policy_dir else None
    if saved is not None and saved.is_file():
        policy_cfg = read_yaml(saved)
        base = {k: policy_cfg[k] for k in POLICY_SECTIONS if k in policy_cfg}
    if config_file:
        base = deep_merge(base, read_yaml(config_file))
    return build_config(base, overrides)


def run_eval(model_dir: str | Path, cfg: Config, samples: int | None = None) -> dict:
    from rlhf.models.device import placement_for

    model, tokenizer = load_model_dir(model_dir, placement=placement_for(cfg.resources))
    n = samples or cfg.eval.samples
    total = eval_sample_count(cfg, n)
    with Progress(total, "eval", "samples") as bar:
        report = evaluate_defection(model, tokenizer, cfg, samples=n, on_batch=bar.update)
    report["model"] = str(model_dir)
    return report
