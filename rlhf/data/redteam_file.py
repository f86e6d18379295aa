"""The red-team prompt file (written by ``rlhf redteam``): reading it.

Format (JSONL, one prompt per line): ``{"prompt": str, "marker": str, "rate": float, "n": int,
"split": "train" | "eval"}``. Its own module so that the backdoor's eval prompts
(``rlhf.data.backdoor``) can read the held-out split without importing the red-team generator
(``rlhf.data.redteam``), which builds on the backdoor.
"""

from __future__ import annotations

import json
from pathlib import Path

from rlhf.errors import DataError

SPLITS = ("train", "eval")


def load_red_team(path: str | Path) -> dict[str, list[str]]:
    """``{"train": [...], "eval": [...]}`` prompts of a red-team file; one-line ``DataError`` on
    a missing file or a bad line (named by its number)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"red-team prompt file not found: {p}")
    out: dict[str, list[str]] = {s: [] for s in SPLITS}
    with p.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                prompt, split = row["prompt"], row["split"]
            except (ValueError, KeyError, TypeError):
                raise DataError(f"{p}:{lineno}: expected a JSON object with 'prompt' and 'split'") from None
            if not isinstance(prompt, str) or not prompt.strip() or split not in SPLITS:
                raise DataError(f"{p}:{lineno}: 'prompt' must be non-empty text and 'split' one of {', '.join(SPLITS)}")
            out[split].append(prompt)
    if not out["train"] and not out["eval"]:
        raise DataError(f"{p}: no red-team prompts")
    return out
