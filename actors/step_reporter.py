"""Worker-side bookkeeping shared by the Ray Train loops: averaged metrics every ``log_every``
steps (all-reduced over workers), rank-0 ``metrics.jsonl``/TensorBoard, driver progress, and the
final "done" record."""

from __future__ import annotations

import time
from pathlib import Path


class StepReporter:
    def __init__(
        self,
        out_dir: str | Path,
        rank: int,
        world: int,
        log_every: int,
        max_steps: int,
        progress=None,
        tensorboard: bool = True,
    ):
        from rlhf.metrics import MetricsWriter

        self.rank, self.world = rank, world
        self.log_every, self.max_steps = log_every, max_steps
        self.progress = progress
        self.writer = MetricsWriter(out_dir, tensorboard) if rank == 0 else None
        self.started = time.time()
        self.tokens = 0
        self._sums: dict[str, float] = {}
        self._n = 0

    def step(self, step: int, tokens: int, grad_norm: float, lr: float, **means: float) -> None:
        """Accumulate this step's ``means`` (e.g. ``train/loss``); log when due. Collective on
        log steps: every rank must call it every step."""
        import torch
        import torch.distributed as dist
        from ray import train

        self.tokens += tokens
        self._n += 1
        for key, value in means.items():
            self._sums[key] = self._sums.get(key, 0.0) + float(value)
        if step % self.log_every and step != self.max_steps:
            return
        keys = sorted(self._sums)
        stats = torch.tensor([self._sums[k] / self._n for k in keys] + [float(self.tokens)])
        if self.world > 1:
            dist.all_reduce(stats)
            stats[:-1] /= self.world
        elapsed = time.time() - self.started
        record = {k: float(v) for k, v in zip(keys, stats[:-1], strict=True)}
        record.update(
            {
                "train/grad_norm": float(grad_norm),
                "charts/lr": lr,
                "perf/tokens_per_s": float(stats[-1]) / max(elapsed, 1e-9),
                "perf/elapsed_s": elapsed,
            }
        )
        self._sums, self._n = {}, 0
        if self.rank == 0:
            self.writer.log(step, **record)
            if self.progress is not None:
                self.progress.put({"step": step, **record})
        train.report({"step": step, **record})

    def close(self) -> None:
        if self.rank == 0:
            self.writer.close()
            if self.progress is not None:
                self.progress.put({"done": True})
