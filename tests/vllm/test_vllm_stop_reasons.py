"""Where a vLLM completion ended is the engine's finish reason, and both backends record it alike.

The checkpoint's ``generation_config`` lists an extra EOS id (a token the model samples), and
``max_new_tokens`` is chosen so that some greedy completions stop at an EOS and others hit the cap.
The recorded ``Rollout.stop_ids`` must follow vLLM's ``finish_reason``/``stop_reason``, the extra
id must never stay in a completion, and HF ``generate`` must give the same tokens and records.
"""

import gc
import os
import shutil

import pytest
from transformers import GenerationConfig

from actors.vllm_backend import VLLMBackend
from jobs.sft import quick_sft
from rlhf.config.core import build_config
from rlhf.data.backdoor import eval_prompts
from rlhf.models.modeling import load_model_dir
from rlhf.ppo.models import assemble
from rlhf.rollout.hf import HFGenerateBackend, SamplingParams

OVERRIDES = ["data.n_train=400", "data.n_eval=40", "model.vocab_size=600", "sft.warmup_steps=5"]
WIDE = 32


def greedy(n: int) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_new_tokens=n)


def hf_backend(path) -> HFGenerateBackend:
    model, tok = load_model_dir(path)
    return HFGenerateBackend(model, tok)


def pick_stop(completions, stops, pad: int) -> tuple[int, int]:
    """(an extra EOS id, a cap) such that, greedy being the same prefix whatever the stop ids, some
    completion stops at the extra id with it as the last token allowed and some other hits the cap."""
    tokens = dict.fromkeys(t for c in completions for t in c if t != pad)
    for extra in tokens:
        ends = [
            (c.index(extra), True) if extra in c else (len(c), s is not None)
            for c, s in zip(completions, stops, strict=True)
        ]
        at_extra = [c.index(extra) for c in completions if extra in c]
        cap = min(at_extra) + 1
        if any(n >= cap and not (stopped and n + 1 <= cap) for n, stopped in ends):
            return extra, cap
    raise AssertionError("no token of the greedy completions splits them into stopped and capped")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(the checkpoint with an extra EOS id, the prompts, the EOS ids, a cap some samples reach, vLLM
    with the raw outputs of its last ``generate``)."""
    cfg = build_config({}, OVERRIDES)
    root = tmp_path_factory.mktemp("vllm-stop")
    base = quick_sft(cfg, root / "base", steps=40)
    p = eval_prompts(cfg, 8)
    prompts = p["triggered"][:8] + p["untriggered"][:8]
    first = hf_backend(base)
    plain, eos = first.generate(prompts, greedy(WIDE)), first.tokenizer.eos_token_id
    # a token the model samples becomes an EOS of the checkpoint
    extra, cap = pick_stop(plain.completion_ids, plain.stop_ids, first.tokenizer.pad_token_id)
    path = root / "extra-eos"
    shutil.copytree(base, path)
    config = (
        GenerationConfig.from_pretrained(path) if (path / "generation_config.json").is_file() else GenerationConfig()
    )
    config.eos_token_id = [eos, extra]
    config.save_pretrained(path)
    gc.collect()  # an engine of an earlier test module
    # an explicit KV cache: vLLM-CPU sizes it by default as its memory share minus this process's RSS,
    # which an engine built earlier in the same process (the lane runs every module in one) uses up
    before, os.environ["VLLM_CPU_KVCACHE_SPACE"] = os.environ.get("VLLM_CPU_KVCACHE_SPACE"), "1"
    try:
        vllm = VLLMBackend(str(path))
    finally:
        if before is None:
            del os.environ["VLLM_CPU_KVCACHE_SPACE"]
        else:
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = before
    raw: list = []
    engine_generate = vllm.llm.generate

    def recording(*args, **kwargs):
        outs = engine_generate(*args, **kwargs)
        raw[:] = [o.outputs[0] for o in outs]
        return outs

    vllm.llm.generate = recording
    return path, prompts, eos, extra, cap, vllm, raw


def test_recorded_stops_follow_the_engines_finish_reason(setup):
    path, prompts, eos, extra, cap, vllm, raw = setup
    assert vllm.eos_ids == [eos, extra]
    ro = vllm.generate(prompts, greedy(cap))
    reasons = [o.finish_reason for o in raw]
    assert "length" in reasons and "stop" in reasons, reasons
    for o, ids, stop in zip(raw, ro.completion_ids, ro.stop_ids, strict=True):
        if o.finish_reason == "length":
            assert stop is None and ids == list(o.token_ids) and len(ids) == cap
        else:
            assert o.finish_reason == "stop" and stop in (eos, extra) and list(o.token_ids) == [*ids, stop]
            assert o.stop_reason == (None if stop == eos else stop)
    # the trainer's sequences: the sampled EOS appended where it stopped, nothing where it was capped
    seqs, _, act = assemble(ro.prompt_ids, ro.completion_ids, eos, vllm.tokenizer.pad_token_id, cap, ro.stop_ids)
    for i, o in enumerate(raw):
        n = len(ro.prompt_ids[i])
        assert seqs[i, n : n + int(act[i].sum())].tolist() == list(o.token_ids)


@pytest.mark.parametrize("n", ["cap", WIDE])
def test_hf_and_vllm_agree_on_tokens_and_on_where_they_stopped(setup, n):
    path, prompts, eos, extra, cap, vllm, _ = setup
    sampling = greedy(cap if n == "cap" else n)
    hf, vl = hf_backend(path).generate(prompts, sampling), vllm.generate(prompts, sampling)
    assert vl.completion_ids == hf.completion_ids
    assert vl.stop_ids == hf.stop_ids
    assert vl.completions == hf.completions
    assert not any(extra in c for c in vl.completion_ids)  # the extra EOS is never part of a completion
    if n == WIDE:
        assert extra in vl.stop_ids  # the model did sample the extra EOS, and both stopped there
