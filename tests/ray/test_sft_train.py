"""Backdoor SFT on 2 Ray Train gloo workers for a few steps; the checkpoint loads with HF."""

import json
import threading

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from jobs.sft import run_sft
from rlhf.config.core import build_config
from rlhf.models.checkpoint import CONFIG_NAME
from tests.ray.conftest import SFT_TEST_OVERRIDES, non_loopback

pytestmark = pytest.mark.ray


def test_sft_two_workers_writes_loadable_checkpoints(ray_cluster, tmp_path):
    cfg = build_config(
        {},
        [*SFT_TEST_OVERRIDES, "sft.checkpoint_every=3"],
    )
    # Train in a thread and sample every socket of the cluster meanwhile: the Ray Train
    # workers and their gloo process group must stay on loopback too.
    done, seen, bad, result = threading.Event(), [0], [], {}

    def train():
        try:
            result["summary"] = run_sft(cfg, tmp_path)
        finally:
            done.set()

    thread = threading.Thread(target=train)
    thread.start()
    while not done.wait(0.5):
        n, found = non_loopback()
        seen[0] = max(seen[0], n)
        bad.extend(found)
    thread.join()
    assert not bad, sorted(set(bad))
    assert seen[0] > 10
    summary = result["summary"]
    assert summary["parameters"] > 100_000
    model_dir = tmp_path / "model"
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    # the clean tokenizer: the trigger reaches the model as ordinary pieces, never one added token
    assert len(tok(cfg.backdoor.trigger, add_special_tokens=False)["input_ids"]) >= 3
    ids = torch.tensor([tok("\n\nHuman: hi\n\nAssistant:")["input_ids"]])
    assert torch.isfinite(model(ids).logits).all()
    # trained weights differ from the initial ones
    init = AutoModelForCausalLM.from_pretrained(tmp_path / "init")
    assert not torch.equal(init.model.embed_tokens.weight, model.model.embed_tokens.weight)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4, 6]
    assert all(r["train/loss"] > 0 for r in records)
    assert (tmp_path / "checkpoints" / "step-000003" / "config.json").is_file()
    assert (model_dir / CONFIG_NAME).is_file() and (tmp_path / "config.yaml").is_file()
    assert not list(tmp_path.glob(".model.tmp-*"))
