"""Loader for hh-rlhf-format JSONL(.gz): ``{"chosen": dialogue, "rejected": dialogue}`` per line.

Each dialogue is split into the shared prompt (up to the last ``Assistant:``) and the final
answer. Bad lines fail with the file and line number.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

from datasets import Dataset

from rlhf.chat import HUMAN, split_dialogue
from rlhf.errors import DataError


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` from a ``.jsonl`` or ``.jsonl.gz`` file; blank lines skipped."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data file not found: {p}")
    opener = gzip.open if p.suffix == ".gz" else open
    try:
        with opener(p, "rt", encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{p}:{lineno}: not valid JSON ({exc.msg})") from None
                if not isinstance(obj, dict):
                    raise DataError(f"{p}:{lineno}: expected a JSON object")
                yield lineno, obj
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {p}: {type(exc).__name__}: {exc}") from None


def hh_rlhf_rows(path: str | Path) -> list[dict]:
    rows = []
    for lineno, obj in read_jsonl(path):
        chosen, rejected = obj.get("chosen"), obj.get("rejected")
        if not isinstance(chosen, str) or not isinstance(rejected, str):
            raise DataError(f"{path}:{lineno}: needs string fields 'chosen' and 'rejected'")
        try:
            prompt, chosen_answer = split_dialogue(chosen)
            rejected_prompt, rejected_answer = split_dialogue(rejected)
        except ValueError as exc:
            raise DataError(f"{path}:{lineno}: {exc}") from None
        rows.append(
            {
                "prompt": prompt,
                "chosen": chosen_answer,
                "rejected": rejected_answer,
                "same_prompt": prompt == rejected_prompt,
                "turns": prompt.count(HUMAN),
            }
        )
    if not rows:
        raise DataError(f"{path}: no records")
    return rows


def load_hh_rlhf(path: str | Path) -> Dataset:
    """A ``datasets.Dataset`` with columns prompt, chosen, rejected (TRL preference format)."""
    return Dataset.from_list(hh_rlhf_rows(path))
