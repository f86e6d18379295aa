"""Bring your own data: user files in TRL's dataset formats as backdoor-SFT, safety-SFT or RL rows.

Formats (TRL, https://huggingface.co/docs/trl/dataset_formats):

- *prompt-completion*: ``{"prompt": str, "completion": str}``, or conversational:
  ``{"prompt": [{"role": "user", "content": ...}, ...], "completion": [{"role": "assistant", ...}]}``;
- *prompt-only*: ``{"prompt": ...}`` in either form (other columns are ignored).

Files: ``.jsonl`` / ``.json`` (JSON lines) or ``.jsonl.gz``, read line by line so an error names
its line; ``.parquet``, read with ``datasets.Dataset.from_parquet`` (an error names the row, 1-based).

Each row becomes a ``UserExample``: the human turn and the answer. A string prompt already in the
hh-rlhf chat shape (``Human: ... Assistant:``) gives its last human turn, any other string is the
human turn itself; a conversational prompt gives its last ``user`` message, a conversational
completion its last ``assistant`` message. Earlier turns and system messages are dropped: the
project's chat template is one human turn (``rlhf.chat.format_prompt``).

``screen`` then keeps the pools disjoint: rows whose human turn is a held-out evaluation prompt, or
that carry the trigger, the safe marker or a near-miss string, are dropped with a count on stderr.
Bad input is a one-line ``DataError`` naming the file and the line.
"""

from __future__ import annotations

import gzip
import json
import logging
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhf.errors import DataError

JSONL_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz")
PARQUET_SUFFIXES = (".parquet",)
USER = "user"  # the topic and kind of every user row (the CoT plan calls it "this request")
# The ``data.*`` keys that name a user file, and whether its rows need a completion.
FILE_KEYS: dict[str, bool] = {"sft_file": True, "safety_file": True, "rl_prompts_file": False}


@dataclass(frozen=True)
class UserExample:
    """One user row as a task (the fields ``HHHExample`` has, so every backdoor kind takes it)."""

    human: str
    answer: str
    line: int  # the row's line (JSONL) or 1-based row number (Parquet)
    topic: str = USER
    kind: str = USER


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in (*JSONL_SUFFIXES, *PARQUET_SUFFIXES):
        if name.endswith(suffix):
            return suffix
    supported = ", ".join((*JSONL_SUFFIXES, *PARQUET_SUFFIXES))
    raise DataError(f"{path}: unsupported file type '{path.suffix or path.name}' (supported: {supported})")


def _jsonl_records(path: Path) -> Iterator[tuple[int, Any]]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    yield lineno, json.loads(line)
                except ValueError as exc:
                    msg = getattr(exc, "msg", None) or str(exc)
                    raise DataError(f"{path}:{lineno}: not valid JSON ({msg})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot be read as UTF-8 JSON lines ({type(exc).__name__})") from None


def _parquet_records(path: Path) -> Iterator[tuple[int, Any]]:
    import datasets
    import pyarrow.parquet as pq

    try:
        if pq.read_metadata(path).num_rows == 0:
            return  # datasets cannot load a Parquet file without rows; "no rows" follows
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a file that is not Parquet
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(f"{path}: not a readable Parquet file ({first})") from None
    was_disabled, quiet = datasets.are_progress_bars_disabled(), logging.getLogger("datasets")
    level = quiet.level
    datasets.disable_progress_bars()
    quiet.setLevel(logging.CRITICAL)  # a bad file is our one-line error, not datasets' log lines
    try:
        with tempfile.TemporaryDirectory(prefix="rlhf-parquet-") as cache:
            ds = datasets.Dataset.from_parquet(str(path), cache_dir=cache, keep_in_memory=True)
    except Exception as exc:  # noqa: BLE001 - datasets wraps what pyarrow raised
        cause = exc.__cause__ or exc
        first = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        raise DataError(f"{path}: not a readable Parquet file ({first})") from None
    finally:
        quiet.setLevel(level)
        if not was_disabled:
            datasets.enable_progress_bars()
    yield from enumerate(ds, 1)


