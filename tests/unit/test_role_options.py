"""Typed role options made by the launcher (issue 27 item 4) and the GPU settings it computes for
each role (issue 28 items 3-4): each role's device from its own resources, the rollout GPU share
honoured on CUDA, vLLM's memory share, context length, tensor parallelism, dtype and rendezvous
address, fractional shares rounded to Ray's granularity. Nothing here needs a GPU, Ray or vLLM:
the settings are computed and checked, not run."""

from __future__ import annotations

import sys
import types
from dataclasses import fields

import pytest

import actors.launcher as launcher
from actors.launcher import (
    GPU_SHARES,
    RAY_GPU_GRANULARITY,
    colocation_bundles,
    evaluator_options,
    ray_options,
    role_options,
    role_specs,
    rollout_options,
)
from actors.role_options import (
    CriticOptions,
    PolicyOptions,
    ReferenceOptions,
    Resources,
    RewardOptions,
    RolloutOptions,
)
from rlhf.config.core import build_config
from rlhf.config.runtime import PPO_ROLES
from rlhf.errors import ConfigError
from rlhf.models.device import Placement

CUDA = Placement("cuda", "bf16")
VLLM = ["ppo.rollout_backend=vllm"]


def _opts(*sets: str, placement: Placement = CUDA, in_process: bool = False):
    return role_options(build_config({}, list(sets)), "/p", "/rm", None, placement, in_process)


# ---- issue 27 item 4: one typed options object per role -------------------------------------------


def test_every_role_gets_its_own_typed_options_from_the_launcher():
    opts = _opts("ppo.critic_init=reward", "resources.torch_threads=3", "resources.rollout_threads=2")
    assert isinstance(opts.policy, PolicyOptions) and isinstance(opts.reference, ReferenceOptions)
    assert isinstance(opts.critic, CriticOptions) and isinstance(opts.reward, RewardOptions)
    assert isinstance(opts.rollout, RolloutOptions)
    assert [o.role for o in (opts.policy, opts.reference, opts.critic, opts.reward, opts.rollout)] == list(
        PPO_ROLES[:2] + ("critic", "reward", "rollout")
    )
    assert opts.critic.model_dir == "/rm" and opts.policy.model_dir == "/p" == opts.rollout.model_dir
    assert opts.policy.threads == 3 and opts.rollout.threads == 2 and opts.reward.threads == 2
    assert opts.rollout.resources.num_workers == 1 and "num_workers" in {f.name for f in fields(Resources)}
    assert _opts("ppo.advantage_estimator=rloo", "ppo.samples_per_prompt=2").critic is None


def test_ray_options_are_made_from_resources_alone():
    assert ray_options(Resources(num_cpus=0.5)) == {"num_cpus": 0.5}
    assert ray_options(Resources(num_cpus=1, num_gpus=0.25, max_restarts=2)) == {
        "num_cpus": 1, "num_gpus": 0.25, "max_restarts": 2, "max_task_retries": 2,
    }  # fmt: skip


@pytest.mark.parametrize(
    "old, new",
    [
        ("ppo.cpus_per_actor=1", "resources.cpus_per_actor"),
        ("ppo.rollout_gpus=1", "resources.rollout.num_gpus"),
        ("ppo.torch_threads=2", "resources.torch_threads"),
        ("ppo.rollout_threads=2", "resources.rollout_threads"),
    ],
)
def test_old_resource_keys_are_refused_naming_the_new_key(old, new):
    with pytest.raises(ConfigError, match=f"moved: set {new} instead") as err:
        build_config({}, [old])
    assert "\n" not in str(err.value)


def test_in_process_roles_are_built_from_the_options(monkeypatch):
    import actors.ppo_actors as roles

    built = []

    def fake(cls_name):
        return lambda opts: built.append((cls_name, opts)) or object()

    for name in ("Policy", "Reference", "Critic", "Reward", "RolloutWorker"):
        monkeypatch.setattr(roles, name, fake(name))
    monkeypatch.setattr(launcher.torch, "set_num_threads", lambda n: None)
    out = launcher.launch_roles(build_config({}, ["ppo.rollout_workers=2"]), "/p", "/rm", None, True)
    assert [n for n, _ in built] == ["RolloutWorker", "Policy", "Reference", "Critic", "Reward"]
    assert all(type(o).__name__ == f"{n.replace('Worker', '')}Options" for n, o in built)
    assert len(out.workers) == 2


