"""Run metrics: one JSON object per line in ``metrics.jsonl`` and, optionally, TensorBoard.

Names are namespaced (``train/loss``, ``charts/lr``, ``eval/triggered``) as in CleanRL.
"""

from __future__ import annotations

import json
import time
from pathlib import Path


class MetricsWriter:
    def __init__(self, run_dir: str | Path, tensorboard: bool = True, exporters: tuple = (), trackers=None):
        """``exporters``: callables ``(step, record)`` that see every logged record too (e.g. the
        Prometheus gauges of ``actors/train_metrics.py``); ``trackers``: a ``rlhf.tracking.Trackers``
        (MLflow, W&B) that gets every record and is closed with the writer."""
        self.exporters = tuple(exporters)
        self.trackers = trackers
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / "metrics.jsonl"
        self._fh = open(self.path, "a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(self.run_dir / "tb"))
            except ImportError:  # tensorboard is optional at run time
                self._tb = None

    def log(self, step: int, **values: float) -> None:
        record = {"step": step, "time": time.time(), **values}
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()
        if self._tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, step)
        self.export(step, values)

    def export(self, step: int, values: dict) -> None:
        """Send a record to the exporters and trackers only (one another process wrote to the file)."""
        for export in self.exporters:
            export(step, values)
        if self.trackers is not None:
            self.trackers.log(step, values)

    def close(self) -> None:
        self._fh.close()
        if self._tb is not None:
            self._tb.close()
        if self.trackers is not None:
            self.trackers.close()

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_metrics(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
