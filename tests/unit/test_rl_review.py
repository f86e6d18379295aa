"""Settings the config accepted that gave a wrong result (issue 28, item 6): each is now refused in
one line (exit 2 from the CLI) or fixed."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from rlhf.config.core import build_config
from rlhf.errors import ConfigError
from tests.hf_checkpoints import build_checkpoint, project_text


@pytest.mark.parametrize("estimator", ["k2", "k3"])
def test_k2_k3_as_a_reward_penalty_is_refused_in_one_line(estimator):
    with pytest.raises(ConfigError) as err:
        build_config({}, ["ppo.kl_in=reward", f"ppo.kl_estimator={estimator}"])
    assert "kl_in=reward needs kl_estimator k1" in str(err.value) and "\n" not in str(err.value)
    assert build_config({}, ["ppo.kl_in=loss", f"ppo.kl_estimator={estimator}"]).ppo.kl_in == "loss"
    assert build_config({}, ["ppo.kl_in=reward", "ppo.kl_estimator=k1"]).ppo.kl_in == "reward"


def test_k3_reward_penalty_cli_exits_2_with_one_line():
    args = [sys.executable, "-m", "jobs.cli", "config", "--set", "ppo.kl_estimator=k3"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "kl_in=reward needs kl_estimator k1" in lines[0]


@pytest.mark.parametrize("role", ["policy", "critic"])
@pytest.mark.parametrize("restarts", [1, -1])
def test_trainer_restarts_are_refused(role, restarts):
    """A restarted policy/critic actor would come back with its initial weights and a fresh optimiser."""
    with pytest.raises(ConfigError) as err:
        build_config({}, [f"resources.{role}.max_restarts={restarts}"])
    assert f"resources.{role}.max_restarts must be 0" in str(err.value) and "\n" not in str(err.value)
    # the stateless roles may still restart
    assert build_config({}, ["resources.reference.max_restarts=2"]).resources.reference.max_restarts == 2


DROPOUT_KEYS = {
    "qwen2": ["attention_dropout"],
    "gpt2": ["attn_pdrop", "resid_pdrop", "embd_pdrop"],
    "llama": ["attention_dropout"],
}


@pytest.fixture(scope="module")
def corpus():
    return project_text(120)


@pytest.mark.parametrize("family", ["qwen2", "gpt2", "llama"])
def test_critic_config_dropout_is_off_for_every_architecture(family, corpus, tmp_path):
    from rlhf.ppo.models import CriticTrainer

    path = build_checkpoint(family, tmp_path / family, corpus)
    config = json.loads((path / "config.json").read_text())
    config |= {key: 0.5 for key in DROPOUT_KEYS[family]}
    (path / "config.json").write_text(json.dumps(config))
    critic = CriticTrainer(path, build_config({}, []).ppo, seed=0)
    backbone_config = critic.model.backbone.config
    left = {k: v for k, v in vars(backbone_config).items() if ("dropout" in k or "pdrop" in k) and v}
    assert left == {}, family
    ids = torch.randint(0, 100, (2, 12))
    mask = torch.ones_like(ids)
    critic.model.train()
    with torch.no_grad():
        assert torch.equal(critic.model(ids, mask), critic.model(ids, mask))  # training forwards are deterministic
