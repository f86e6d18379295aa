"""A PPO update with the policy and the critic each sharded over 2 gloo ranks (FSDP2,
``actors.sharded_roles``) equals the 1-rank update within 1e-4: log-probs, values, policy and
value losses, grad norms and the trained weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from actors.sharded_roles import ShardedCriticTrainer, ShardedPolicyTrainer, rank_micro_batches, rank_rows
from rlhf.config.core import PPOConfig
from rlhf.models import fsdp
from rlhf.ppo.losses import Experience
from rlhf.ppo.models import CriticTrainer, PolicyTrainer, assemble
from tests.unit.conftest import save_tiny_llama

# 5 rows, minibatches of 3: the ranks get 2 + 1 rows, then 1 + 1 (uneven splits on purpose)
TRAIN = {"minibatch_size": 3, "epochs": 2, "policy_lr": 1e-2, "critic_lr": 1e-2, "entropy_coef": 0.01}
QA = [
    ("How do I bake bread?", " Mix flour and water."),
    ("What is a good book?", " Try a classic novel."),
    ("Hi.", " Hello!"),
    ("Can you help me plan a trip to the coast?", " Sure, pick a date first and then"),
    ("Name a colour.", " Blue."),
]


def experience(tokenizer, policy_dir) -> Experience:
    prompt_ids = [tokenizer(f"\n\nHuman: {q}\n\nAssistant:")["input_ids"] for q, _ in QA]
    completion_ids = [tokenizer(a)["input_ids"][:6] for _, a in QA]
    seqs, attn, act = assemble(prompt_ids, completion_ids, tokenizer.eos_token_id, tokenizer.pad_token_id, 6)
    logp = PolicyTrainer(policy_dir, PPOConfig(**TRAIN), 0).logprobs(seqs, attn)
    adv = torch.tensor([1.0, -0.5, 0.3, 2.0, -1.0])[:, None] * act
    return Experience(
        seqs, attn, act, old_logprobs=logp.clone(), ref_logprobs=logp.clone(), values=torch.zeros_like(act),
        advantages=adv, returns=0.5 * act, scores=torch.ones(len(seqs)),
    )  # fmt: skip


def step(policy, critic, exp: Experience) -> dict:
    logp = policy.logprobs(exp.sequences, exp.attention_mask)
    values = critic.values(exp.sequences, exp.attention_mask)
    return {"logp": logp, "values": values, "policy": policy.train(exp, 1), "critic": critic.train(exp, 1)}


def group_worker(rank: int, world: int, policy_dir: str, exp_path: str, out: str) -> None:
    exp = torch.load(exp_path, weights_only=False)
    cfg = PPOConfig(**TRAIN)
    policy, critic = ShardedPolicyTrainer(policy_dir, cfg, 0), ShardedCriticTrainer(policy_dir, cfg, 0)
    result = step(policy, critic, exp)
    result["policy_weights"] = policy.weights()
    result["critic_weights"] = fsdp.gathered_state(critic.model)
    torch.save(result, Path(out) / f"rank-{rank}.pt")


def test_rank_split_covers_every_row_once():
    assert [rank_rows(5, r, 2).tolist() for r in range(2)] == [[0, 1, 2], [3, 4]]
    assert [rank_rows(1, r, 2).tolist() for r in range(2)] == [[0], []]


def test_rank_shares_sum_to_one(tokenizer, tmp_path):
    exp = experience(tokenizer, save_tiny_llama(tokenizer, tmp_path / "pol"))
    shares = [s for r in range(2) for _, s in rank_micro_batches(exp, 2, r, 2)]
    assert abs(sum(shares) - 1.0) < 1e-6 and len(shares) == 3  # rank 0: rows 0-2 in 2 micro-batches


def test_two_rank_ppo_update_equals_one_rank(tokenizer, tmp_path):
    policy_dir = str(save_tiny_llama(tokenizer, tmp_path / "pol"))
    exp = experience(tokenizer, policy_dir)
    torch.save(exp, tmp_path / "exp.pt")
    fsdp.run_ranks(group_worker, 2, policy_dir, str(tmp_path / "exp.pt"), str(tmp_path))
    ranks = [torch.load(tmp_path / f"rank-{r}.pt", weights_only=False) for r in range(2)]
    cfg = PPOConfig(**TRAIN)
    policy, critic = PolicyTrainer(policy_dir, cfg, 0), CriticTrainer(policy_dir, cfg, 0)
    want = step(policy, critic, exp)
    for key in ("logp", "values"):  # each rank computed its rows; the group concatenates them
        got = torch.cat([r[key] for r in ranks])
        assert got.shape == want[key].shape and float((got - want[key]).abs().max()) <= 1e-4
    for role in ("policy", "critic"):
        assert ranks[0][role] == ranks[1][role]  # every rank reports the group's statistics
        assert ranks[0][role].keys() == want[role].keys()
        for k, v in want[role].items():
            assert ranks[0][role][k] == pytest.approx(v, abs=1e-4), (role, k)
    assert want["policy"]["policy/grad_norm"] > 0
    for got, model in ((ranks[0]["policy_weights"], policy.model), (ranks[0]["critic_weights"], critic.model)):
        ref = model.state_dict()
        assert got.keys() == ref.keys()
        assert max(float((got[k] - ref[k]).abs().max()) for k in ref) <= 1e-4
    assert ranks[1]["policy_weights"] is None  # gathered on rank 0 only
