"""Acceptance of ``logging.backends``: ``rlhf sft --set 'logging.backends=[tensorboard,mlflow,wandb]'``
writes ``train/loss`` into an MLflow file store and a W&B offline run (no network), with the metric
names and steps of ``metrics.jsonl`` and the resolved config as parameters."""

import time

import pytest

from jobs.cli import main
from rlhf.metrics import read_metrics
from tests.prom_scrape import metrics_port, our_gauges, scrape
from tests.ray.conftest import SFT_TEST_OVERRIDES
from tests.tracking_stores import mlflow_history, mlflow_runs, wandb_records, wandb_runs

pytestmark = pytest.mark.ray


def test_sft_cli_writes_train_loss_to_mlflow_and_wandb(ray_cluster, tmp_path, monkeypatch):
    uri = f"file://{tmp_path / 'mlruns'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "sft-run"
    sets = [x for o in [*SFT_TEST_OVERRIDES, "logging.backends=[tensorboard,mlflow,wandb]"] for x in ("--set", o)]
    assert main(["sft", "--out", str(out), *sets]) == 0
    expected = [(r["step"], r["train/loss"]) for r in read_metrics(out / "metrics.jsonl")]
    assert [s for s, _ in expected] == [2, 4, 6]
    assert list((out / "tb").glob("events.out.tfevents.*"))  # TensorBoard stays on
    (run,) = mlflow_runs(uri)
    assert mlflow_history(uri, run.info.run_id, "train/loss") == expected
    assert run.data.tags["stage"] == "sft" and run.data.tags["run"] == "sft-run"
    assert run.data.params["sft.max_steps"] == "6" and run.data.params["model.preset"] == "tiny"
    assert len(mlflow_history(uri, run.info.run_id, "perf/tokens_per_s")) == 3
    (path,) = wandb_runs(tmp_path / "wandb")
    rows, config = wandb_records(path)
    assert [(r["step"], r["train/loss"]) for r in rows if "train/loss" in r] == expected
    assert config["sft"]["max_steps"] == 6 and config["logging"]["backends"] == ["tensorboard", "mlflow", "wandb"]
    # the driver's Prometheus gauges of the stage, on the node's endpoint, labelled stage and run
    deadline, ours = time.monotonic() + 90, {}
    while time.monotonic() < deadline and not any(
        s.labels.get("run") == "sft-run" for s in ours.get("ray_rlhf_train_loss", [])
    ):
        time.sleep(2)
        ours = our_gauges(scrape(metrics_port()))
    loss = [s for s in ours.get("ray_rlhf_train_loss", []) if s.labels.get("run") == "sft-run"]
    assert loss and loss[0].labels["stage"] == "sft"
    assert any(loss[0].value == pytest.approx(v) for _, v in expected)  # the agent exports a logged value
    assert all(s.labels.get("run") for samples in ours.values() for s in samples)
