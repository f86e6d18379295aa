"""Prometheus export of a training run's step metrics, through Ray's metrics agent.

The driver calls it beside ``MetricsWriter.log``, with the same record::

    gauges = TrainingGauges("ppo", run.name)
    ...
    metrics.log(step, **record)
    gauges.log(step, record)

Each metric of ``EXPORTED`` that the record holds is set on a ``ray.util.metrics.Gauge`` tagged
``stage`` and ``run``; Ray exports it with a ``ray_`` prefix on the metrics port (8080) of the
node whose process set it (on KubeRay: the head of ``rlhf``, where the drivers run), e.g.
``ray_rlhf_reward_mean{stage="ppo",run="ppo"}``. Defection records (``defection_record``) are
exported too, as ``ray_rlhf_defection_rate{condition=...}``, so a run whose evaluator runs in
the driver's process (no Serve) still has a defection series. Without Ray (a process that has not
joined a cluster) ``log`` does nothing.
"""

from __future__ import annotations

import math
from typing import Any

# record key -> (gauge name, description)
EXPORTED: dict[str, tuple[str, str]] = {
    "reward/mean": ("rlhf_reward_mean", "mean reward-model score of the step's rollouts"),
    "reward/std": ("rlhf_reward_std", "standard deviation of the step's rollout scores"),
    "kl/mean": ("rlhf_kl_mean", "mean KL(policy || reference) per sequence"),
    "kl/coef": ("rlhf_kl_coef", "KL penalty coefficient"),
    "policy/approx_kl": ("rlhf_policy_approx_kl", "approximate KL between the PPO policy before and after the update"),
    "policy/entropy": ("rlhf_policy_entropy", "policy entropy per token"),
    "policy/clipfrac": ("rlhf_policy_clipfrac", "fraction of clipped policy ratios"),
    "losses/policy": ("rlhf_loss_policy", "policy loss"),
    "losses/value": ("rlhf_loss_value", "value loss"),
    "train/loss": ("rlhf_train_loss", "training loss (SFT, RM, safety SFT)"),
    "train/accuracy": ("rlhf_train_accuracy", "reward model: pairwise accuracy of the step's batch"),
    "train/grad_norm": ("rlhf_grad_norm", "gradient norm before clipping (SFT, RM, safety SFT)"),
    "perf/tokens_per_s": ("rlhf_tokens_per_second", "tokens per second (trained on; PPO: generated)"),
    "response/length": ("rlhf_response_length", "PPO: mean response length in tokens"),
    "timing/step": ("rlhf_step_seconds", "wall time of the last step"),
}
STEP_GAUGE = "rlhf_train_step"
PHASE_GAUGE = "rlhf_phase_seconds"  # PPO: one series per phase (timing/<phase>)
PHASE_PREFIX = "timing/"
DEFECTION_GAUGE = "rlhf_defection_rate"
DEFECTION_PREFIX = "defection/"
DEFECTION_SUFFIXES = ("_lo", "_hi", "_n", "_unparseable")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def defection_rates(record: dict[str, Any]) -> dict[str, float]:
    """``{condition: rate}`` of a ``defection_record`` (its ``defection/<condition>`` keys)."""
    out = {}
    for key, value in record.items():
        name = key[len(DEFECTION_PREFIX) :] if key.startswith(DEFECTION_PREFIX) else None
        if not name or name == "version" or name.endswith(DEFECTION_SUFFIXES) or _number(value) is None:
            continue
        out[name] = float(value)
    return out


class TrainingGauges:
    """The gauges of one run (``stage``: ppo, safety-sft, sft, rm, distill-sft, watch; ``run``: the run
    directory's name)."""

    def __init__(self, stage: str, run: str):
        self.tags = {"stage": stage, "run": run}
        self._gauges: dict[str, Any] | None = None

    def _make(self) -> dict[str, Any]:
        from ray.util.metrics import Gauge

        keys = ("stage", "run")
        gauges = {name: Gauge(name, doc, tag_keys=keys) for name, doc in EXPORTED.values()}
        gauges[STEP_GAUGE] = Gauge(STEP_GAUGE, "last logged training step", tag_keys=keys)
        gauges[PHASE_GAUGE] = Gauge(PHASE_GAUGE, "PPO: seconds of the last step per phase", tag_keys=(*keys, "phase"))
        gauges[DEFECTION_GAUGE] = Gauge(
            DEFECTION_GAUGE, "defection rate by trigger condition", tag_keys=(*keys, "condition")
        )
        return gauges

    def log(self, step: int, record: dict[str, Any]) -> None:
        """Set the gauges the record has values for; a no-op outside a Ray cluster."""
        import ray

        if not ray.is_initialized():
            return
        if self._gauges is None:
            self._gauges = self._make()
        rates = defection_rates(record)
        for condition, rate in rates.items():
            self._gauges[DEFECTION_GAUGE].set(rate, tags={**self.tags, "condition": condition})
        if rates:
            return  # a defection record carries the step of its curve point, not a training step
        self._gauges[STEP_GAUGE].set(float(step), tags=self.tags)
        for key, (name, _) in EXPORTED.items():
            value = _number(record.get(key))
            if value is not None:
                self._gauges[name].set(value, tags=self.tags)
        for key, raw in record.items():
            phase, value = key[len(PHASE_PREFIX) :] if key.startswith(PHASE_PREFIX) else "", _number(raw)
            if phase and phase != "step" and value is not None:
                self._gauges[PHASE_GAUGE].set(value, tags={**self.tags, "phase": phase})


def stage_sink(cfg, run_dir, stage: str):
    """Where a driver sends the records of a Ray Train stage's workers (they write ``metrics.jsonl``
    themselves): this stage's Prometheus gauges and the trackers of ``logging.backends``."""
    from pathlib import Path

    from rlhf.tracking import Fanout, open_trackers

    gauges = TrainingGauges(stage, Path(run_dir).resolve().name)
    return Fanout((gauges.log,), open_trackers(cfg, run_dir, stage))
