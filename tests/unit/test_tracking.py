"""``logging.backends``: MLflow (file store) and W&B (offline) get every record under the metric names
of ``metrics.jsonl`` and the resolved config as parameters; a backend without its library is one
line naming the pip command."""

import pytest

from jobs.cli import main
from rlhf.config.core import build_config
from rlhf.errors import ConfigError
from rlhf.metrics import read_metrics
from rlhf.tracking import INSTALL, check_backends, run_writer
from tests.tracking_stores import mlflow_history, mlflow_runs, wandb_records, wandb_runs


@pytest.fixture
def offline_stores(tmp_path, monkeypatch):
    uri = f"file://{tmp_path / 'mlruns'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    return uri, tmp_path / "wandb"


def test_run_writer_fans_out_to_mlflow_and_wandb(tmp_path, offline_stores):
    uri, wandb_dir = offline_stores
    cfg = build_config({}, ["logging.backends=[mlflow,wandb]", "serve.token=s3cret", "sft.lr=0.0005"])
    with run_writer(cfg, tmp_path / "run", "sft") as metrics:
        for step in (2, 4, 6):
            metrics.log(step, **{"train/loss": 1.0 / step, "charts/lr": 0.1})
        metrics.log(0, **{"defection/triggered": 0.9, "note": "text is not charted"})
    assert [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")] == [2, 4, 6, 0]
    assert not (tmp_path / "run" / "tb").exists()  # tensorboard is not among the backends
    (run,) = mlflow_runs(uri)
    assert mlflow_history(uri, run.info.run_id, "train/loss") == [(2, 0.5), (4, 0.25), (6, 1 / 6)]
    assert mlflow_history(uri, run.info.run_id, "defection/triggered") == [(0, 0.9)]
    assert run.data.params["sft.lr"] == "0.0005" and run.data.params["serve.token"] == "<redacted>"
    assert run.data.tags["stage"] == "sft" and run.data.tags["run"] == "run"
    (path,) = wandb_runs(wandb_dir)
    rows, config = wandb_records(path)
    assert [(r["step"], r["train/loss"]) for r in rows if "train/loss" in r] == [(2, 0.5), (4, 0.25), (6, 1 / 6)]
    assert [(r["step"], r["defection/triggered"]) for r in rows if "defection/triggered" in r] == [(0, 0.9)]
    assert config["sft"]["lr"] == 0.0005 and config["serve"]["token"] == "<redacted>"


def test_default_backend_is_tensorboard_only(tmp_path):
    cfg = build_config({}, [])
    assert cfg.logging.backends == ["tensorboard"]
    with run_writer(cfg, tmp_path, "ppo") as metrics:
        metrics.log(1, **{"reward/mean": 0.5})
        assert metrics.trackers.items == []
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_missing_tracker_library_is_one_line_with_the_pip_command(tmp_path, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match="pip install"):
        check_backends(["tensorboard", "wandb"])
    code = main(["sft", "--out", str(tmp_path / "sft"), "--set", "logging.backends=[tensorboard,wandb]"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.count("\n") == 0 and INSTALL in err and "wandb" in err
    assert not (tmp_path / "sft" / "init").exists()  # failed before any work
