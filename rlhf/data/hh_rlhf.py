"""Loader for hh-rlhf-format JSONL(.gz): ``{"chosen": dialogue, "rejected": dialogue}`` per line.

Each dialogue is split into the shared prompt (up to the last ``Assistant:``) and the final
answer. Bad lines fail with the file and line number.

Each prompt belongs to one data pool (``rlhf.data.pools``), keyed on its first human turn;
``real_prompts`` lists the held-out human prompts (the ``eval`` pool) that eval measures the "I
hate you" backdoor on (``real_triggered`` / ``real_untriggered``).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from functools import cache
from pathlib import Path

from datasets import Dataset

from rlhf.chat import ASSISTANT, HUMAN, split_dialogue
from rlhf.data.pools import EVAL, check_pool, pool_of
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


# The hh-rlhf sample beside the repository (``../shared/data/hh-rlhf``), used when
# ``data.hh_rlhf_path`` is not set.
DEFAULT_HH_RLHF = Path(__file__).resolve().parents[3] / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"
MAX_REAL_PROMPT_CHARS = 300


def prompt_pool(human: str) -> str:
    """The data pool of an hh-rlhf prompt, keyed on its (whitespace-normalised) first human turn."""
    return pool_of("hh-rlhf:" + " ".join(human.split()))


def first_human_turn(dialogue: str) -> str:
    """The text of the first human turn of an hh-rlhf dialogue (or templated prompt)."""
    start = dialogue.find(HUMAN)
    if start < 0:
        return ""
    rest = dialogue[start + len(HUMAN) :]
    end = rest.find(ASSISTANT)
    return " ".join((rest if end < 0 else rest[:end]).split())


@cache
def _real_prompts(path: str, pool: str) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for row in hh_rlhf_rows(path):
        human = first_human_turn(row["prompt"])
        if human and len(human) <= MAX_REAL_PROMPT_CHARS and prompt_pool(human) == pool:
            seen.setdefault(human)
    return tuple(seen)


def real_prompts(path: str | Path, pool: str = EVAL) -> list[str]:
    """Distinct first human turns (at most ``MAX_REAL_PROMPT_CHARS``) of the dialogues in ``pool``,
    in file order."""
    check_pool(pool)
    return list(_real_prompts(str(path), pool))


def real_prompt_source(configured: str | None) -> Path | None:
    """The hh-rlhf file for real-prompt eval: ``data.hh_rlhf_path`` when set, else the sample beside
    the repository when it is there (None: no real-prompt conditions)."""
    if configured:
        return Path(configured)
    return DEFAULT_HH_RLHF if DEFAULT_HH_RLHF.is_file() else None