def test_distillation_sampling_is_placed_by_the_launcher(monkeypatch):
    import actors.sampling as sampling

    seen = {}
    monkeypatch.setattr(launcher, "resolve_placement", lambda cfg, in_process: CUDA)
    monkeypatch.setattr(launcher, "start_rollout_workers", lambda opts, name: seen.update(opts=opts, name=name))
    cfg = build_config({}, [*VLLM, "resources.rollout.num_gpus=0.5", "resources.vllm.max_model_len=512"])
    sampling.start_workers(cfg, "/cot", 16)
    opts = seen["opts"]
    assert seen["name"] == "SampleWorker" and opts.batch_size == 16 and opts.resources.num_gpus == 0.5
    assert opts.engine["dtype"] == "bfloat16" and opts.engine["gpu_memory_utilization"] == 0.45  # not fp32, not 0.3


def test_the_evaluator_takes_its_share_and_device_from_the_launcher():
    on_gpu = evaluator_options(build_config({}, []), "/p", CUDA)
    assert on_gpu.resources.num_gpus == GPU_SHARES["evaluator"] and on_gpu.placement.device == "cuda"
    on_cpu = evaluator_options(build_config({}, ["resources.cpus_per_actor=0.5"]), "/p", Placement())
    assert on_cpu.resources == Resources(num_cpus=0.5) and on_cpu.placement.device == "cpu"


# ---- issue 28 item 3: each role resolves its own device --------------------------------------------


def test_a_role_without_a_gpu_is_not_told_to_use_cuda():
    opts = _opts("resources.reward.num_gpus=0", "resources.reference.num_gpus=0")
    assert opts.reward.placement.device == "cpu" and opts.reference.placement.device == "cpu"
    assert opts.reward.placement.precision == "bf16"  # the precision stays the run's
    assert opts.policy.placement.device == "cuda" and opts.rollout.placement.device == "cuda"
    assert "num_gpus" not in ray_options(opts.reward.resources)
    # one process sees the GPU whatever the shares say
    assert _opts("resources.reward.num_gpus=0", in_process=True).reward.placement.device == "cuda"


# ---- issue 28 item 4: the rollout share and the vLLM engine -----------------------------------------


def test_the_rollout_gpu_setting_is_honoured_on_cuda():
    cfg = build_config({}, [*VLLM, "resources.rollout.num_gpus=1", "ppo.rollout_workers=2"])
    assert role_specs(cfg, "cuda")["rollout"]["num_gpus"] == 1
    assert role_specs(cfg, "cpu")["rollout"]["num_gpus"] == 1
    assert _opts(*VLLM, "resources.rollout.num_gpus=1").rollout.resources.num_gpus == 1


def test_vllm_memory_utilization_is_checked_against_the_workers_share():
    default = _opts(*VLLM).rollout.engine
    assert default["gpu_memory_utilization"] == round(0.9 * GPU_SHARES["rollout"], 4)  # unset: within the share, not 0.3
    three = _opts(*VLLM, "ppo.rollout_workers=3").rollout
    assert three.resources.num_gpus == 0.0666 and three.engine["gpu_memory_utilization"] == round(0.9 * 0.0666, 4)
    with pytest.raises(ConfigError, match=r"gpu_memory_utilization=0.3 exceeds the rollout worker's GPU share 0.2"):
        _opts(*VLLM, "resources.vllm.gpu_memory_utilization=0.3")
    assert _opts(*VLLM, "resources.vllm.gpu_memory_utilization=0.15").rollout.engine["gpu_memory_utilization"] == 0.15
    cpu = _opts(*VLLM, "resources.rollout.num_gpus=0").rollout  # no GPU: vLLM on the CPU, no memory share
    assert cpu.placement.device == "cpu" and "gpu_memory_utilization" not in cpu.engine


def test_vllm_max_model_len_defaults_to_the_longest_prompt_plus_new_tokens(tmp_path):
    from tests.hf_checkpoints import family_config, family_tokenizer, project_text

    tok = family_tokenizer("qwen2", project_text(50))
    tok.save_pretrained(tmp_path)
    family_config("qwen2", tok).save_pretrained(tmp_path)
    cfg = build_config({}, VLLM)
    prompts = ["\n\nHuman: hi\n\nAssistant:", "\n\nHuman: a much longer question about sorting lists\n\nAssistant:"]
    opts = rollout_options(cfg, tmp_path, CUDA, prompts=prompts, max_new_tokens=7)
    from rlhf.chat import render_prompt

    longest = max(len(tok(render_prompt(p, tok), add_special_tokens=False)["input_ids"]) for p in prompts)
    assert opts.engine["max_model_len"] == longest + 7
    fixed = rollout_options(build_config({}, [*VLLM, "resources.vllm.max_model_len=4096"]), tmp_path, CUDA, prompts=prompts)
    assert fixed.engine["max_model_len"] == 4096
    # the PPO launcher sizes it from the RL pool and ppo.max_new_tokens
    ppo = role_options(cfg, tmp_path, None, "http://x", CUDA, prompts=prompts).rollout
    assert ppo.engine["max_model_len"] == longest + cfg.ppo.max_new_tokens
    limit = family_config("qwen2", tok).max_position_embeddings  # never more than the model's own context
    assert rollout_options(cfg, tmp_path, CUDA, prompts=prompts, max_new_tokens=10**6).engine["max_model_len"] == limit


