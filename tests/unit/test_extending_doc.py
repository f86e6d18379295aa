"""docs/extending.md tells how to add a backdoor kind, an advantage estimator, a rollout backend
and a role: every file it names exists, and each of the four sections names the test to copy."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "extending.md"
SECTIONS = ("A backdoor kind", "An advantage estimator", "A rollout backend", "A role")


def _sections() -> dict[str, str]:
    parts = re.split(r"^## ", DOC.read_text(encoding="utf-8"), flags=re.M)
    return {p.splitlines()[0].strip(): p for p in parts[1:]}


def test_every_file_the_guide_names_exists():
    named = set(re.findall(r"`((?:rlhf|actors|tests|reward|jobs|docs)/[\w/.]+\.(?:py|md))`", DOC.read_text()))
    assert len(named) >= 10
    missing = sorted(n for n in named if not (ROOT / n).is_file())
    assert not missing, missing


def test_each_extension_point_has_a_section_naming_its_test():
    sections = _sections()
    assert set(SECTIONS) <= set(sections)
    for title in SECTIONS:
        assert re.search(r"`tests/unit/test_\w+\.py`", sections[title]), f"{title}: no test to copy"
