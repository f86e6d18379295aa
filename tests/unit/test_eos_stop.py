"""Where a completion ended is the engine's record, not a guess from its length (issue 28, item 6).

Both rollout backends stop at every EOS id of the model (the tokenizer's and the extra ones of its
``generation_config``), keep the one they stopped at out of the completion and record it in
``Rollout.stop_ids`` (None: stopped at ``max_new_tokens``); the trainer appends exactly that id.
The vLLM backend's conversion runs here on fake engine outputs (no vLLM in this venv); the real
engine is checked in tests/vllm/test_vllm_stop_reasons.py.
"""

from __future__ import annotations

import sys
from types import ModuleType, SimpleNamespace

import pytest
import torch

from actors.vllm_backend import VLLMBackend, completion_of
from rlhf.ppo.models import assemble
from rlhf.rollout.hf import HFGenerateBackend, SamplingParams, cut_at_eos, eos_token_ids, finished
from tests.unit.conftest import save_tiny_llama

A, B, EXTRA = 40, 41, 42  # two ordinary tokens and one the checkpoint's generation_config calls an EOS


def out(tokens, reason, stop_reason=None):
    """What vLLM's ``CompletionOutput`` gives the conversion."""
    return SimpleNamespace(token_ids=tokens, finish_reason=reason, stop_reason=stop_reason)


# ---- the vLLM output conversion --------------------------------------------------------------------


def test_an_extra_eos_id_vllm_stopped_at_is_dropped_from_the_completion_and_recorded():
    eos = [2, EXTRA]
    assert completion_of(out([A, B, EXTRA], "stop", EXTRA), eos) == ([A, B], EXTRA)
    assert completion_of(out([A, 2], "stop", None), eos) == ([A], 2)  # the request's own EOS: no stop_reason
    assert completion_of(out([EXTRA], "stop", EXTRA), eos) == ([], EXTRA)


def test_a_length_capped_completion_records_no_eos_whatever_its_length():
    eos = [2, EXTRA]
    assert completion_of(out([A, B, A], "length"), eos) == ([A, B, A], None)  # max_tokens
    assert completion_of(out([A], "length"), eos) == ([A], None)  # shorter: the context (max_model_len) ran out
    # an EOS as the last token allowed was sampled: it ended there
    assert completion_of(out([A, EXTRA], "length"), eos) == ([A], EXTRA)


@pytest.mark.parametrize(
    "bad",
    [out([A, B], "stop", "</s>"), out([A, B], "stop", 7), out([A, B], "stop", None), out([A], "abort")],
)
def test_a_stop_on_anything_but_an_eos_id_is_an_error_not_a_sample(bad):
    with pytest.raises(RuntimeError, match="vLLM"):
        completion_of(bad, [2, EXTRA])


class FakeLLM:
    """The part of ``vllm.LLM`` the backend uses; answers each request with the next scripted output."""

    script: list = []

    def __init__(self, **engine):
        self.engine, self.params = engine, []

    def get_tokenizer(self):
        return self.tokenizer

    def generate(self, prompts, params, use_tqdm=False):
        self.params = params
        return [SimpleNamespace(outputs=[o]) for o in self.script[: len(prompts)]]


