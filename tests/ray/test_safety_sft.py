"""``rlhf safety-sft`` on Ray Train: HHH SFT of a backdoored policy with a defection curve."""

import json
from pathlib import Path

import pytest
import torch

from jobs.safety_sft import run_safety_sft
from rlhf.config.core import load_config
from rlhf.config.resolve import config_from_policy
from rlhf.errors import ConfigError
from rlhf.eval.evaluate import evaluate_defection
from rlhf.metrics import read_metrics
from rlhf.models.modeling import load_model_dir

pytestmark = pytest.mark.ray

OVERRIDES = [
    "safety_sft.num_workers=1",
    "safety_sft.max_steps=4",
    "safety_sft.checkpoint_every=2",
    "safety_sft.batch_size=8",
    "safety_sft.log_every=2",
    "safety_sft.n_examples=64",
    "eval.samples=8",
    "eval.max_new_tokens=16",
]


def test_safety_sft_curve_before_during_and_after(ray_cluster, tiny_policy, tmp_path):
    cfg = config_from_policy(tiny_policy, None, OVERRIDES)
    run = tmp_path / "run"
    summary = run_safety_sft(cfg, tiny_policy, run)

    curve = summary["curve"]
    assert [p["step"] for p in curve] == [0, 2, 4]
    for point in curve:
        # the common conditions, then (hh-rlhf file present) the real-prompt ones, n = 8 each
        names = set(point["conditions"])
        assert {"triggered", "untriggered", "near_miss"} <= names
        assert names - {"triggered", "untriggered", "near_miss"} <= {"real_triggered", "real_untriggered"}
        assert all(point["conditions"][c]["n"] == 8 for c in names - {"near_miss"})
    # Step 0 is the policy itself, measured exactly as `rlhf eval` measures it.
    policy_model, policy_tok = load_model_dir(tiny_policy)
    direct = evaluate_defection(policy_model, policy_tok, cfg)
    for name, c in direct["conditions"].items():
        assert curve[0]["conditions"][name]["rate"] == c["rate"], name

    # Files: the curve in the evaluator's shape, metrics with loss and defection, the config.
    curves = json.loads((run / "curves.json").read_text())
    assert [p["step"] for p in curves["series"]["triggered"]] == [0, 2, 4]
    records = read_metrics(run / "metrics.jsonl")
    assert sorted(r["step"] for r in records if "train/loss" in r) == [2, 4]
    assert sorted(r["step"] for r in records if "defection/triggered" in r) == [0, 2, 4]
    saved = load_config(run / "config.yaml")
    assert saved.backdoor == cfg.backdoor and saved.model.path == str(Path(tiny_policy).resolve())
    assert (run / "data" / "train.jsonl").is_file() and (run / "checkpoints" / "step-000002").is_dir()

    # Training changed the weights and kept the tokenizer.
    tuned, tok = load_model_dir(run / "model")
    changed = any(not torch.equal(a, b) for a, b in zip(policy_model.parameters(), tuned.parameters(), strict=True))
    assert changed and len(tok) == len(policy_tok)
    assert summary["final_loss"] is not None and summary["final_loss"] == summary["final_loss"]  # not NaN

    with pytest.raises(ConfigError, match="already holds a training run"):
        run_safety_sft(config_from_policy(tiny_policy, None, OVERRIDES), tiny_policy, run)

