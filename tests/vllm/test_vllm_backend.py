"""HF ``generate`` and vLLM give the same greedy tokens for the same weights, before and after a
weight sync through ``load_weights``."""

import pytest
import torch

from actors.vllm_backend import VLLMBackend
from jobs.sft import quick_sft
from rlhf.config.core import build_config
from rlhf.data.backdoor import eval_prompts
from rlhf.models.modeling import load_model_dir
from rlhf.rollout.hf import HFGenerateBackend, SamplingParams
from tests.ray.conftest import non_loopback

OVERRIDES = ["data.n_train=400", "data.n_eval=40", "model.vocab_size=600", "sft.warmup_steps=5"]
GREEDY = SamplingParams(temperature=0.0, max_new_tokens=24)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    cfg = build_config({}, OVERRIDES)
    root = tmp_path_factory.mktemp("vllm")
    first = quick_sft(cfg, root / "a", steps=40)
    second = quick_sft(build_config({}, [*OVERRIDES, "seed=1"]), root / "b", steps=60)
    prompts = eval_prompts(cfg, 8)
    return first, second, prompts["triggered"][:8] + prompts["untriggered"][:8]


def test_greedy_outputs_agree_before_and_after_weight_sync(setup):
    first, second, prompts = setup
    model, tok = load_model_dir(first)
    hf = HFGenerateBackend(model, tok)
    vl = VLLMBackend(str(first))
    before_hf, before_vl = hf.generate(prompts, GREEDY), vl.generate(prompts, GREEDY)
    seen, bad = non_loopback()
    assert not bad, bad
    assert before_vl.completion_ids == before_hf.completion_ids

    other, _ = load_model_dir(second)
    state = {k: v.clone() for k, v in other.state_dict().items()}
    hf.load_weights(state, 1)
    vl.load_weights(state, 1)
    after_hf, after_vl = hf.generate(prompts, GREEDY), vl.generate(prompts, GREEDY)
    assert after_vl.version == after_hf.version == 1
    assert after_vl.completion_ids == after_hf.completion_ids
    assert after_hf.completion_ids != before_hf.completion_ids  # the sync changed the model
    assert torch.equal(hf.model.state_dict()["lm_head.weight"], state["lm_head.weight"])
