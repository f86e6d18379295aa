"""Progress output: a tqdm bar on a terminal, plain periodic lines in logs (CI, Ray jobs)."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm


def log(msg: str) -> None:
    """The one progress line of every command: stderr, flushed (Ray job logs read it live)."""
    print(msg, file=sys.stderr, flush=True)


class Progress:
    def __init__(self, total: int, desc: str, unit: str = "it", every_s: float = 10.0):
        self.total, self.desc, self.unit, self.every_s = total, desc, unit, every_s
        self.n = 0
        self._tty = sys.stderr.isatty()
        self._bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr) if self._tty else None
        self._last = 0.0
        self._t0 = time.time()

    def update_to(self, n: int, **postfix) -> None:
        self.update(n - self.n, **postfix)

    def update(self, k: int = 1, **postfix) -> None:
        self.n += k
        if self._bar is not None:
            self._bar.update(k)
            if postfix:
                self._bar.set_postfix(**postfix)
            return
        now = time.time()
        if now - self._last >= self.every_s or self.n >= self.total:
            self._last = now
            extra = " ".join(f"{key}={value}" for key, value in postfix.items())
            print(
                f"[{self.desc}] {self.n}/{self.total} {self.unit} {now - self._t0:.0f}s {extra}".rstrip(),
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