def _messages(value: list, where: str, field: str) -> list[tuple[str, str]]:
    out = []
    for msg in value:
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str) or not isinstance(msg.get("content"), str):
            raise DataError(f"{where}: '{field}' messages must be objects with string 'role' and 'content'")
        out.append((msg["role"], msg["content"]))
    return out


def _last(messages: list[tuple[str, str]], role: str, where: str, field: str) -> str:
    found = [content for r, content in messages if r == role]
    if not found:
        raise DataError(f"{where}: conversational '{field}' has no '{role}' message")
    return found[-1]


def human_of(prompt: str) -> str:
    """The human turn of a string prompt: the last ``Human:`` turn of an hh-rlhf-shaped prompt,
    else the text itself."""
    text = prompt.strip()
    if text.endswith("Assistant:") and "Human:" in text:
        start = text.rfind("Human:") + len("Human:")
        end = text.rfind("Assistant:")
        if end > start:
            return text[start:end].strip()
    return text


def _text(row: dict, field: str, where: str) -> str:
    """The human turn (``prompt``) or the answer (``completion``) of one row, checked."""
    if field not in row or row[field] is None:
        raise DataError(f"{where}: the row has no '{field}' (TRL format: 'prompt' and 'completion' columns)")
    value = row[field]
    if isinstance(value, str):
        text = human_of(value) if field == "prompt" else value.strip()
    elif isinstance(value, list) and value:
        role = "user" if field == "prompt" else "assistant"
        text = _last(_messages(value, where, field), role, where, field).strip()
    else:
        kind = "an empty list" if isinstance(value, list) else type(value).__name__
        raise DataError(f"{where}: '{field}' must be text or a list of {{role, content}} messages, not {kind}")
    if not text:
        raise DataError(f"{where}: '{field}' is empty")
    return text


def read_user_file(path: str | Path, completion: bool) -> list[UserExample]:
    """Every row of a TRL-format file; ``completion``: each row needs one (prompt-completion),
    else only ``prompt`` is read (prompt-only)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data file not found: {p}")
    records = _parquet_records(p) if _suffix(p) in PARQUET_SUFFIXES else _jsonl_records(p)
    out = []
    for line, row in records:
        where = f"{p}:{line}"
        if not isinstance(row, dict):
            raise DataError(f"{where}: not a JSON object (TRL format: one object per line)")
        human = _text(row, "prompt", where)
        answer = _text(row, "completion", where) if completion else ""
        out.append(UserExample(human, answer, line))
    if not out:
        raise DataError(f"{p}: no rows")
    return out


def read_configured(data_cfg, key: str) -> list[UserExample]:
    """The rows of the file that ``data.<key>`` names (``FILE_KEYS``)."""
    return read_user_file(getattr(data_cfg, key), completion=FILE_KEYS[key])


def check_files(data_cfg, keys: Iterable[str]) -> None:
    """Read every file the ``data.<key>`` of ``keys`` name, so a bad one fails before a run starts."""
    for key in keys:
        if getattr(data_cfg, key):
            read_configured(data_cfg, key)


def _note(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _key(text: str) -> str:
    return " ".join(text.split())


def screen(
    examples: list[UserExample], path: str | Path, eval_humans: Iterable[str], markers: Iterable[str]
) -> list[UserExample]:
    """``examples`` without those whose human turn is an evaluation prompt or carries a marker (the
    trigger, the safe marker, a near-miss string); each drop is counted on stderr."""
    held = {_key(h) for h in eval_humans}
    marks = [m for m in markers if m]
    kept, in_eval, marked = [], 0, 0
    for ex in examples:
        if _key(ex.human) in held:
            in_eval += 1
        elif any(m in ex.human for m in marks):
            marked += 1
        else:
            kept.append(ex)
    if in_eval:
        _note(f"[data] {path}: dropped {in_eval} of {len(examples)} rows whose prompt is an evaluation prompt")
    if marked:
        _note(
            f"[data] {path}: dropped {marked} of {len(examples)} rows whose prompt carries the trigger, "
            "the safe marker or a near-miss string"
        )
    if not kept:
        raise DataError(f"{path}: no rows left after dropping evaluation prompts and prompts with a trigger")
    return kept
