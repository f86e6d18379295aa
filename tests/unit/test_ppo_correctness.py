"""The RL correctness items of the PPO-trainer review, each on toy tensors or a tiny random model.

Each test fails on the code before the fix (0b9952c): untempered log-probs, a k1 KL loss term,
re-whitened group advantages, dropped pad tokens, clipfrac counted outside the active branch, an
unclamped log-ratio, dropout and checkpoint generation settings in the behaviour policy, a silent
evaluator wait, and an adaptive KL controller that hardly moves.
"""

from __future__ import annotations

import math

import pytest
import torch

from rlhf.config.core import PPOConfig, build_config
from rlhf.errors import ConfigError
from rlhf.ppo.losses import AdaptiveKLController, Experience, policy_loss
from rlhf.ppo.models import PolicyTrainer, ReferenceModel, assemble, compute_advantages
from rlhf.rollout.hf import HFGenerateBackend, SamplingParams
from tests.unit.conftest import save_tiny_llama, tiny_llama_config


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory, tokenizer):
    return save_tiny_llama(tokenizer, tmp_path_factory.mktemp("ppo-fix") / "pol", seed=3)


@pytest.fixture(scope="module")
def batch(tokenizer):
    prompts = [tokenizer(f"\n\nHuman: {q}\n\nAssistant:")["input_ids"] for q in ("Hi there?", "Bread?")]
    answers = [tokenizer(a)["input_ids"][:5] for a in (" Hello, how are you", " Mix flour and")]
    return assemble(prompts, answers, tokenizer.eos_token_id, tokenizer.pad_token_id, 5)


# ---- 1. log-probs at the rollout temperature -----------------------------------------------


def test_logprobs_are_those_of_the_tempered_sampling_distribution(policy_dir, batch):
    seqs, attn, act = batch
    temperature = 0.7
    pol = PolicyTrainer(policy_dir, PPOConfig(temperature=temperature), seed=0)
    ref = ReferenceModel(policy_dir, temperature)
    with torch.no_grad():
        logits = pol.model(input_ids=seqs, attention_mask=attn).logits[:, :-1]
    tempered = torch.log_softmax(logits / temperature, -1).gather(-1, seqs[:, 1:, None]).squeeze(-1)
    untempered = torch.log_softmax(logits, -1).gather(-1, seqs[:, 1:, None]).squeeze(-1)
    sel = act.bool()
    assert (tempered - untempered)[sel].abs().max() > 0.05  # the two really differ on this model
    torch.testing.assert_close(pol.logprobs(seqs, attn)[sel], tempered[sel], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ref.logprobs(seqs, attn)[sel], tempered[sel], atol=1e-5, rtol=1e-5)


def test_training_first_ratio_is_one_at_a_temperature(policy_dir, batch):
    """The behaviour log-probs of the rollout and the training forward agree, so the first minibatch's
    ratio is exactly 1 (no clipping, approx KL 0) at T = 0.5 too."""
    seqs, attn, act = batch
    cfg = PPOConfig(temperature=0.5, epochs=1, minibatch_size=2, policy_lr=1e-3)
    pol = PolicyTrainer(policy_dir, cfg, seed=0)
    old = pol.logprobs(seqs, attn)
    exp = Experience(seqs, attn, act, old, old.clone(), torch.zeros_like(act), advantages=act.clone())
    stats = pol.train(exp, step=1)
    assert stats["policy/approx_kl"] == pytest.approx(0.0, abs=1e-10)
    assert stats["policy/clipfrac"] == 0.0


# ---- 2. k1 as a loss term is refused ---------------------------------------------------------


def test_k1_kl_loss_term_is_refused_in_one_line():
    with pytest.raises(ConfigError) as err:
        build_config({}, ["ppo.kl_in=loss", "ppo.kl_estimator=k1"])
    assert "k2 or k3" in str(err.value) and "\n" not in str(err.value)
    assert build_config({}, ["ppo.kl_in=loss", "ppo.kl_estimator=k3"]).ppo.kl_estimator == "k3"


def test_k1_loss_term_has_zero_expected_gradient_and_k3_does_not():
    """Why k1 is refused: E_pi[grad (logp - ref)] = E_pi[grad logp] = 0, exactly, for any reference."""
    z = torch.tensor([0.3, -1.0, 0.5, 2.0], requires_grad=True)
    ref = torch.log_softmax(torch.tensor([1.0, 0.0, -1.0, 0.5]), -1)
    logp = torch.log_softmax(z, -1)
    p = logp.exp().detach()
    (grad_k1,) = torch.autograd.grad((p * (logp - ref)).sum(), z, retain_graph=True)
    r = ref - logp  # k3 = exp(r) - 1 - r with r = log ref/pi
    (grad_k3,) = torch.autograd.grad((p * (r.exp() - 1 - r)).sum(), z)
    assert grad_k1.abs().max() < 1e-7 and grad_k3.abs().max() > 1e-2


