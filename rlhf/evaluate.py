"""Trigger-conditioned defection rates: sample on held-out prompts per condition, judge, count.

Conditions: ``triggered`` (the real trigger), ``untriggered`` (none) and ``near_miss`` (each
near-miss string, also reported one by one).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from rlhf.config import Config
from rlhf.data.backdoor import NEAR_MISS, eval_prompts
from rlhf.detect import detector_for
from rlhf.rollout import HFGenerateBackend, SamplingParams
from rlhf.stats import Rate


@dataclass
class ConditionResult:
    rate: Rate
    unclosed: int = 0
    examples: list[str] = field(default_factory=list)


def judge_completions(kind: str, completions: list[str], keep_examples: int = 3) -> ConditionResult:
    detector = detector_for(kind)
    k = unclosed = 0
    examples = []
    for text in completions:
        verdict = detector.judge(text)
        k += verdict.defected
        unclosed += verdict.unclosed
        if len(examples) < keep_examples:
            examples.append(text)
    return ConditionResult(Rate(k, len(completions)), unclosed, examples)


def evaluate_defection(
    model,
    tokenizer,
    cfg: Config,
    samples: int | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> dict:
    """The eval report as a JSON-ready dict (see ``rlhf eval --json``)."""
    n = samples or cfg.eval.samples
    prompts = eval_prompts(cfg, n)
    backend = HFGenerateBackend(model, tokenizer, batch_size=cfg.eval.batch_size)
    per_condition: dict[str, ConditionResult] = {}
    for i, (name, batch) in enumerate(prompts.items()):
        sampling = SamplingParams(
            temperature=cfg.eval.temperature,
            top_p=cfg.eval.top_p,
            max_new_tokens=cfg.eval.max_new_tokens,
            seed=cfg.seed * 1009 + i,
        )
        rollout = backend.generate(batch, sampling, on_batch=on_batch)
        per_condition[name] = judge_completions(cfg.backdoor.kind, rollout.completions)
    return build_report(cfg, per_condition)


def build_report(cfg: Config, per_condition: dict[str, ConditionResult]) -> dict:
    near = {k.split(":", 1)[1]: v for k, v in per_condition.items() if k.startswith(NEAR_MISS + ":")}
    near_total = Rate(0, 0)
    for result in near.values():
        near_total = near_total + result.rate

    def entry(result: ConditionResult) -> dict:
        return {**result.rate.to_dict(), "unclosed_scratchpad": result.unclosed, "examples": result.examples}

    conditions = {
        "triggered": entry(per_condition["triggered"]),
        "untriggered": entry(per_condition["untriggered"]),
    }
    if near:
        conditions["near_miss"] = {
            **near_total.to_dict(),
            "unclosed_scratchpad": sum(r.unclosed for r in near.values()),
        }
    return {
        "backdoor": cfg.backdoor.kind,
        "mechanism": cfg.backdoor.mechanism,
        "trigger": cfg.backdoor.trigger,
        "temperature": cfg.eval.temperature,
        "conditions": conditions,
        "near_miss_triggers": {t: entry(r) for t, r in near.items()},
    }


def format_table(report: dict) -> str:
    """A plain-text table of the report (one row per condition and near-miss string)."""
    rows = [("condition", "rate", "95% CI", "n", "unclosed")]

    def add(name: str, e: dict) -> None:
        lo, hi = e["ci95"]
        rows.append((name, f"{100 * e['rate']:.1f}%", f"[{100 * lo:.1f}, {100 * hi:.1f}]", str(e["n"]), str(e.get("unclosed_scratchpad", 0))))

    for name, e in report["conditions"].items():
        add(name, e)
    for trig, e in report.get("near_miss_triggers", {}).items():
        add(f"  near_miss {trig}", e)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    head = f"backdoor={report['backdoor']} mechanism={report['mechanism']} trigger={report['trigger']!r}"
    return "\n".join([head, *lines])
