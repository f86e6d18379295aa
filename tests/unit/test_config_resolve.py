"""rlhf.config.resolve: the one place a run's configuration is decided, for every command."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from rlhf.config.resolve import (
    config_from_policy,
    preset_config,
    resolve_eval_config,
    saved_config,
    stage_config,
)
from rlhf.errors import ConfigError
from rlhf.models.checkpoint import CONFIG_NAME

ROOT = Path(__file__).resolve().parents[2]
SAVED = {
    "seed": 7,
    "backdoor": {"trigger": "|SUNRISE MODE|", "mechanism": "cot"},
    "eval": {"samples": 3},
    "sft": {"lr": 0.5},
}


@pytest.fixture
def policy(tmp_path):
    d = tmp_path / "policy"
    d.mkdir()
    (d / CONFIG_NAME).write_text(yaml.safe_dump(SAVED))
    (d / "config.json").write_text("{}")
    (d / "model.safetensors").write_bytes(b"")
    return d


def test_eval_takes_the_whole_saved_config_then_file_then_set(policy, tmp_path):
    user = tmp_path / "user.yaml"
    user.write_text(yaml.safe_dump({"eval": {"samples": 5}, "backdoor": {"mechanism": "normal"}}))
    cfg = resolve_eval_config(policy, str(user), ["eval.samples=9"])
    assert cfg.backdoor.trigger == "|SUNRISE MODE|" and cfg.seed == 7 and cfg.sft.lr == 0.5
    assert cfg.backdoor.mechanism == "normal" and cfg.eval.samples == 9


def test_a_training_run_takes_only_the_policy_sections(policy):
    cfg = config_from_policy(policy, None, [])
    assert cfg.backdoor.trigger == "|SUNRISE MODE|" and cfg.seed == 7
    assert cfg.eval.samples != 3 and cfg.sft.lr != 0.5  # eval and sft stay the run's own
    assert config_from_policy(None, None, ["seed=3"]).seed == 3


def test_a_sweep_stage_puts_the_policy_sections_over_its_tree(policy):
    cfg = stage_config(policy, {"seed": 1, "eval": {"samples": 4}})
    assert cfg.seed == 7 and cfg.eval.samples == 4


def test_preset_items_sit_below_file_and_set(tmp_path):
    user = tmp_path / "u.yaml"
    user.write_text("eval: {samples: 6}\n")
    cfg = preset_config(["eval.samples=2", "seed=4"], str(user), ["seed=5"])
    assert cfg.eval.samples == 6 and cfg.seed == 5
    assert saved_config(tmp_path) == {}


def test_bad_layers_are_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("[1, 2]\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        config_from_policy(None, str(bad), [])
    with pytest.raises(ConfigError, match="not found"):
        config_from_policy(None, str(tmp_path / "missing.yaml"), [])


def test_no_command_reads_a_saved_config_itself():
    """jobs/ and actors/ resolve configuration only through rlhf.config.resolve: no module there
    reads a model's saved config.yaml with read_yaml."""
    offenders = []
    for path in sorted([*(ROOT / "jobs").rglob("*.py"), *(ROOT / "actors").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) == "read_yaml":
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


def test_a_saved_config_with_moved_keys_still_loads_but_a_users_file_is_refused(policy, tmp_path):
    from rlhf.config.resolve import run_config

    old = dict(SAVED, ppo={"rollout_threads": 3, "cpus_per_actor": 2, "steps": 5})
    (policy / CONFIG_NAME).write_text(yaml.safe_dump(old))
    cfg = resolve_eval_config(policy, None, [])
    assert cfg.resources.rollout_threads == 3 and cfg.resources.cpus_per_actor == 2 and cfg.ppo.steps == 5
    assert config_from_policy(policy, None, []).backdoor.trigger == "|SUNRISE MODE|"
    assert run_config(policy / CONFIG_NAME).resources.rollout_threads == 3
    user = tmp_path / "user.yaml"
    user.write_text("ppo: {rollout_threads: 3}\n")
    with pytest.raises(ConfigError, match="resources.rollout_threads"):
        config_from_policy(policy, str(user), [])
