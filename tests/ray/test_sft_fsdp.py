"""``sft.strategy=fsdp``: backdoor SFT on 2 Ray Train workers with FSDP2 follows the DDP run (same
data order) within 1e-3 at every logged step, and the gathered checkpoints load with HF: 40 steps
(the acceptance run, slow: two Ray Train runs of ~2 minutes each on 2 shared cores) and 8 (CI)."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from jobs.sft import run_sft
from rlhf.config.core import build_config
from rlhf.metrics import read_metrics
from tests.ray.conftest import SFT_TEST_OVERRIDES

pytestmark = pytest.mark.ray


def overrides(steps: int) -> list[str]:
    every = steps // 10 or 1
    return [
        *SFT_TEST_OVERRIDES,
        f"sft.max_steps={steps}",
        f"sft.log_every={every}",
        f"sft.checkpoint_every={steps // 2}",
    ]


def losses(run):
    return [(r["step"], r["train/loss"]) for r in read_metrics(run / "metrics.jsonl") if "train/loss" in r]


@pytest.mark.parametrize("steps", [pytest.param(40, marks=pytest.mark.slow), 8])
def test_fsdp_follows_ddp_loss_curve(ray_cluster, tmp_path, steps):
    ddp, fsdp = tmp_path / "ddp", tmp_path / "fsdp"
    run_sft(build_config({}, overrides(steps)), ddp)
    run_sft(build_config({}, [*overrides(steps), "sft.strategy=fsdp"]), fsdp)
    a, b = losses(ddp), losses(fsdp)
    every = steps // 10 or 1
    assert [s for s, _ in a] == list(range(every, steps + 1, every)) and [s for s, _ in b] == [s for s, _ in a]
    worst = max(abs(x - y) for (_, x), (_, y) in zip(a, b, strict=True))
    print(f"fsdp vs ddp, {steps} steps: {len(a)} logged, worst |loss difference| {worst:.2e}")
    assert worst <= 1e-3, (a, b)
    assert a[-1][1] < a[0][1] - 0.1  # the curves compared are of a model that learns
    for name in ("model", f"checkpoints/step-{steps // 2:06d}"):
        m1 = AutoModelForCausalLM.from_pretrained(ddp / name)
        m2 = AutoModelForCausalLM.from_pretrained(fsdp / name)
        w1, w2 = m1.state_dict(), m2.state_dict()
        assert w1.keys() == w2.keys()
        assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) < 1e-3
    assert torch.equal(m2.lm_head.weight, m2.model.embed_tokens.weight)  # still tied after the gather


def test_lora_with_fsdp_is_one_line():
    from rlhf.errors import ConfigError

    with pytest.raises(ConfigError, match="LoRA adapters train with sft.strategy=ddp"):
        build_config({}, ["model.lora.enabled=true", "sft.strategy=fsdp"])


def test_more_workers_than_the_cluster_is_one_line_before_training(ray_cluster, tmp_path):
    from rlhf.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        run_sft(build_config({}, [*overrides(8), "sft.num_workers=3"]), tmp_path)
    assert "sft.num_workers=3 rank(s) x 1 CPU = 3 CPUs, but the cluster has 2" in str(err.value)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "ray_train").exists() and not (tmp_path / "metrics.jsonl").exists()
