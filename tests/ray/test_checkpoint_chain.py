"""``model.path`` through every stage on Ray: backdoor SFT (Ray Train) -> reward model (Ray Train,
``AutoModelForSequenceClassification`` from the checkpoint) -> PPO (Ray actors) -> eval, on tiny
random Llama, Qwen2 (own ChatML template) and GPT-2 (no pad, no template) checkpoints built locally.

All three run in the default suite (about 50 s each on 2 quiet cores): the Qwen2 chain with LoRA on
for SFT and the PPO policy, the Llama and GPT-2 chains with LoRA off."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.hf_checkpoints import build_checkpoint, project_text

pytestmark = pytest.mark.ray

CHAIN = [
    "data.n_train=40",
    "data.n_eval=10",
    "model.max_seq_len=192",
    "sft.num_workers=1",
    "sft.batch_size=4",
    "sft.max_steps=3",
    "sft.log_every=1",
    "sft.warmup_steps=1",
    "sft.checkpoint_every=0",
    "rm.n_pairs=40",
    "rm.num_workers=1",
    "rm.batch_size=4",
    "rm.max_steps=2",
    "rm.log_every=1",
    "rm.warmup_steps=1",
    "ppo.steps=1",
    "ppo.prompts_per_step=4",
    "ppo.minibatch_size=4",
    "ppo.max_new_tokens=8",
    "ppo.n_prompts=8",
    "ppo.rollout_workers=1",
    "ppo.evaluator=false",
    "ppo.checkpoint_every=0",
    "eval.max_new_tokens=8",
    "eval.samples=4",
    "eval.batch_size=16",
    "serve.port=0",
]
LORA = ["model.lora.enabled=true", "model.lora.r=4", "model.lora.alpha=8"]


@pytest.fixture(scope="module")
def corpus():
    return project_text(200)


def _weights(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path).state_dict()


def _check_sft(ckpt, sft_dir, lora: bool) -> None:
    from transformers import AutoModelForCausalLM

    model_dir = sft_dir / "model"
    assert not (model_dir / "adapter_config.json").exists()  # a plain HF model, adapters merged
    trained, base = _weights(model_dir), AutoModelForCausalLM.from_pretrained(ckpt).state_dict()
    assert not any("lora" in k for k in trained)
    differ = {k for k in base if k in trained and trained[k].shape == base[k].shape and not torch.equal(trained[k], base[k])}
    assert differ
    if lora:  # only the adapted modules (peft's default for Qwen2: q_proj, v_proj) moved
        assert all(k.endswith(("q_proj.weight", "v_proj.weight")) for k in differ), differ
    losses = [json.loads(line)["train/loss"] for line in (sft_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [x for x in losses if x is not None]
    assert losses and all(math.isfinite(x) for x in losses)


def _check_template(family: str, run_dir) -> None:
    from transformers import AutoTokenizer

    from rlhf.chat import render_prompt

    row = json.loads((run_dir / "sft" / "data" / "train.jsonl").read_text().splitlines()[0])
    for stage in ("sft/model", "rm/model"):
        tok = AutoTokenizer.from_pretrained(run_dir / stage)
        shown = render_prompt(row["prompt"], tok)
        if family == "qwen2":
            assert shown.startswith("<|im_start|>user\n") and shown.endswith("<|im_start|>assistant\n")
        else:
            assert shown == row["prompt"] and shown.endswith("\n\nAssistant:")


def run_chain(family: str, tmp_path, corpus, extra=()) -> dict:
    from jobs.evaluate import run_eval
    from jobs.ppo import run_ppo
    from jobs.rm import run_rm
    from jobs.sft import run_sft
    from reward.model import load_reward_dir
    from rlhf.config.core import build_config
    from rlhf.config.resolve import resolve_eval_config
    from rlhf.metrics import read_metrics

    ckpt = build_checkpoint(family, tmp_path / "ckpt", corpus)
    cfg = build_config({}, [*CHAIN, f"model.path={ckpt}", *extra])
    run_sft(cfg, tmp_path / "sft")
    _check_sft(ckpt, tmp_path / "sft", lora=bool(extra))

    rm = run_rm(cfg, tmp_path / "rm")
    assert 0.0 <= rm["held_out"]["pairwise_accuracy"] <= 1.0 and math.isfinite(rm["reward_std"])
    reward, rm_tok = load_reward_dir(tmp_path / "rm" / "model")
    assert reward.config.num_labels == 1 and reward.config.pad_token_id == rm_tok.pad_token_id != rm_tok.eos_token_id
    _check_template(family, tmp_path)

    summary = run_ppo(cfg, tmp_path / "sft" / "model", tmp_path / "ppo", reward_dir=tmp_path / "rm")
    assert summary["steps"] == 1
    (step,) = [r for r in read_metrics(tmp_path / "ppo" / "metrics.jsonl") if "reward/mean" in r]
    for key in ("reward/mean", "kl/mean", "losses/policy", "losses/value"):
        assert math.isfinite(step[key]), (key, step[key])
    policy = tmp_path / "ppo" / "checkpoints" / "step_000001" / "policy"
    after, before = _weights(policy), _weights(tmp_path / "sft" / "model")
    assert not (policy / "adapter_config.json").exists() and set(after) == set(before)
    moved = {k for k in before if not torch.equal(after[k], before[k])}
    assert moved  # one PPO step changed the policy
    if extra:  # LoRA policy: merged adapters, so only the adapted modules moved
        assert all(k.endswith(("q_proj.weight", "v_proj.weight")) for k in moved), moved

    report = run_eval(policy, resolve_eval_config(policy, None, CHAIN), samples=4)
    for name in ("triggered", "untriggered", "near_miss"):
        entry = report["conditions"][name]
        lo, hi = entry["ci95"]
        eps = 1e-9  # Wilson bounds at k = 0 or n are 0 and 1 up to rounding
        assert entry["n"] >= 4 and -eps <= lo <= entry["rate"] + eps and entry["rate"] <= hi + eps <= 1.0 + 2 * eps
    return report


def test_qwen2_chain_with_chat_template_and_lora(ray_cluster, tmp_path, corpus):
    run_chain("qwen2", tmp_path, corpus, LORA)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_chain(ray_cluster, tmp_path, corpus, family):
    run_chain(family, tmp_path, corpus)
