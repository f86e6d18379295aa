"""``resources.policy.num_workers=2`` and ``resources.critic.num_workers=2``: each role is a group of
2 Ray actors (FSDP2 ranks over gloo, one placement group) that the trainer calls like one actor;
its answers equal a one-process policy's and critic's within 1e-4, it publishes gathered weights,
and its checkpoint reloads to the same log-probs."""

import pytest
import ray
import torch

import actors.weight_transport  # noqa: F401 - registers the object-store transport for pull()
from actors.launcher import ray_options, role_options
from actors.role_group import RoleGroup
from rlhf.config.core import build_config
from rlhf.models.device import Placement
from rlhf.ppo.losses import Experience
from rlhf.ppo.models import CriticTrainer, PolicyTrainer, assemble
from rlhf.rollout.weight_sync import pull
from tests.hf_checkpoints import build_checkpoint

pytestmark = pytest.mark.ray

SETS = ["resources.policy.num_workers=2", "resources.critic.num_workers=2", "ppo.minibatch_size=3", "ppo.epochs=1"]


def experience(policy_dir, ppo) -> Experience:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(policy_dir)
    texts = [("Hi there", " hello you"), ("Plan a trip", " pick a date"), ("A colour", " blue"), ("Bake", " mix it")]
    prompts = [tok(p)["input_ids"] for p, _ in texts]
    answers = [tok(a)["input_ids"][:5] for _, a in texts]
    seqs, attn, act = assemble(prompts, answers, tok.eos_token_id, tok.pad_token_id or 0, 5)
    logp = PolicyTrainer(policy_dir, ppo, 0).logprobs(seqs, attn)
    adv = torch.tensor([1.0, -0.5, 0.3, 2.0])[:, None] * act
    return Experience(
        seqs, attn, act, old_logprobs=logp.clone(), ref_logprobs=logp.clone(), values=torch.zeros_like(act),
        advantages=adv, returns=0.5 * act, scores=torch.ones(len(seqs)),
    )  # fmt: skip


def test_sharded_groups_act_like_one_actor(ray_cluster, tmp_path):
    policy_dir = build_checkpoint("llama", tmp_path / "pol")
    cfg = build_config({}, SETS)
    opts = role_options(cfg, policy_dir, None, None, Placement())
    assert opts.policy.resources.num_workers == 2 and opts.critic.resources.num_workers == 2
    policy = RoleGroup(opts.policy, "TestPolicy", ray_options(opts.policy.resources))
    critic = RoleGroup(opts.critic, "TestCritic", ray_options(opts.critic.resources))
    try:
        exp = experience(policy_dir, cfg.ppo)
        local_policy, local_critic = PolicyTrainer(policy_dir, cfg.ppo, 0), CriticTrainer(policy_dir, cfg.ppo, 0)
        seqs, attn = exp.sequences, exp.attention_mask
        logp = ray.get(policy.logprobs.remote(seqs, attn))
        assert float((logp - local_policy.logprobs(seqs, attn)).abs().max()) <= 1e-4
        values = ray.get(critic.values.remote(seqs, attn))
        assert float((values - local_critic.values(seqs, attn)).abs().max()) <= 1e-4
        got = ray.get(policy.train.remote(exp, 1, cfg.ppo.kl_coef))
        want = local_policy.train(exp, 1)
        for k, v in want.items():
            assert got[k] == pytest.approx(v, abs=1e-4), k
        got, want = ray.get(critic.train.remote(exp, 1)), local_critic.train(exp, 1)
        for k, v in want.items():
            assert got[k] == pytest.approx(v, abs=1e-4), k
        ticket = ray.get(policy.publish.remote(1))
        assert ticket.buckets and all(isinstance(r, ray.ObjectRef) for r in ticket.ref)  # one put per bucket
        weights, ref = pull(ticket), local_policy.model.state_dict()
        assert weights.keys() == ref.keys()
        assert max(float((weights[k] - ref[k]).abs().max()) for k in ref) <= 1e-4
        before = ray.get(policy.logprobs.remote(seqs, attn))
        ray.get([policy.save.remote(str(tmp_path)), critic.save.remote(str(tmp_path))])
        # torch.distributed.checkpoint shards per role (each rank writes its own), and an HF dir for rlhf eval
        assert all((tmp_path / f"{r}_shards" / "manifest.json").is_file() for r in ("policy", "critic"))
        assert (tmp_path / "policy" / "config.json").is_file() and not (tmp_path / "policy_optim.pt").exists()
        ray.get(policy.train.remote(exp, 2, cfg.ppo.kl_coef))  # move away, then come back
        ray.get([policy.load.remote(str(tmp_path)), critic.load.remote(str(tmp_path))])
        assert torch.equal(ray.get(policy.logprobs.remote(seqs, attn)), before)
    finally:
        from ray.util.placement_group import remove_placement_group

        for group in (policy, critic):
            for actor in group.actors:
                ray.kill(actor, no_restart=True)
            remove_placement_group(group.placement_group)


