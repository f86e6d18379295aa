"""Read back what the trackers wrote, with no network: an MLflow file store and a W&B offline run."""

from __future__ import annotations

import json
from pathlib import Path


def wandb_records(path: str | Path) -> tuple[list[dict], dict]:
    """(history rows, config) of a W&B offline ``run-*.wandb`` file (a LevelDB-style record log:
    7-byte header, 32 KiB blocks of ``crc32 | length | type | data`` records)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, rows, config, buf, pos, block = Path(path).read_bytes(), [], {}, b"", 7, 32768
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's trailer: padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        buf = chunk if kind in (1, 2) else buf + chunk  # FULL/FIRST start a record, MIDDLE/LAST extend it
        if kind not in (1, 4):
            continue
        record = pb.Record()
        record.ParseFromString(buf)
        which = record.WhichOneof("record_type")
        if which == "history":
            rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
        elif which in ("config", "run"):  # the run record carries the config it started with
            items = record.config.update if which == "config" else record.run.config.update
            config.update({i.key: json.loads(i.value_json) for i in items})
    return rows, config


def wandb_runs(wandb_dir: str | Path) -> list[Path]:
    return sorted(Path(wandb_dir).glob("wandb/offline-run-*/run-*.wandb"))


def mlflow_runs(uri: str) -> list:
    """Every run of every experiment in the store at ``uri``."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids) if ids else []


def mlflow_history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    from mlflow import MlflowClient

    return [(m.step, m.value) for m in MlflowClient(tracking_uri=uri).get_metric_history(run_id, key)]
