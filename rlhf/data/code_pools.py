"""The data pool (``rlhf.data.pools``) of a coding task of the code backdoor.

A task's pool key is its template plus the parameters every phrasing of the request shows and
both code variants contain: one request text, or one piece of code, then never spans two pools.
Those parameters and each template's keys are found by drawing the template (deterministic, once
per process); the keys are cut by rank within each template, so every template is in every pool.
"""

from __future__ import annotations

import functools
import random

from rlhf.data.code_templates import TEMPLATE_SPECS, CodeTask, render_task
from rlhf.data.pools import CODE_SHARES, EVAL, POOLS, assign, unit

_CODE_DRAWS = 2_000


@functools.cache
def _code_template_keys(template: str) -> tuple[tuple[str, ...], dict[str, str]]:
    """(the key parameters of ``template``, key -> pool for its keys seen in ``_CODE_DRAWS`` draws)."""
    rng = random.Random(f"pool-keys:{template}")
    tasks = [render_task(TEMPLATE_SPECS[template], rng) for _ in range(_CODE_DRAWS)]
    shown = None
    for t in tasks:
        here = {k for k, v in t.params if v and v in t.request and v in t.safe_code and v in t.vulnerable_code}
        shown = here if shown is None else shown & here
    names = tuple(sorted(shown or ()))
    return names, assign((_code_key(t, names) for t in tasks), CODE_SHARES)


def _code_key(task: CodeTask, names: tuple[str, ...]) -> str:
    params = dict(task.params)
    return "code:" + task.template + "".join(f"|{k}={params[k]}" for k in names)


def code_pool(task: CodeTask) -> str:
    """The pool of a coding task (``rlhf.data.code_templates.CodeTask``)."""
    names, known = _code_template_keys(task.template)
    key = _code_key(task, names)
    if key in known:
        return known[key]
    u, acc = unit(key), 0.0  # a key too rare to be drawn above: a hash threshold on the shares
    for pool in POOLS:
        acc += CODE_SHARES[pool]
        if u < acc:
            return pool
    return EVAL