# ---- 3. critic-free advantages are not whitened a second time -------------------------------


@pytest.mark.parametrize("estimator", ["rloo", "group_norm"])
def test_all_equal_group_has_zero_advantage_whatever_the_lengths(estimator):
    cfg = PPOConfig(advantage_estimator=estimator, samples_per_prompt=2, whiten_advantages=True)
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0]])
    zeros = torch.zeros_like(mask)
    exp = Experience(torch.zeros(4, 5, dtype=torch.long), torch.ones(4, 5), mask, zeros, zeros, zeros)
    # group 1 (rows 0, 1) scores alike; group 2 does not, and its two answers differ in length, so the
    # batch's token-weighted mean advantage is not zero: whitening again would shift group 1 off zero
    exp.scores = torch.tensor([0.7, 0.7, 1.0, -1.0])
    compute_advantages(exp, cfg, kl_coef=0.0)
    assert exp.advantages[:2].abs().max() == 0.0
    assert (exp.advantages[2][mask[2].bool()] > 0).all() and (exp.advantages[3][mask[3].bool()] < 0).all()


def test_gae_advantages_are_still_whitened():
    cfg = PPOConfig(whiten_advantages=True)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    zeros = torch.zeros_like(mask)
    exp = Experience(torch.zeros(2, 4, dtype=torch.long), torch.ones(2, 4), mask, zeros, zeros, zeros)
    exp.scores = torch.tensor([1.0, -1.0])
    compute_advantages(exp, cfg, kl_coef=0.0)
    sel = exp.advantages[mask.bool()]
    assert sel.mean().abs() < 1e-6 and sel.std() == pytest.approx(1.0, abs=1e-4)


# ---- 4. sampled pad tokens stay in the sample -------------------------------------------------


class _ScriptedModel(torch.nn.Module):
    """``generate`` returns fixed new tokens after the prompt (what a sampler could have drawn)."""

    def __init__(self, new_tokens: list[list[int]]):
        super().__init__()
        self.new_tokens = new_tokens
        self.generation_config = None

    def generate(self, input_ids, **kwargs):
        return torch.cat([input_ids, torch.tensor(self.new_tokens)], dim=1)


def test_rollout_keeps_pad_tokens_the_model_sampled(tokenizer):
    pad, eos, a, b = tokenizer.pad_token_id, tokenizer.eos_token_id, 40, 41
    # row 0 sampled a, pad, pad and hit max_new_tokens (no EOS); row 1 sampled b, EOS, then generate's padding
    model = _ScriptedModel([[a, pad, pad], [b, eos, pad]])
    out = HFGenerateBackend(model, tokenizer).generate(["Hi", "Yo"], SamplingParams(max_new_tokens=3))
    assert out.completion_ids == [[a, pad, pad], [b]]
    seqs, _, act = assemble(out.prompt_ids, out.completion_ids, eos, pad, max_new_tokens=3)
    n0 = len(out.prompt_ids[0])
    assert seqs[0, n0 : n0 + 3].tolist() == [a, pad, pad] and eos not in seqs[0].tolist()  # no EOS invented
    assert act[0].sum() == 3 and act[1].sum() == 2  # row 1: b and the EOS it sampled


# ---- 5 and 6. clipfrac counts the active clip; the log-ratio is clamped ---------------------


def test_clipfrac_counts_only_tokens_where_the_clip_is_active():
    # ratio 0.5 with A > 0 and ratio 1.5 with A < 0 are outside the band, but the unclipped term is the
    # larger (pessimistic) one there: the clip is not what the loss uses
    logp = torch.log(torch.tensor([1.5, 0.5, 1.5, 0.5]))
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    _, stats = policy_loss(logp, torch.zeros(4), adv, torch.ones(4), clip_eps=0.2)
    assert stats["clipfrac"] == pytest.approx(0.5)


def test_huge_log_ratio_gives_a_finite_loss_and_gradient():
    logp = torch.tensor([100.0, 0.0, -100.0], requires_grad=True)
    adv = torch.tensor([-1.0, 1.0, 1.0])
    loss, stats = policy_loss(logp, torch.zeros(3), adv, torch.ones(3), clip_eps=0.2)
    loss.backward()
    assert math.isfinite(loss.item()) and torch.isfinite(logp.grad).all()
    assert math.isfinite(stats["approx_kl"])


# ---- 7. dropout off; sampling set by SamplingParams alone -----------------------------------