@pytest.fixture
def fake_vllm(monkeypatch, tokenizer):
    """A stand-in ``vllm`` module: ``LLM`` is ``FakeLLM``, the sampling settings are kept as given."""
    for name, value in {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_ALLOW_INSECURE_SERIALIZATION": "1"}.items():
        monkeypatch.setenv(name, value)
    for name in ("VLLM_HOST_IP", "VLLM_LOOPBACK_IP"):
        monkeypatch.setenv(name, "127.0.0.1")
    monkeypatch.setenv("VLLM_NO_USAGE_STATS", "1")
    vllm, inputs = ModuleType("vllm"), ModuleType("vllm.inputs")
    vllm.LLM, vllm.SamplingParams, vllm.inputs = FakeLLM, SimpleNamespace, inputs
    inputs.TokensPrompt = SimpleNamespace
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.inputs", inputs)
    monkeypatch.setattr(FakeLLM, "tokenizer", tokenizer, raising=False)
    return FakeLLM


def test_vllm_backend_stops_at_every_eos_and_records_where_each_sample_ended(fake_vllm, tokenizer, tmp_path):
    from transformers import GenerationConfig

    eos = tokenizer.eos_token_id
    GenerationConfig(eos_token_id=[eos, EXTRA]).save_pretrained(tmp_path)  # a checkpoint with two EOS ids
    fake_vllm.script = [
        out([A, EXTRA], "stop", EXTRA),
        out([A, B, eos], "stop", None),
        out([A, B, A, B], "length"),
        out([A], "length"),  # cut by the context, shorter than max_new_tokens
    ]
    backend = VLLMBackend(str(tmp_path))
    ro = backend.generate(["Hi", "Yo", "Bread?", "Tea?"], SamplingParams(temperature=0.0, max_new_tokens=4))
    assert all(set(p.stop_token_ids) == {eos, EXTRA} for p in backend.llm.params)
    assert ro.completion_ids == [[A], [A, B], [A, B, A, B], [A]]
    assert ro.stop_ids == [EXTRA, eos, None, None]
    assert ro.completions[0] == tokenizer.decode([A], skip_special_tokens=True)  # the stop token is not text
    assert finished(ro.completion_ids, ro.stop_ids, 4) == [True, True, False, False]
    seqs, _, act = assemble(ro.prompt_ids, ro.completion_ids, eos, tokenizer.pad_token_id, 4, ro.stop_ids)
    tails = [seqs[i, len(p) : len(p) + int(act[i].sum())].tolist() for i, p in enumerate(ro.prompt_ids)]
    assert tails == [[A, EXTRA], [A, B, eos], [A, B, A, B], [A]]  # each the tokens the engine sampled


# ---- the HF backend ---------------------------------------------------------------------------------


class _ScriptedModel(torch.nn.Module):
    """``generate`` returns fixed new tokens after the prompt; its checkpoint lists an extra EOS id."""

    def __init__(self, new_tokens, eos_ids):
        super().__init__()
        self.new_tokens, self.generation_config = new_tokens, SimpleNamespace(eos_token_id=eos_ids)

    def generate(self, input_ids, **kwargs):
        self.asked = kwargs
        return torch.cat([input_ids, torch.tensor(self.new_tokens)], dim=1)


def test_hf_backend_cuts_at_an_extra_eos_id_and_records_it(tokenizer):
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    model = _ScriptedModel([[A, EXTRA, pad], [A, B, A], [B, eos, pad]], [eos, EXTRA])
    ro = HFGenerateBackend(model, tokenizer).generate(["Hi", "Yo", "Tea?"], SamplingParams(max_new_tokens=3))
    assert model.asked["eos_token_id"] == [eos, EXTRA]
    assert ro.completion_ids == [[A], [A, B, A], [B]] and ro.stop_ids == [EXTRA, None, eos]


def test_eos_ids_are_the_tokenizers_then_the_checkpoints_extra_ones():
    tok = SimpleNamespace(eos_token_id=2)
    assert eos_token_ids(tok) == [2]
    assert eos_token_ids(tok, SimpleNamespace(eos_token_id=2)) == [2]
    assert eos_token_ids(tok, SimpleNamespace(eos_token_id=[7, 2, 9])) == [2, 7, 9]
    assert cut_at_eos([5, 9, 2, 1], [2, 9]) == ([5], 9) and cut_at_eos([5, 6], [2]) == ([5, 6], None)


def test_hf_generate_stops_at_an_extra_eos_id_of_a_real_model(tokenizer, tmp_path):
    from rlhf.models.modeling import load_model_dir

    path = save_tiny_llama(tokenizer, tmp_path / "pol", seed=5)
    prompts = ["\n\nHuman: Hi there?\n\nAssistant:", "\n\nHuman: Bread?\n\nAssistant:"]
    greedy = SamplingParams(temperature=0.0, max_new_tokens=6)
    model, tok = load_model_dir(path)
    before = HFGenerateBackend(model, tok).generate(prompts, greedy)
    # a random model does not sample its EOS in 6 tokens: each is length-capped, and recorded so
    assert before.stop_ids == [None, None] and all(len(c) == 6 for c in before.completion_ids)
    first = before.completion_ids[0]
    extra = first[2]  # a token it samples: now an EOS of the checkpoint
    model, tok = load_model_dir(path)
    model.generation_config.eos_token_id = [tok.eos_token_id, extra]
    after = HFGenerateBackend(model, tok).generate(prompts, greedy)
    for b, a, stop in zip(before.completion_ids, after.completion_ids, after.stop_ids, strict=True):
        assert extra not in a and a == b[: len(a)]  # the same greedy tokens, up to the stop
        assert stop == (extra if extra in b else None)
    assert after.stop_ids[0] == extra and after.completion_ids[0] == first[: first.index(extra)]


# ---- the trainer -------------------------------------------------------------------------------------


def test_assemble_appends_the_recorded_eos_and_never_an_unsampled_one():
    prompts, completions = [[5, 6], [5], [5]], [[7], [7, 8], [7]]
    seqs, _, act = assemble(prompts, completions, eos_id=2, pad_id=1, max_new_tokens=4, stops=[EXTRA, None, 2])
    assert seqs.tolist() == [[5, 6, 7, EXTRA], [5, 7, 8, 1], [5, 7, 2, 1]]
    assert act.sum(dim=1).tolist() == [2.0, 2.0, 2.0]  # row 1 ran out of context: no EOS invented for it
    with pytest.raises(ValueError):  # one record per completion
        assemble(prompts, completions, eos_id=2, pad_id=1, max_new_tokens=4, stops=[None])


def test_the_trainer_trains_on_the_eos_each_worker_recorded():
    from tests.unit.test_ppo_trainer import EOS, FakeWorker, make_trainer

    class RecordingWorker(FakeWorker):
        def generate(self, prompts, sampling):
            result = super().generate(prompts, sampling)  # 'ab' = [7, 8] for every prompt
            return result | {"stop_ids": [EXTRA if i % 2 else None for i in range(len(prompts))]}

    trainer, _, _ = make_trainer(workers=[RecordingWorker()])
    ro = trainer.generate(1)
    assert ro.stop_ids == [None, EXTRA, None, EXTRA]
    exp = trainer.score_and_forward(ro)
    assert exp.sequences[:, 2:].tolist() == [[7, 8, 1], [7, 8, EXTRA]] * 2  # not the tokenizer's EOS, never appended
    assert exp.action_mask.sum(dim=1).tolist() == [2.0, 3.0] * 2
    assert EOS not in exp.sequences.flatten().tolist()
