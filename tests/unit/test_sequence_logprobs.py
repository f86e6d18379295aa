"""``rlhf.ppo.logprobs.sequence_logprobs``: next-token log-probs and entropies of a HF causal LM against a
token-by-token loop, and the first-action shortcut (``first``, ``first_action``) against the full
pass, gradients included."""

from __future__ import annotations

import pytest
import torch

from rlhf.ppo.logprobs import first_action, sequence_logprobs


@pytest.fixture(scope="module")
def tiny_lm():
    from transformers import AutoModelForCausalLM

    from tests.unit.conftest import tiny_llama_config

    config = tiny_llama_config()
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.mark.parametrize("padding", ["right", "left"])
def test_sequence_logprobs_matches_manual_loop(tiny_lm, padding):
    g = torch.Generator().manual_seed(1)
    lengths, width = [7, 4, 5], 7
    sequences, attention_mask = torch.zeros(3, width, dtype=torch.long), torch.zeros(3, width, dtype=torch.long)
    tokens = []
    for row, n in enumerate(lengths):
        tokens.append(torch.randint(1, 50, (n,), generator=g))
        span = slice(0, n) if padding == "right" else slice(width - n, width)
        sequences[row, span], attention_mask[row, span] = tokens[-1], 1
    with torch.no_grad():
        logp, entropy = sequence_logprobs(tiny_lm, sequences, attention_mask, with_entropy=True)
        assert logp.shape == entropy.shape == (3, width - 1)
        assert torch.equal(logp, sequence_logprobs(tiny_lm, sequences, attention_mask))
        for row, n in enumerate(lengths):
            offset = 0 if padding == "right" else width - n
            for pos in range(n - 1):
                prefix = tokens[row][: pos + 1].unsqueeze(0)
                dist = torch.log_softmax(tiny_lm(input_ids=prefix).logits[0, -1].double(), dim=-1)
                expected_logp = dist[tokens[row][pos + 1]].item()
                expected_entropy = -(dist.exp() * dist).sum().item()
                assert logp[row, offset + pos].item() == pytest.approx(expected_logp, abs=1e-5)
                assert entropy[row, offset + pos].item() == pytest.approx(expected_entropy, abs=1e-5)


class NoKeepLM(torch.nn.Module):
    """A causal LM whose forward takes no ``logits_to_keep``: ``sequence_logprobs`` slices the logits itself."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids, attention_mask, position_ids):
        return self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)


@pytest.mark.parametrize("wrap", [False, True])
def test_sequence_logprobs_from_the_first_action_matches_the_full_pass_and_its_gradient(tiny_lm, wrap):
    """Skipping the prompt columns (``first``) changes nothing on the action positions: the same log-probs
    and entropies there, zeros before, and the same gradient of a loss on the actions."""
    model = NoKeepLM(tiny_lm) if wrap else tiny_lm
    g = torch.Generator().manual_seed(2)
    sequences = torch.randint(1, 50, (3, 9), generator=g)
    attention_mask = torch.ones_like(sequences)
    attention_mask[1, 7:] = 0
    action_mask = torch.zeros(3, 8)
    action_mask[0, 4:], action_mask[1, 3:6], action_mask[2, 5:] = 1, 1, 1
    first = first_action(action_mask)
    assert first == 3

    def loss_and_grads(**kw):
        tiny_lm.zero_grad(set_to_none=True)
        logp, entropy = sequence_logprobs(model, sequences, attention_mask, with_entropy=True, temperature=0.7, **kw)
        (-(logp * action_mask).sum()).backward()
        return logp.detach(), entropy, [p.grad.clone() for p in tiny_lm.parameters() if p.grad is not None]

    full_lp, full_ent, full_grads = loss_and_grads()
    part_lp, part_ent, part_grads = loss_and_grads(first=first, entropy_grad=False)
    torch.testing.assert_close(part_lp[:, first:], full_lp[:, first:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(part_ent[:, first:], full_ent[:, first:].detach(), rtol=1e-5, atol=1e-5)
    assert not part_lp[:, :first].any() and not part_ent[:, :first].any()
    assert part_ent.grad_fn is None and full_ent.grad_fn is not None
    assert len(part_grads) == len(full_grads) > 0
    for a, b in zip(part_grads, full_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    tiny_lm.zero_grad(set_to_none=True)


def test_first_action_is_the_first_acting_column_or_zero():
    mask = torch.zeros(2, 6)
    assert first_action(mask) == 0
    mask[1, 4] = 1
    mask[0, 2:] = 1
    assert first_action(mask) == 2
