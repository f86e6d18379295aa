"""Weight publish streamed per bucket (issue 28 item 12, issue 29 item 3): the buckets cover every key
once and equal the full state, a subscriber loaded bucket by bucket equals one loaded from the whole
dict, the publisher holds at most one bucket beyond its own weights (counted from the tensors it
hands the transport that are still alive, not from RSS), a sharded policy's publish over 2 gloo ranks
streams buckets equal to the unsharded weights, and LoRA adapters are merged per bucket."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import pytest
import torch

from actors.ppo_actors import Policy, RolloutWorker
from actors.role_options import PolicyOptions, RolloutOptions
from rlhf.config.core import PPOConfig
from rlhf.models import fsdp
from rlhf.ppo.models import PolicyTrainer
from rlhf.rollout.hf import HFGenerateBackend
from rlhf.rollout.weight_sync import (
    WeightsTicket,
    load_buckets,
    publish,
    publish_buckets,
    pull,
    pull_buckets,
    register_transport,
)
from tests.unit.conftest import save_tiny_llama

SMALL_BUCKET = 8 << 10  # 8 KiB: the tiny llama (about 100 KB of weights) makes many buckets


def nbytes(bucket: dict) -> int:
    return sum(t.numel() * t.element_size() for t in {id(t): t for t in bucket.values()}.values())


class RecordingTransport:
    """Keeps no bucket: records each bucket's bytes, and (``watch``) each time the publisher's bucket
    iterator has made the next bucket, the bytes of the tensors put earlier that are still alive
    anywhere in the process (weak references): the publisher's peak beyond its own weights."""

    def __init__(self):
        self.sizes: list[int] = []
        self.alive_at_next: list[int] = []
        self.refs: list[tuple[weakref.ref, int]] = []

    def put(self, bucket: dict) -> int:
        self.sizes.append(nbytes(bucket))
        self.refs += [(weakref.ref(t), t.numel() * t.element_size()) for t in {id(t): t for t in bucket.values()}.values()]
        return len(self.sizes) - 1

    def get(self, ref):
        raise AssertionError("nothing is pulled from the recording transport")

    def watch(self, buckets):
        for bucket in buckets:  # the next bucket exists; the earlier ones should be gone
            gc.collect()
            self.alive_at_next.append(sum(n for r, n in self.refs if r() is not None))
            yield bucket


def assert_one_bucket_held(rec: RecordingTransport, state: dict, bucket_bytes: int) -> None:
    """Many buckets, and when each is made nothing of the earlier ones is alive: the publisher held the
    bucket being put and nothing more, at most ``bucket_bytes`` plus one tensor, well under the whole
    ``state`` that the old whole-dict publish held at once."""
    total, largest = nbytes(state), max(nbytes({k: v}) for k, v in state.items())
    assert len(rec.sizes) > 3 and sum(rec.sizes) >= total
    assert max(rec.alive_at_next) == 0
    assert max(rec.sizes) <= bucket_bytes + largest < total / 2


@pytest.fixture(scope="module")
def policy_dir(tokenizer, tmp_path_factory) -> str:
    return str(save_tiny_llama(tokenizer, tmp_path_factory.mktemp("pol") / "policy"))


def test_buckets_cover_every_key_once_and_equal_the_full_state(policy_dir):
    trainer = PolicyTrainer(policy_dir, PPOConfig(), 0)
    buckets = list(trainer.weight_buckets(SMALL_BUCKET))
    keys = [k for b in buckets for k in b]
    assert len(buckets) > 3 and len(keys) == len(set(keys))
    full = trainer.weights()
    assert set(keys) == set(full) == set(trainer.model.state_dict())
    for bucket in buckets:
        assert nbytes(bucket) < SMALL_BUCKET + max(nbytes({k: v}) for k, v in full.items())
        for key, value in bucket.items():
            assert torch.equal(value, full[key])
            assert value.data_ptr() != trainer.model.state_dict()[key].data_ptr()  # a copy: training goes on
    ticket = publish_buckets(trainer.weight_buckets(SMALL_BUCKET), 3)
    assert ticket.buckets and ticket.version == 3 and len(ticket.ref) == len(buckets)
    assert [list(b) for b in pull_buckets(ticket)] == [list(b) for b in buckets]
    assert pull(ticket).keys() == full.keys()
    whole = publish(full, 4)  # a whole-dict ticket still pulls, as one bucket
    assert not whole.buckets and [list(b) for b in pull_buckets(whole)] == [list(full)]