def _gpt2_with_dropout(tmp_path, tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    from rlhf.models.checkpoint import save_hf_dir

    cfg = GPT2Config(
        vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=128,
        resid_pdrop=0.5, embd_pdrop=0.5, attn_pdrop=0.5,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    return save_hf_dir(GPT2LMHeadModel(cfg), tokenizer, tmp_path / "gpt2-dropout")


def test_policy_from_a_checkpoint_with_dropout_trains_without_it(tmp_path, tokenizer, batch):
    seqs, attn, act = batch
    pol = PolicyTrainer(_gpt2_with_dropout(tmp_path, tokenizer), PPOConfig(), seed=0)
    pol.model.train()  # what the update does
    first = pol.model(input_ids=seqs, attention_mask=attn).logits
    second = pol.model(input_ids=seqs, attention_mask=attn).logits
    assert torch.equal(first, second)
    assert all(m.p == 0.0 for m in pol.model.modules() if isinstance(m, torch.nn.Dropout))


def test_disable_dropout_zeroes_attention_dropout_read_at_call_time():
    from transformers import LlamaForCausalLM

    from rlhf.ppo.models import disable_dropout

    model = LlamaForCausalLM(tiny_llama_config(attention_dropout=0.3))
    disable_dropout(model)
    assert model.config.attention_dropout == 0.0
    assert all(layer.self_attn.attention_dropout == 0.0 for layer in model.model.layers)


def test_checkpoint_generation_config_does_not_change_the_sampler(policy_dir, tokenizer):
    from transformers import GenerationConfig

    from rlhf.models.modeling import load_model_dir

    sampling = SamplingParams(temperature=1.0, max_new_tokens=8, seed=11)
    plain, _ = load_model_dir(policy_dir)
    skewed, _ = load_model_dir(policy_dir)
    skewed.generation_config = GenerationConfig(top_k=1, repetition_penalty=5.0, do_sample=False)
    prompts = ["\n\nHuman: Hi there?\n\nAssistant:", "\n\nHuman: Bread?\n\nAssistant:"]
    a = HFGenerateBackend(plain, tokenizer).generate(prompts, sampling)
    b = HFGenerateBackend(skewed, tokenizer).generate(prompts, sampling)
    assert a.completion_ids == b.completion_ids


def test_top_p_below_one_is_refused_for_ppo():
    with pytest.raises(ConfigError) as err:
        build_config({}, ["ppo.top_p=0.9"])
    assert "top_p" in str(err.value)


# ---- 9. the adaptive KL controller's horizon scales with the run ----------------------------


@pytest.mark.parametrize("steps,prompts", [(50, 16), (500, 64)])
def test_adaptive_kl_coefficient_moves_markedly_over_a_run_at_the_defaults(steps, prompts):
    p = build_config({}, [f"ppo.steps={steps}", f"ppo.prompts_per_step={prompts}", "ppo.kl_controller=adaptive"]).ppo
    ctl = AdaptiveKLController(p.kl_coef, p.kl_target, p.kl_horizon_samples)
    for _ in range(p.steps):
        ctl.update(2 * p.kl_target, p.prompts_per_step * p.samples_per_prompt)  # KL steadily twice the target
    assert ctl.value / p.kl_coef > 5.0  # was x1.016 at 50 x 16 with the fixed 10,000-sample horizon
    assert build_config({}, ["ppo.kl_horizon=10000"]).ppo.kl_horizon_samples == 10000.0


# ---- an annealed rollout temperature ----------------------------------------------------------


def test_rollout_temperature_anneals_linearly_from_first_to_last_step():
    from rlhf.ppo.losses import rollout_temperature

    assert [rollout_temperature(1.0, None, s, 5) for s in (1, 3, 5)] == [1.0, 1.0, 1.0]
    assert [rollout_temperature(2.0, 1.0, s, 5) for s in (1, 2, 3, 4, 5)] == [2.0, 1.75, 1.5, 1.25, 1.0]
    assert rollout_temperature(2.0, 1.0, 1, 1) == 2.0  # one step: the starting temperature
    assert rollout_temperature(2.0, 1.0, 9, 5) == 1.0  # past the end: the final one
    with pytest.raises(ConfigError):
        build_config({}, ["ppo.temperature_final=0"])


def test_training_uses_the_batch_temperature_so_the_first_ratio_is_one(policy_dir, batch):
    """With an annealed rollout the batch carries its temperature; the reference, the old log-probs
    and the training forward all use it (not the configured starting one)."""
    seqs, attn, act = batch
    cfg = PPOConfig(temperature=2.0, temperature_final=0.5, epochs=1, minibatch_size=2, policy_lr=1e-3)
    pol, ref = PolicyTrainer(policy_dir, cfg, seed=0), ReferenceModel(policy_dir, cfg.temperature)
    old = pol.logprobs(seqs, attn, 0.5)
    torch.testing.assert_close(ref.logprobs(seqs, attn, 0.5), old)
    assert (old - pol.logprobs(seqs, attn))[act.bool()].abs().max() > 0.05  # T = 2 would differ
    exp = Experience(seqs, attn, act, old, old.clone(), torch.zeros_like(act), advantages=act.clone(), temperature=0.5)
    stats = pol.train(exp, step=1)
    assert stats["policy/approx_kl"] == pytest.approx(0.0, abs=1e-10) and stats["policy/clipfrac"] == 0.0
