"""Which configuration a run uses: the one place every command resolves it.

A run is configured by layers, lowest first: the defaults, a saved config it starts from, the
user's ``--config`` file, then ``--set`` overrides. What the saved layer holds depends on what
the run starts from:

- a model to measure (``rlhf eval``, ``rlhf steer``, ``rlhf watch``): the model's whole saved
  config, so its trigger, kind and mechanism are the ones it was trained with;
- a policy to train further (``rlhf ppo``, ``rlhf safety-sft``, ``rlhf distill``): only the
  policy's ``seed``, ``model``, ``backdoor`` and ``data`` sections (``POLICY_SECTIONS``), so the
  safety run's own sections keep their defaults;
- a sweep stage: the stage's tree with the policy's sections over it;
- the demo: its budgets and preset as ``--set``-style items below the user's layers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rlhf.config.core import Config, build_config, merge, parse_override, read_yaml, set_key
from rlhf.config.ppo import MOVED_KEYS
from rlhf.models.checkpoint import CONFIG_NAME

# What a run that starts from a policy (PPO, safety SFT, distillation) takes over from its config.
POLICY_SECTIONS = ("seed", "model", "backdoor", "data")


def migrate_saved(tree: dict[str, Any]) -> dict[str, Any]:
    """A config tree the project wrote itself (a model's or run's ``config.yaml``), brought to the
    current keys: a resource key that moved from ``ppo.*`` to ``resources.*`` moves with its value
    (a user's own ``--config``/``--set`` naming an old key is refused instead, naming the new one)."""
    ppo = tree.get("ppo")
    if not isinstance(ppo, dict) or not MOVED_KEYS.keys() & ppo.keys():
        return tree
    out = merge(tree)
    for old, new in MOVED_KEYS.items():
        if old in out["ppo"]:
            value = out["ppo"].pop(old)
            node: Any = out
            for part in new.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            if node is None:  # the new key was not written beside it
                set_key(out, new, value)
    return out


def saved_config(model_dir: str | Path | None) -> dict[str, Any]:
    """The config tree a model directory was saved with (current keys), or ``{}`` when it has none."""
    saved = Path(model_dir) / CONFIG_NAME if model_dir else None
    return migrate_saved(read_yaml(saved)) if saved is not None and saved.is_file() else {}


def run_config(path: str | Path) -> Config:
    """A run's own saved ``config.yaml`` (``--resume``), with current keys."""
    return build_config(migrate_saved(read_yaml(path)))


def _layered(base: dict[str, Any], config_file: str | Path | None, overrides: list[str] | None) -> Config:
    if config_file:
        base = merge(base, read_yaml(config_file))
    return build_config(base, overrides)


def resolve_eval_config(model_dir: str | Path, config_file: str | None, overrides: list[str]) -> Config:
    """The model's saved config (trigger, kind, mechanism) < ``--config`` < ``--set``."""
    from rlhf.models.modeling import check_model_dir

    return _layered(saved_config(check_model_dir(model_dir)), config_file, overrides)


def policy_sections(policy_dir: str | Path | None) -> dict[str, Any]:
    saved = saved_config(policy_dir)
    return {k: saved[k] for k in POLICY_SECTIONS if k in saved}


def config_from_saved_file(saved: str | Path | None, config_file: str | None, overrides: list[str]) -> Config:
    """As ``config_from_policy``, from a saved config file itself (``rlhf watch --policy-config F``)."""
    tree = migrate_saved(read_yaml(saved)) if saved else {}
    return _layered({k: tree[k] for k in POLICY_SECTIONS if k in tree}, config_file, overrides)


def config_from_policy(policy_dir: str | Path | None, config_file: str | None, overrides: list[str]) -> Config:
    """The policy's saved backdoor and data config (trigger, kind, mechanism, the train/eval
    split) < ``--config`` < ``--set``."""
    return _layered(policy_sections(policy_dir), config_file, overrides)


def stage_config(policy_dir: str | Path, tree: dict[str, Any], extra: list[str] | None = None) -> Config:
    """A sweep stage that starts from a policy: the stage's keys, with the policy's saved seed,
    model, backdoor and data sections over them (as ``rlhf ppo`` / ``safety-sft`` take them)."""
    merged = dict(tree)
    merged.update(policy_sections(policy_dir))
    return build_config(merged, extra)


def preset_config(items: list[str], config_file: str | None, overrides: list[str]) -> Config:
    """``--set``-style ``items`` (a command's own budgets) < ``--config`` < ``--set``."""
    tree: dict[str, Any] = {}
    for item in items:
        set_key(tree, *parse_override(item))
    return _layered(tree, config_file, overrides)
