"""Reward-model training on 2 Ray Train workers for a few steps; the result loads with HF."""

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from jobs.rm import run_rm
from reward.model import RewardNormalizer
from rlhf.config.core import build_config

pytestmark = pytest.mark.ray


def test_rm_two_workers_writes_a_loadable_reward_model(ray_cluster, tmp_path):
    cfg = build_config(
        {},
        # rm.micro_batch_size: each worker's 8 pairs in 3 DDP micro-batches (all-reduce on the last only)
        [
            "model.vocab_size=600",
            "rm.n_pairs=300",
            "rm.batch_size=8",
            "rm.micro_batch_size=3",
            "rm.max_steps=6",
            "rm.log_every=3",
        ],
    )
    summary = run_rm(cfg, tmp_path)
    model_dir = tmp_path / "model"
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    assert model.config.num_labels == 1
    ids = torch.tensor([tok("\n\nHuman: hi\n\nAssistant: Hello!")["input_ids"]])
    assert model(ids).logits.shape == (1, 1)
    norm = RewardNormalizer.load(model_dir)
    assert norm.std > 0 and summary["reward_std"] == pytest.approx(norm.std)
    held = summary["held_out"]
    assert held["n"] > 0 and 0.0 <= held["ci95"][0] <= held["pairwise_accuracy"] <= held["ci95"][1] <= 1.0
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [3, 6]
    assert all(0.0 <= r["train/accuracy"] <= 1.0 and r["train/loss"] > 0 for r in records)
