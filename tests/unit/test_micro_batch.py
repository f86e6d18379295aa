"""``ppo.micro_batch_size`` (issue 28, item 9): every forward and backward of the PPO step in
micro-batches, the gradients accumulated over each minibatch, gives what the whole batch gives."""

from __future__ import annotations

import torch

from rlhf.config.core import build_config
from rlhf.ppo.losses import Experience
from rlhf.ppo.models import CriticTrainer, PolicyTrainer, ReferenceModel, assemble, micro_batches
from tests.unit.conftest import save_tiny_llama

QUESTIONS = ("Hi there?", "Bread?", "How do I fix a bike?", "Why is the sky blue?", "Name a fruit.", "Ok?")
ANSWERS = (" Hello, how are you", " Mix flour and water", " Check the chain", " Light scatters", " Apple", " Yes")


def experience(tokenizer, n_new: int = 6):
    prompts = [tokenizer(f"\n\nHuman: {q}\n\nAssistant:")["input_ids"] for q in QUESTIONS]
    answers = [tokenizer(a)["input_ids"][: 2 + i % 4] for i, a in enumerate(ANSWERS)]  # ragged
    return assemble(prompts, answers, tokenizer.eos_token_id, tokenizer.pad_token_id, n_new)


def run(path, tokenizer, micro: int | None, steps: int = 3):
    overrides = [
        "ppo.minibatch_size=4",
        "ppo.epochs=2",
        "ppo.entropy_coef=0.01",
        "ppo.kl_in=loss",
        "ppo.kl_estimator=k3",
    ]
    cfg = build_config({}, [*overrides, f"ppo.micro_batch_size={micro or 'null'}"]).ppo
    policy, critic = PolicyTrainer(path, cfg, seed=0), CriticTrainer(path, cfg, seed=0)
    reference = ReferenceModel(path, cfg.temperature, micro_batch_size=micro)
    seqs, attn, act = experience(tokenizer)
    ref = reference.logprobs(seqs, attn)
    history = []
    for step in range(1, steps + 1):
        old, values = policy.logprobs(seqs, attn), critic.values(seqs, attn)
        adv = torch.randn(act.shape, generator=torch.Generator().manual_seed(step)) * act
        exp = Experience(seqs, attn, act, old_logprobs=old, ref_logprobs=ref)
        exp.advantages, exp.returns, exp.values = adv, adv + values, values
        stats = policy.train(exp, step) | critic.train(exp, step)
        history.append((old, values, stats))
    return history, policy.weights(), critic.model.state_dict(), ref


def test_micro_batches_share_the_action_tokens(tokenizer):
    seqs, attn, act = experience(tokenizer)
    exp = Experience(seqs, attn, act)
    parts = micro_batches(exp, 4)
    assert [len(p) for p, _ in parts] == [4, 2]
    assert abs(sum(share for _, share in parts) - 1.0) < 1e-12
    assert micro_batches(exp, None) == [(exp, 1.0)] and micro_batches(exp, 6) == [(exp, 1.0)]


def test_micro_batch_2_equals_the_full_batch_over_3_steps(tokenizer, tmp_path):
    path = save_tiny_llama(tokenizer, tmp_path / "pol", seed=4)
    full, full_w, full_c, full_ref = run(path, tokenizer, None)
    micro, micro_w, micro_c, micro_ref = run(path, tokenizer, 2)
    torch.testing.assert_close(micro_ref, full_ref, atol=1e-5, rtol=0)
    for (old_a, val_a, stats_a), (old_b, val_b, stats_b) in zip(full, micro, strict=True):
        torch.testing.assert_close(old_b, old_a, atol=1e-4, rtol=0)
        torch.testing.assert_close(val_b, val_a, atol=1e-4, rtol=0)
        assert stats_a.keys() == stats_b.keys()
        for key, value in stats_a.items():
            assert abs(stats_b[key] - value) <= 1e-4 * max(1.0, abs(value)), key
    assert max(float((micro_w[k] - full_w[k]).abs().max()) for k in full_w) <= 1e-4
    assert max(float((micro_c[k] - full_c[k]).abs().max()) for k in full_c) <= 1e-4
    start = PolicyTrainer(path, build_config({}, []).ppo, seed=0).weights()
    assert any(not torch.equal(full_w[k], start[k]) for k in start)  # the runs did train