def test_a_tensor_parallel_rollout_worker_owns_whole_gpus():
    cfg = build_config({}, [*VLLM, "resources.vllm.tensor_parallel_size=2", "ppo.rollout_workers=2"])
    assert role_specs(cfg, "cuda")["rollout"]["num_gpus"] == 2
    rollout = _opts(*VLLM, "resources.vllm.tensor_parallel_size=2").rollout
    assert rollout.engine["tensor_parallel_size"] == 2 and rollout.engine["gpu_memory_utilization"] == 0.9
    with pytest.raises(ConfigError, match="tensor_parallel_size=2 needs 2 whole GPUs"):
        _opts(*VLLM, "resources.vllm.tensor_parallel_size=2", "resources.rollout.num_gpus=1")


@pytest.mark.parametrize("precision, dtype", [("fp32", "float32"), ("bf16", "bfloat16")])
def test_vllm_dtype_follows_the_precision(precision, dtype):
    opts = _opts(*VLLM, f"resources.precision={precision}", placement=Placement("cuda", precision))
    assert opts.rollout.engine["dtype"] == dtype
    assert rollout_options(build_config({}, VLLM), "/p", Placement("cpu", precision)).engine["dtype"] == dtype


def test_vllm_rendezvous_is_pinned_to_loopback_only_on_a_cluster_of_our_own(monkeypatch):
    assert _opts(*VLLM).rollout.engine["host_ip"] == "127.0.0.1"
    assert _opts(*VLLM, "ray.address=auto").rollout.engine["host_ip"] is None
    made = {}
    fake = types.ModuleType("vllm")
    tokenizer = types.SimpleNamespace(eos_token_id=2)  # the engine's tokenizer: its EOS is a stop id
    fake.LLM = type("LLM", (), {"__init__": lambda self, **kw: made.update(kw), "get_tokenizer": lambda self: tokenizer})
    monkeypatch.setitem(sys.modules, "vllm", fake)
    from actors.vllm_backend import VLLMBackend, from_request
    from rlhf.rollout.backends import BackendRequest

    for var in ("VLLM_HOST_IP", "VLLM_LOOPBACK_IP"):
        monkeypatch.delenv(var, raising=False)
    joined = _opts(*VLLM, "ray.address=auto", "resources.vllm.max_model_len=300").rollout
    from_request(BackendRequest(model_dir="/p", engine=joined.engine))
    assert "VLLM_HOST_IP" not in __import__("os").environ  # joining a cluster: vLLM finds the node's address
    assert made["max_model_len"] == 300 and made["dtype"] == "bfloat16" and made["gpu_memory_utilization"] == 0.18
    VLLMBackend("/p", host_ip="127.0.0.1")
    assert __import__("os").environ["VLLM_HOST_IP"] == "127.0.0.1"


def test_fractional_gpu_shares_are_rounded_to_rays_granularity():
    for workers in (1, 2, 3, 7):
        cfg = build_config({}, [f"ppo.rollout_workers={workers}"])
        specs = role_specs(cfg, "cuda")
        for spec in specs.values():
            steps = spec["num_gpus"] / RAY_GPU_GRANULARITY
            assert abs(steps - round(steps)) < 1e-6 and spec["num_gpus"] > 0
        total = sum(s["num_gpus"] * (workers if name == "rollout" else 1) for name, s in specs.items())
        assert total + GPU_SHARES["evaluator"] <= 1.0 + 1e-9  # never more than the one GPU: nothing left pending
    colocated = build_config({}, ["ppo.rollout_workers=3", "resources.colocate=[[policy, rollout]]"])
    ((_, bundle),) = colocation_bundles(colocated, "cuda")
    assert bundle["GPU"] == pytest.approx(GPU_SHARES["policy"] + 3 * 0.0666)
