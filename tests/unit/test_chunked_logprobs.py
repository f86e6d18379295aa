"""Log-probs and entropy in chunks over the sequence (issue 28, item 10; ``rlhf.ppo.logprobs``): the same
numbers and gradients as the one-pass path within 1e-5, at a fraction of its peak memory.

Peak memory is measured with the torch profiler (``profile_memory=True``): every allocation and free
of the CPU allocator during the call is an event with its size; sorted by time, their running sum is
the memory the call holds at each moment, and its maximum the peak (model weights, allocated before,
are not counted; the gradients the backward pass allocates are)."""

from __future__ import annotations

import pytest
import torch

from rlhf.ppo.logprobs import head_split, sequence_logprobs

VOCAB = 32_000


def toy(family: str):
    """A one-layer model with a 32k vocabulary, dropout off (as PPO has it: ``disable_dropout``)."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    from rlhf.ppo.models import disable_dropout

    torch.manual_seed(0)
    if family == "gpt2":
        return disable_dropout(
            GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=1, n_head=2, n_positions=512))
        )
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False,
    )  # fmt: skip
    return disable_dropout(LlamaForCausalLM(config))


def batch(rows: int, width: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    seqs = torch.randint(0, VOCAB, (rows, width), generator=g)
    attn = torch.ones_like(seqs)
    attn[0, :5] = 0  # a left-padded row
    return seqs, attn


def peak_bytes(fn) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"), key=lambda e: e.start_ns()
    )
    held = peak = 0
    for event in events:
        held += event.nbytes()
        peak = max(peak, held)
    return peak


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("first", [0, 21])
def test_chunks_equal_the_one_pass_path_with_gradients(family, first):
    model = toy(family)
    assert head_split(model) is not None
    seqs, attn = batch(3, 60)
    out = {}
    for chunk in (0, 50, 7):  # one pass; chunks of 16 positions; chunks of 2 (a ragged last one)
        model.zero_grad()
        logp, ent = sequence_logprobs(
            model, seqs, attn, with_entropy=True, temperature=0.7, first=first, chunk_tokens=chunk
        )
        (logp.square().sum() + ent.sum()).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        out[chunk] = (logp.detach(), ent.detach(), grads)
    for chunk in (50, 7):
        torch.testing.assert_close(out[chunk][0], out[0][0], atol=1e-5, rtol=0)
        torch.testing.assert_close(out[chunk][1], out[0][1], atol=1e-5, rtol=0)
        assert out[chunk][2].keys() == out[0][2].keys()
        for name, grad in out[0][2].items():
            torch.testing.assert_close(out[chunk][2][name], grad, atol=1e-5, rtol=1e-4)  # summed in another order
    with torch.no_grad():
        again = sequence_logprobs(model, seqs, attn, temperature=0.7, first=first, chunk_tokens=8)
        torch.testing.assert_close(again, out[0][0], atol=1e-5, rtol=0)


def test_a_sharded_model_takes_the_one_pass_path():
    """FSDP2 gathers the root's parameters (embeddings, head) in the root's forward only: no split."""
    model = toy("llama")
    sharded = type("FSDPLlamaForCausalLM", (type(model),), {})
    model.__class__ = sharded
    assert head_split(model) is None


def test_lora_policy_splits_and_matches(tmp_path):
    from rlhf.models.lora import apply_lora

    model = apply_lora(toy("llama"), {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]})
    assert head_split(model) is not None
    seqs, attn = batch(2, 40)
    with torch.no_grad():
        one = sequence_logprobs(model, seqs, attn, chunk_tokens=0)
        torch.testing.assert_close(sequence_logprobs(model, seqs, attn, chunk_tokens=10), one, atol=1e-5, rtol=0)


def test_chunked_peak_memory_is_at_least_4x_below_the_one_pass_path():
    model = toy("llama")
    seqs, attn = batch(2, 256)

    def train(chunk):
        def step():
            model.zero_grad(set_to_none=True)
            logp, ent = sequence_logprobs(model, seqs, attn, with_entropy=True, chunk_tokens=chunk)
            (logp.sum() + 0.01 * ent.sum()).backward()

        return step

    def forward(chunk):
        def scores():
            with torch.no_grad():
                sequence_logprobs(model, seqs, attn, chunk_tokens=chunk)

        return scores

    logits_bytes = 2 * 256 * VOCAB * 4
    naive, chunked = peak_bytes(train(0)), peak_bytes(train(64))
    assert naive > logits_bytes  # the one-pass path holds the whole fp32 logits (and more)
    assert naive >= 4 * chunked, (naive, chunked)
    naive, chunked = peak_bytes(forward(0)), peak_bytes(forward(64))
    assert naive >= 4 * chunked, (naive, chunked)
