#!/usr/bin/env python3
"""Do all images of an HTML report render? Loads the page in headless Chromium and counts the
``<img>`` elements that decoded (``naturalWidth > 0``). No network: the reports embed their plots.

    python scripts/render_check.py DIR/report.html [--chromium PATH]

Prints ``rendered K/N images`` (and the alt text of any that did not) and exits 0 only when every
image rendered and there is at least one. Needs a Chromium binary (Debian: ``apt-get install
chromium``).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PROBE = """<script>
window.addEventListener("load", () => {
  const imgs = [...document.images];
  const bad = imgs.filter((i) => !(i.complete && i.naturalWidth > 0)).map((i) => i.alt || i.src.slice(0, 40));
  const out = document.createElement("pre");
  out.id = "render-check";
  out.textContent = `RENDER-CHECK ${imgs.length - bad.length}/${imgs.length} BAD=${JSON.stringify(bad)}`;
  document.body.appendChild(out);
});
</script>"""


def find_chromium(given: str | None) -> str:
    for name in [given] if given else ["chromium", "chromium-browser", "google-chrome", "chrome"]:
        path = shutil.which(name) if name else None
        if path:
            return path
    raise SystemExit("render_check: no Chromium found (apt-get install chromium, or --chromium PATH)")


def check(report: Path, chromium: str) -> tuple[int, int, list[str]]:
    page = report.read_text(encoding="utf-8")
    probed = page.replace("</body>", PROBE + "</body>") if "</body>" in page else page + PROBE
    with tempfile.TemporaryDirectory(prefix="render-check-") as tmp:
        copy = Path(tmp) / "report.html"
        copy.write_text(probed, encoding="utf-8")
        args = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000"]
        args += [f"--user-data-dir={tmp}/profile", "--dump-dom", copy.as_uri()]
        dom = subprocess.run(args, capture_output=True, text=True, timeout=120).stdout
    match = re.search(r"RENDER-CHECK (\d+)/(\d+) BAD=(\[.*?\])", dom)
    if not match:
        raise SystemExit("render_check: the page did not finish loading in headless Chromium")
    import json

    return int(match.group(1)), int(match.group(2)), json.loads(match.group(3))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", type=Path)
    ap.add_argument("--chromium", help="Chromium binary (default: found on PATH)")
    args = ap.parse_args()
    if not args.report.is_file():
        print(f"render_check: no such file: {args.report}", file=sys.stderr)
        return 2
    ok, total, bad = check(args.report, find_chromium(args.chromium))
    print(f"rendered {ok}/{total} images" + (f"; not rendered: {', '.join(bad)}" if bad else ""))
    return 0 if total and ok == total else 1


if __name__ == "__main__":
    sys.exit(main())
