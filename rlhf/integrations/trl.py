"""``DefectionCallback``: the defection curve of a backdoored policy from inside a TRL run (GRPO, PPO,
DPO, SFT: any ``transformers.Trainer``).

Every ``every_steps`` optimizer steps (and before the first and after the last) the callback
measures the policy's trigger-conditioned defection in the training process, with the evaluator's
conditions and seeds (``rlhf.eval.evaluate``: with, without and near-miss trigger, the kind's
real-prompt conditions), and writes what ``rlhf ppo`` and ``rlhf watch`` write: ``OUT/curves.json``,
``OUT/metrics.jsonl`` (``defection/<condition>``), TensorBoard events, the trackers of
``logging.backends``; ``rlhf report OUT`` draws the report::

    from rlhf.integrations.trl import DefectionCallback

    callback = DefectionCallback("runs/sft/model", "runs/trl-defection", every_steps=50)
    GRPOTrainer(..., callbacks=[callback]).train()

The config (trigger, kind, eval pool) comes from the backdoored policy's saved config: its
``rlhf_config.yaml`` or the policy directory, or a ``Config``; ``overrides`` as ``--set``. Only the
main process (``state.is_world_process_zero``) evaluates. No Ray here: the policy is the trainer's
own model, evaluated where it trains.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from rlhf.config.core import Config, build_config, dump_config, read_yaml
from rlhf.eval.evaluate import curve_point, curves_json, defection_record, evaluate_defection
from rlhf.models.checkpoint import CONFIG_NAME
from rlhf.tracking import check_backends, run_writer

POLICY_SECTIONS = ("seed", "model", "backdoor", "data")


def policy_config(source: Config | str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """A ``Config`` as given, or the policy's saved one (file or policy dir) with ``overrides``."""
    if isinstance(source, Config):
        return build_config(source.model_dump(mode="json"), list(overrides)) if overrides else source
    path = Path(source)
    saved = read_yaml(path / CONFIG_NAME if path.is_dir() else path)
    return build_config({k: saved[k] for k in POLICY_SECTIONS if k in saved}, list(overrides))


class DefectionCallback(TrainerCallback):
    def __init__(
        self,
        config: Config | str | Path,
        out: str | Path,
        every_steps: int = 10,
        overrides: list[str] | tuple[str, ...] = (),
        samples: int | None = None,
    ):
        if every_steps < 1:
            raise ValueError("every_steps must be at least 1")
        self.cfg = policy_config(config, overrides)
        check_backends(self.cfg.logging.backends)
        self.out, self.every = Path(out), every_steps
        self.samples = samples or self.cfg.eval.samples
        self.points: list[dict[str, Any]] = []
        self.metrics = None

    def evaluate(self, model, tokenizer, step: int) -> dict[str, Any]:
        """One curve point of ``model`` now (its training mode restored after)."""
        import torch

        model = getattr(model, "module", model)  # DDP / accelerate wrappers
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                report = evaluate_defection(model, tokenizer, self.cfg, samples=self.samples)
        finally:
            model.train(was_training)
        point = curve_point(report, step, step)
        self.points.append(point)
        self.metrics.log(step, **defection_record(point))
        tmp = self.out / ".curves.json.tmp"
        tmp.write_text(json.dumps(curves_json(self.points, self.samples), indent=1), encoding="utf-8")
        tmp.replace(self.out / "curves.json")
        return point

    def _due(self, state, step: int) -> bool:
        return state.is_world_process_zero and not any(p["step"] == step for p in self.points)

    @staticmethod
    def _tokenizer(kwargs: dict):
        return kwargs.get("processing_class") or kwargs.get("tokenizer")

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not state.is_world_process_zero:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        dump_config(self.cfg, self.out / "config.yaml")
        self.metrics = run_writer(self.cfg, self.out, "trl")
        if self._due(state, state.global_step):
            self.evaluate(model, self._tokenizer(kwargs), state.global_step)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0 and self._due(state, state.global_step):
            self.evaluate(model, self._tokenizer(kwargs), state.global_step)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if not state.is_world_process_zero:
            return
        if self._due(state, state.global_step):
            self.evaluate(model, self._tokenizer(kwargs), state.global_step)
        self.metrics.close()
