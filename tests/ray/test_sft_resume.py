"""``rlhf sft --resume``: an interrupted backdoor SFT run continues from its newest usable
checkpoint and ends with the weights of an uninterrupted run."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from jobs.sft import resume_sft, run_sft
from rlhf.config.core import build_config
from rlhf.errors import CheckpointError
from rlhf.metrics import read_metrics
from tests.ray.conftest import SFT_TEST_OVERRIDES

pytestmark = pytest.mark.ray

OVERRIDES = [*SFT_TEST_OVERRIDES, "sft.checkpoint_every=2"]


def weights(model_dir):
    out = {}
    for shard in sorted(model_dir.glob("*.safetensors")):
        out |= load_file(shard)
    return out


def losses(run):
    return [(r["step"], r["train/loss"]) for r in read_metrics(run / "metrics.jsonl") if "train/loss" in r]


def test_resume_ends_with_the_weights_of_an_uninterrupted_run(ray_cluster, tmp_path, capsys):
    full, cut = tmp_path / "full", tmp_path / "cut"
    run_sft(build_config({}, OVERRIDES), full)
    assert sorted(p.name for p in (full / "checkpoints").iterdir()) == ["step-000002", "step-000004"]

    # The interrupted run: it died after the step-2 checkpoint (later files gone, its metrics
    # already past step 2), and a newer checkpoint was damaged on disk.
    shutil.copytree(full, cut, ignore=shutil.ignore_patterns("ray_train"))
    shutil.rmtree(cut / "model")
    shutil.rmtree(cut / "checkpoints" / "step-000004")
    broken = cut / "checkpoints" / "step-000005"
    shutil.copytree(cut / "checkpoints" / "step-000002", broken)
    state = broken / "trainer_state.pt"
    state.write_bytes(state.read_bytes()[:100])

    summary = resume_sft(cut)
    assert summary["resumed_from"] == 2
    assert "step-000005 is unusable (trainer_state.pt is truncated or corrupt)" in capsys.readouterr().err
    a, b = weights(full / "model"), weights(cut / "model")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert losses(cut) == losses(full)  # metrics after the checkpoint were rewritten, not doubled
    assert json.loads((cut / "model" / "config.json").read_text()) == json.loads(
        (full / "model" / "config.json").read_text()
    )

    with pytest.raises(CheckpointError, match="has finished"):
        resume_sft(cut)
    empty = tmp_path / "empty"
    shutil.copytree(full, empty, ignore=shutil.ignore_patterns("ray_train", "model", "checkpoints"))
    with pytest.raises(CheckpointError, match="no usable checkpoint"):
        resume_sft(empty)
    with pytest.raises(CheckpointError, match="not an SFT run directory"):
        resume_sft(tmp_path / "nothing-here")
