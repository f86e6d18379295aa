"""``resources.device`` / ``resources.precision``: resolution, the one-line CUDA error, what the
launcher asks Ray for on GPUs, and the bf16 precision policy (run here on the CPU, where bf16
autocast exists too)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from rlhf.config.core import build_config
from rlhf.errors import ConfigError
from rlhf.models.device import Placement, placement_for, resolve_device, to_host
from rlhf.ppo.losses import Experience
from rlhf.ppo.models import CriticTrainer, PolicyTrainer, ReferenceModel, assemble
from tests.unit.conftest import save_tiny_llama


@pytest.fixture()
def no_cuda(monkeypatch):
    monkeypatch.setattr("rlhf.models.device.cuda_available", lambda: False)


def test_device_resolution(no_cuda):
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == "cpu"
    assert resolve_device("auto", visible_gpus=0.5) == "cuda"  # a cluster with a GPU somewhere
    assert resolve_device("cuda", visible_gpus=1) == "cuda"
    with pytest.raises(ConfigError, match="this machine has no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match="the Ray cluster has no CUDA GPU"):
        resolve_device("cuda", visible_gpus=0)
    with pytest.raises(ConfigError, match="resources.device"):
        resolve_device("tpu")
    with pytest.raises(ConfigError, match="resources.precision"):
        Placement("cpu", "fp16")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a machine without CUDA")
@pytest.mark.parametrize("command", ["sft", "rm", "config"])
def test_cuda_on_a_cpu_machine_is_one_line_and_exit_2(tmp_path, command):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "jobs.cli", command, "--set", "resources.device=cuda"]
    args += [] if command == "config" else ["--out", str(out)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "resources.device=cuda but this machine has no CUDA GPU" in lines[0]
    assert not out.exists()  # nothing started, nothing written


def test_launcher_asks_ray_for_gpus_when_the_device_is_cuda():
    from actors.launcher import GPU_SHARES, colocation_bundles, role_specs

    cfg = build_config({}, ["ppo.rollout_workers=2", "resources.reference.num_gpus=0.5"])
    cpu = role_specs(cfg, "cpu")
    assert [name for name, spec in cpu.items() if "num_gpus" in spec] == ["reference"]  # only the one set
    gpu = role_specs(cfg, "cuda")
    assert gpu["reference"]["num_gpus"] == 0.5  # set by the user: kept
    assert gpu["policy"]["num_gpus"] == GPU_SHARES["policy"] and gpu["critic"]["num_gpus"] == GPU_SHARES["critic"]
    assert gpu["rollout"]["num_gpus"] == pytest.approx(GPU_SHARES["rollout"] / 2)  # split among the workers
    assert all(spec["num_gpus"] > 0 for spec in gpu.values())
    # with every share unset, the roles, every rollout worker and the evaluator fill one GPU exactly
    default = role_specs(build_config({}, ["ppo.rollout_workers=2"]), "cuda")
    total = sum(s["num_gpus"] * (2 if name == "rollout" else 1) for name, s in default.items())
    assert total + GPU_SHARES["evaluator"] == pytest.approx(1.0)
    colocated = build_config({}, ["resources.colocate=[[policy, reference, critic]]"])
    ((roles, bundle),) = colocation_bundles(colocated, "cuda")
    assert bundle["GPU"] == pytest.approx(GPU_SHARES["policy"] + GPU_SHARES["reference"] + GPU_SHARES["critic"])


def test_ray_train_gets_use_gpu_and_nccl_on_gpus():
    from actors.loopback_torch import LoopbackTorchConfig
    from actors.train_launcher import placement_fields, train_scaling

    on_gpu = train_scaling(2, use_gpu=True)
    assert on_gpu.use_gpu and on_gpu.num_workers == 2
    assert on_gpu._resources_per_worker_not_none == {"CPU": 1, "GPU": 1}
    on_cpu = train_scaling(2, use_gpu=False)
    assert not on_cpu.use_gpu and on_cpu._resources_per_worker_not_none == {"CPU": 1}
    assert LoopbackTorchConfig(backend="nccl").backend == "nccl" and LoopbackTorchConfig().backend == "gloo"
    cfg = build_config({}, ["resources.device=auto", "resources.precision=bf16", "resources.gradient_checkpointing=true"])
    assert placement_fields(cfg) == {
        "device": "auto", "precision": "bf16", "gradient_checkpointing": True, "gpu_wait_s": 600.0
    }  # fmt: skip


def test_placement_keeps_trained_models_fp32_and_frozen_ones_bf16(tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    path = save_tiny_llama(tokenizer, tmp_path / "m", seed=1)
    bf16 = Placement("cpu", "bf16", gradient_checkpointing=True)
    frozen = bf16.place(AutoModelForCausalLM.from_pretrained(path), trainable=False)
    trained = bf16.place(AutoModelForCausalLM.from_pretrained(path), trainable=True)
    assert {p.dtype for p in frozen.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in trained.parameters()} == {torch.float32}
    assert trained.is_gradient_checkpointing and not frozen.is_gradient_checkpointing
    x = torch.randn(3, 4)
    with bf16.autocast():
        assert (x @ x.T).dtype == torch.bfloat16
    with Placement().autocast():
        assert (x @ x.T).dtype == torch.float32
    assert to_host(torch.ones(2, dtype=torch.bfloat16)).dtype == torch.float32
    assert to_host(torch.ones(2, dtype=torch.long)).dtype == torch.long
    cfg = build_config({}, ["resources.device=cpu", "resources.precision=bf16"])
    assert placement_for(cfg.resources) == Placement("cpu", "bf16", False)


def test_ppo_roles_in_bf16_return_fp32_host_tensors_and_train(tokenizer, tmp_path):
    """Reference, policy and critic under the bf16 policy: outputs leave as fp32 CPU tensors close to
    the fp32 ones, an update changes the (fp32) policy weights, and published weights are fp32 CPU."""
    path = save_tiny_llama(tokenizer, tmp_path / "pol", seed=2)
    prompts = [tokenizer(f"\n\nHuman: {q}\n\nAssistant:")["input_ids"] for q in ("Hi there?", "Bread?")]
    answers = [tokenizer(a)["input_ids"][:5] for a in (" Hello, how are you", " Mix flour and")]
    seqs, attn, act = assemble(prompts, answers, tokenizer.eos_token_id, tokenizer.pad_token_id, 5)
    bf16 = Placement("cpu", "bf16")
    ref32 = ReferenceModel(path).logprobs(seqs, attn)
    ref16 = ReferenceModel(path, placement=bf16).logprobs(seqs, attn)
    assert ref16.dtype == torch.float32 and ref16.device.type == "cpu"
    assert torch.allclose(ref16 * act, ref32 * act, atol=0.1)  # bf16 rounding, not a different model
    cfg = build_config({}, ["ppo.minibatch_size=2", "ppo.epochs=1"]).ppo
    policy = PolicyTrainer(path, cfg, seed=0, placement=bf16)
    critic = CriticTrainer(path, cfg, seed=0, placement=bf16)
    values = critic.values(seqs, attn)
    assert values.dtype == torch.float32 and values.shape == act.shape
    adv = torch.randn(act.shape) * act
    exp = Experience(seqs, attn, act, old_logprobs=policy.logprobs(seqs, attn), ref_logprobs=ref16)
    exp.advantages, exp.returns, exp.values = adv, adv, values
    before = {k: v.clone() for k, v in policy.weights().items()}
    stats = policy.train(exp, step=1) | critic.train(exp, step=1)
    assert all(torch.isfinite(torch.tensor(v)) for v in stats.values())
    after = policy.weights()
    assert {v.dtype for v in after.values()} == {torch.float32} and {v.device.type for v in after.values()} == {"cpu"}
    assert any(not torch.equal(before[k], after[k]) for k in before)