def test_subscriber_loaded_by_buckets_equals_one_loaded_from_the_full_dict(tokenizer, policy_dir, tmp_path):
    from rlhf.models.modeling import load_model_dir

    trainer = PolicyTrainer(policy_dir, PPOConfig(), 0)
    with torch.no_grad():  # weights no subscriber has yet
        for p in trainer.model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    other = str(save_tiny_llama(tokenizer, tmp_path / "other", seed=1))
    by_dict = HFGenerateBackend(load_model_dir(other)[0], tokenizer)
    by_bucket = HFGenerateBackend(load_model_dir(other)[0], tokenizer)
    ticket = publish_buckets(trainer.weight_buckets(SMALL_BUCKET), 5)
    by_dict.load_weights(pull(ticket), ticket.version)
    by_bucket.load_weight_buckets(pull_buckets(ticket), ticket.version)
    want, got = by_dict.model.state_dict(), by_bucket.model.state_dict()
    assert by_bucket.version == 5 and want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want)
    assert all(torch.equal(got[k], v) for k, v in trainer.weights().items())


def test_loading_buckets_is_strict(policy_dir):
    trainer = PolicyTrainer(policy_dir, PPOConfig(), 0)
    buckets = list(trainer.weight_buckets(SMALL_BUCKET))
    model = PolicyTrainer(policy_dir, PPOConfig(), 0).model
    with pytest.raises(RuntimeError, match="lack 1 of the model's keys"):
        load_buckets(model, [{k: v for k, v in b.items() if k != "lm_head.weight"} for b in buckets])
    with pytest.raises(RuntimeError, match="keys the model lacks: \\['extra'\\]"):
        load_buckets(model, [*buckets, {"extra": torch.zeros(1)}])
    key, value = next(iter(buckets[0].items()))
    with pytest.raises(RuntimeError, match="shapes differ"):
        load_buckets(model, [{key: value[:1]}])
    assert load_buckets(model, buckets) == len(buckets)


def test_policy_publish_holds_one_bucket_at_a_time(policy_dir):
    rec = RecordingTransport()
    register_transport("recording", rec)
    trainer = PolicyTrainer(policy_dir, PPOConfig(), 0)
    publish_buckets(rec.watch(trainer.weight_buckets(SMALL_BUCKET)), 1, "recording")
    assert_one_bucket_held(rec, trainer.weights(), SMALL_BUCKET)


def test_rollout_worker_streams_the_policy_publish(policy_dir):
    """The one-rank policy role publishes buckets (``resources.weight_bucket_mb``) and a rollout worker
    streams them into its HF model, in one process (the ``local`` transport)."""
    policy = Policy(PolicyOptions(role="policy", model_dir=policy_dir, ppo=PPOConfig().model_dump(), weight_bucket_mb=1))
    with torch.no_grad():
        for p in policy.trainer.model.parameters():
            p.mul_(0.5)
    worker = RolloutWorker(RolloutOptions(role="rollout", model_dir=policy_dir))
    ticket = policy.publish(2)
    assert isinstance(ticket, WeightsTicket) and ticket.buckets
    worker.load_weights(ticket)
    assert worker.version() == 2
    got = worker.backend.model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in policy.trainer.weights().items())


def test_lora_publish_streams_merged_buckets(tmp_path, monkeypatch):
    import copy

    from rlhf.models.lora import merged_model
    from tests.hf_checkpoints import build_checkpoint, project_text

    path = build_checkpoint("llama", tmp_path / "llama", project_text(120))
    trainer = PolicyTrainer(str(path), PPOConfig(), 0, lora={"r": 4, "alpha": 8, "dropout": 0.0})
    with torch.no_grad():  # trained adapters: B is zero at init
        for name, p in trainer.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn_like(p) * 0.1)
    expected = {k: v.clone() for k, v in merged_model(trainer.model).state_dict().items()}
    monkeypatch.setattr(copy, "deepcopy", lambda *a, **k: pytest.fail("the publish deep-copied the model"))
    rec = RecordingTransport()
    register_transport("recording", rec)
    publish_buckets(rec.watch(trainer.weight_buckets(4 << 10)), 1, "recording")
    buckets = list(trainer.weight_buckets(4 << 10))
    monkeypatch.undo()
    assert_one_bucket_held(rec, expected, 4 << 10)
    got = {k: v for b in buckets for k, v in b.items()}
    assert got.keys() == expected.keys() and len(got) == sum(len(b) for b in buckets)
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, atol=1e-6, rtol=1e-6)
    assert any("lora_A" in n for n, _ in trainer.model.named_parameters())  # the policy keeps its adapters


def sharded_publish_worker(rank: int, world: int, policy_dir: str, out: str) -> None:
    from actors.role_group import ShardedRank
    from actors.sharded_roles import ShardedPolicyTrainer

    opts = PolicyOptions(role="policy", model_dir=policy_dir, ppo=PPOConfig().model_dump(), weight_bucket_mb=1)
    group_rank = ShardedRank(opts, rank, world)
    group_rank.trainer = ShardedPolicyTrainer(policy_dir, PPOConfig(), 0)  # run_ranks made the process group
    rec = RecordingTransport()
    register_transport("recording", rec)
    buckets = group_rank.trainer.weight_buckets(SMALL_BUCKET)
    if rank == 0:
        publish_buckets(rec.watch(buckets), 1, "recording")
    else:
        for _ in buckets:
            pass
    ticket = group_rank.publish(7)  # the role's own publish: the local transport outside Ray
    result = {"ticket": None if ticket is None else (ticket.version, ticket.buckets, len(ticket.ref))}
    result["weights"] = pull(ticket) if ticket is not None else None
    result["sizes"], result["alive"] = rec.sizes, rec.alive_at_next
    torch.save(result, Path(out) / f"publish-{rank}.pt")


