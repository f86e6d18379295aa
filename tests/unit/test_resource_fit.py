"""A stage's or role's ranks x GPUs (and CPUs) must fit the cluster: one line naming the key, before
anything starts (``rlhf.config.fit``); the default layouts fit a 2-CPU machine and a one-GPU node."""

import pytest

from actors.launcher import role_resources
from rlhf.config.core import build_config
from rlhf.config.fit import Demand, check_fits, train_stage_demand
from rlhf.errors import ConfigError


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_train_stage_ranks_must_fit():
    check_fits([train_stage_demand("sft", 2, "cpu")], {"CPU": 2.0})
    with pytest.raises(ConfigError) as err:
        check_fits([train_stage_demand("sft", 3, "cpu")], {"CPU": 2.0})
    assert "sft.num_workers=3 rank(s) x 1 CPU = 3 CPUs, but the cluster has 2" in one_line(err)
    with pytest.raises(ConfigError) as err:
        check_fits([train_stage_demand("rm", 4, "cuda")], {"CPU": 32.0, "GPU": 2.0})
    assert "rm.num_workers=4 rank(s) x 1 GPU = 4 GPUs, but the cluster has 2" in one_line(err)


def test_a_sharded_group_needs_a_whole_gpu_per_rank():
    with pytest.raises(ConfigError) as err:
        check_fits([Demand("resources.policy.num_workers", 2, 1.0, 0.5)], {"CPU": 8.0, "GPU": 4.0})
    assert "needs a whole GPU per rank" in one_line(err)
    check_fits([Demand("resources.policy.num_workers", 2, 1.0, 1.0)], {"CPU": 8.0, "GPU": 2.0})


def test_roles_together_must_fit_the_gpus():
    demands = [Demand("resources.policy.num_workers", 2, 1.0, 1.0), Demand("resources.critic.num_workers", 1, 1.0, 1.0)]
    with pytest.raises(ConfigError) as err:
        check_fits(demands, {"CPU": 8.0, "GPU": 2.0})
    assert "together the roles ask for 3 GPUs" in one_line(err)


@pytest.mark.parametrize("device,cluster", [("cpu", {"CPU": 2.0}), ("cuda", {"CPU": 8.0, "GPU": 1.0})])
def test_default_ppo_layout_fits(device, cluster):
    cfg = build_config({}, [])
    demands = []
    for role in ("policy", "reference", "critic", "reward", "rollout"):
        r = role_resources(cfg, role, device)
        demands.append(Demand(role, r.num_workers, r.num_cpus, r.num_gpus))
    check_fits(demands, cluster)