def test_object_store_carries_one_object_per_bucket(ray_cluster):
    """The object-store transport puts each bucket as its own object; a subscriber streams them back
    in order and loads them into its model bucket by bucket."""
    from rlhf.rollout.weight_sync import load_buckets, publish_buckets, pull_buckets

    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    state = {k: torch.randn_like(v) for k, v in model.state_dict().items()}
    buckets = [{k: state[k]} for k in state]
    ticket = publish_buckets(iter(buckets), 9, "object_store")
    assert ticket.transport == "object_store" and len(ticket.ref) == len(state) == 4
    assert all(isinstance(r, ray.ObjectRef) for r in ticket.ref)
    got = list(pull_buckets(ticket))
    assert [list(b) for b in got] == [list(b) for b in buckets]
    assert load_buckets(model, pull_buckets(ticket)) == 4
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_only_policy_and_critic_shard():
    from rlhf.errors import ConfigError

    with pytest.raises(ConfigError, match="resources.reference.num_workers must be 1"):
        build_config({}, ["resources.reference.num_workers=2"])
    with pytest.raises(ConfigError, match="cannot be colocated"):
        build_config({}, ["resources.policy.num_workers=2", "resources.colocate=[[policy, critic]]"])
    assert build_config({}, []).resources.policy.num_workers == 1


@pytest.mark.slow  # two PPO runs plus the session's tiny policy and reward model: 31 min on 2 loaded cores
def test_ppo_with_sharded_policy_and_critic_matches_one_rank(ray_cluster, tiny_policy, tiny_reward_model, tmp_path):
    """3 PPO steps with the defection evaluator in the loop; the 2-rank run's first step (same initial
    weights, so the same samples) equals the 1-rank run's within 1e-4."""
    from jobs.ppo import run_ppo
    from rlhf.metrics import read_metrics
    from tests.ray.conftest import PPO_TEST_OVERRIDES

    sets = [*PPO_TEST_OVERRIDES, "ppo.steps=3", "eval.every_steps=3"]
    rm = tiny_reward_model["model_dir"]
    run_ppo(build_config({}, sets), tiny_policy, tmp_path / "one", reward_dir=rm)
    summary = run_ppo(build_config({}, [*sets, *SETS[:2]]), tiny_policy, tmp_path / "two", reward_dir=rm)
    assert summary["steps"] == 3

    def steps(run):
        return [r for r in read_metrics(tmp_path / run / "metrics.jsonl") if "reward/mean" in r]

    one, two = steps("one"), steps("two")
    assert [r["step"] for r in two] == [1, 2, 3]
    for key in ("reward/mean", "losses/policy", "losses/value", "policy/grad_norm", "kl/mean"):
        assert two[0][key] == pytest.approx(one[0][key], abs=1e-4), key
    defection = [r["step"] for r in read_metrics(tmp_path / "two" / "metrics.jsonl") if "defection/triggered" in r]
    assert defection == [0, 3]