def test_sharded_publish_streams_buckets_equal_to_the_unsharded_weights(policy_dir, tmp_path):
    fsdp.run_ranks(sharded_publish_worker, 2, policy_dir, str(tmp_path))
    ranks = [torch.load(tmp_path / f"publish-{r}.pt", weights_only=False) for r in range(2)]
    want = PolicyTrainer(policy_dir, PPOConfig(), 0).weights()
    assert ranks[1]["ticket"] is None and ranks[1]["sizes"] == []  # rank 0 publishes, rank 1 only gathers
    assert ranks[0]["ticket"][:2] == (7, True)
    got = ranks[0]["weights"]
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    rec = RecordingTransport()
    rec.sizes, rec.alive_at_next = ranks[0]["sizes"], ranks[0]["alive"]
    assert_one_bucket_held(rec, want, SMALL_BUCKET)


def test_the_defection_evaluator_streams_a_published_version_into_its_model(policy_dir, monkeypatch):
    """The evaluator's subscriber side: ``_evaluate(ticket)`` loads the ticket's buckets into its own
    model in place before it evaluates (the evaluation itself is stubbed: it records the weights)."""
    import threading

    import rlhf.eval.evaluate as evaluate
    from actors.evaluator import DefectionEvaluator

    trainer = PolicyTrainer(policy_dir, PPOConfig(), 0)
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.mul_(-1.0)
    replica = object.__new__(DefectionEvaluator.func_or_class)
    replica.model, replica.tokenizer, replica.cfg, replica.samples = PolicyTrainer(policy_dir, PPOConfig(), 0).model, None, None, 1
    replica.lock, replica.version, replica.points, replica.curves_dir = threading.Lock(), 0, [], None
    seen = {}
    monkeypatch.setattr(evaluate, "evaluate_defection", lambda model, *a, **k: seen.update(model.state_dict()) or "report")
    monkeypatch.setattr(evaluate, "curve_point", lambda report, step, version: {"step": step, "version": version})
    monkeypatch.setattr(replica, "_set_gauges", lambda point: None, raising=False)
    replica._evaluate(publish_buckets(trainer.weight_buckets(SMALL_BUCKET), 4), 4, 2)
    assert replica.version == 4 and replica.points == [{"step": 2, "version": 4}]
    assert all(torch.equal(seen[k], v) for k, v in trainer.weights().items())


class FakeRunner:
    def __init__(self):
        self.reloads: list[dict] = []

    def reload_weights(self, weights_iterator, is_checkpoint_format):
        assert is_checkpoint_format
        loaded: dict = {}
        for key, value in weights_iterator:
            assert key not in loaded
            loaded[key] = value
        self.reloads.append(loaded)


class FakeLLM:
    """What the vLLM backend uses of ``vllm.LLM``; ``pickles``: an engine in worker processes, whose
    ``collective_rpc`` serialises its arguments."""

    def __init__(self, pickles: bool = False):
        self.worker = type("Worker", (), {})()
        self.worker.model_runner = FakeRunner()
        self.pickles, self.resets = pickles, 0

    def collective_rpc(self, fn, args=()):
        if self.pickles:
            import pickle

            args = pickle.loads(pickle.dumps(args))
        return [fn(self.worker, *args)]

    def reset_prefix_cache(self):
        self.resets += 1


@pytest.mark.parametrize("pickles", [False, True], ids=["in-process", "pickling-engine"])
def test_vllm_backend_feeds_every_bucket_to_one_reload(policy_dir, pickles):
    """No vLLM here: a fake engine stands in for ``vllm.LLM``. In process the buckets reach ONE
    ``reload_weights`` through an iterator (a layer split across buckets is loaded in one call); an
    engine that pickles its arguments gets the whole dict, as ``load_weights`` sends it."""
    from actors.vllm_backend import VLLMBackend

    backend = object.__new__(VLLMBackend)
    backend.llm, backend.version, backend.tensor_parallel_size = FakeLLM(pickles), 0, 1
    trainer = PolicyTrainer(policy_dir, PPOConfig(), 0)
    ticket = publish_buckets(trainer.weight_buckets(SMALL_BUCKET), 6)
    backend.load_weight_buckets(pull_buckets(ticket), ticket.version)
    runner = backend.llm.worker.model_runner
    assert backend.version == 6 and backend.llm.resets == 1 and len(runner.reloads) == 1
    want = trainer.weights()
    assert runner.reloads[0].keys() == want.keys() and all(torch.equal(runner.reloads[0][k], v) for k, v in want.items())
