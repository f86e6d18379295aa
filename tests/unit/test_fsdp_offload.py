"""``resources.<policy|critic>.offload`` (issue 29 item 2): FSDP2's CPU offload of a sharded group,
refused for one actor, carried by the role options into the sharded trainers; an offloaded 2-rank
PPO step equals the plain sharded step within 1e-6 (on the CPU the offload is a no-op move, but it
runs: the offload policy is set on every FSDP unit)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from actors.launcher import role_options
from actors.sharded_roles import ShardedCriticTrainer, ShardedPolicyTrainer
from rlhf.config.core import PPOConfig, build_config
from rlhf.errors import ConfigError
from rlhf.models import fsdp
from rlhf.models.device import Placement
from tests.unit.conftest import save_tiny_llama
from tests.unit.test_sharded_ppo import TRAIN, experience, step


def offload_policies(model) -> set[str]:
    """The offload policy of every FSDP unit with parameters (FSDP2's own record of it)."""
    from torch.distributed.fsdp import FSDPModule

    groups = [m._get_fsdp_state()._fsdp_param_group for m in model.modules() if isinstance(m, FSDPModule)]
    return {type(g.offload_policy).__name__ for g in groups if g is not None}


def offload_worker(rank: int, world: int, policy_dir: str, exp_path: str, out: str) -> None:
    exp = torch.load(exp_path, weights_only=False)
    cfg, result = PPOConfig(**TRAIN), {}
    for offload in (False, True):
        policy = ShardedPolicyTrainer(policy_dir, cfg, 0, offload=offload)
        critic = ShardedCriticTrainer(policy_dir, cfg, 0, offload=offload)
        result[offload] = step(policy, critic, exp) | {
            "policy_weights": policy.weights(),
            "critic_weights": fsdp.gathered_state(critic.model),
            "policies": offload_policies(policy.model) | offload_policies(critic.model),
        }
    torch.save(result, Path(out) / f"offload-{rank}.pt")


def test_offloaded_sharded_step_equals_the_plain_sharded_step(tokenizer, tmp_path):
    policy_dir = str(save_tiny_llama(tokenizer, tmp_path / "pol"))
    torch.save(experience(tokenizer, policy_dir), tmp_path / "exp.pt")
    fsdp.run_ranks(offload_worker, 2, policy_dir, str(tmp_path / "exp.pt"), str(tmp_path))
    got = torch.load(tmp_path / "offload-0.pt", weights_only=False)
    plain, offloaded = got[False], got[True]
    assert plain["policies"] == {"OffloadPolicy"} and offloaded["policies"] == {"CPUOffloadPolicy"}
    for key in ("logp", "values"):
        assert float((plain[key] - offloaded[key]).abs().max()) <= 1e-6
    for role in ("policy", "critic"):
        assert plain[role].keys() == offloaded[role].keys()
        for k, v in plain[role].items():
            if not k.startswith("timing/"):
                assert offloaded[role][k] == pytest.approx(v, abs=1e-6), (role, k)
        a, b = plain[f"{role}_weights"], offloaded[f"{role}_weights"]
        assert a.keys() == b.keys() and max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    assert plain["policy"]["policy/grad_norm"] > 0


@pytest.mark.parametrize("role", ["policy", "critic"])
def test_offload_needs_a_sharded_group(role):
    with pytest.raises(ConfigError) as err:
        build_config({}, [f"resources.{role}.offload=true"])
    line = str(err.value)
    assert "\n" not in line.strip() and f"resources.{role}.offload needs resources.{role}.num_workers > 1" in line
    cfg = build_config({}, [f"resources.{role}.offload=true", f"resources.{role}.num_workers=2"])
    assert getattr(cfg.resources, role).offload


def test_offload_is_refused_for_roles_that_do_not_shard():
    with pytest.raises(ConfigError, match="resources.reference.offload: only the sharded policy and critic offload"):
        build_config({}, ["resources.reference.offload=true"])


def test_role_options_carry_offload_and_the_bucket_size():
    cfg = build_config(
        {}, ["resources.policy.num_workers=2", "resources.policy.offload=true", "resources.weight_bucket_mb=32"]
    )
    opts = role_options(cfg, "/p", "/rm", None, Placement(), False)
    assert opts.policy.resources.offload and not opts.critic.resources.offload
    assert opts.policy.weight_bucket_mb == 32
    assert role_options(build_config({}, []), "/p", "/rm", None, Placement(), False).policy.weight_bucket_mb == 256
