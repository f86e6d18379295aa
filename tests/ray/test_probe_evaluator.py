"""``eval.probe`` on the Serve defection evaluator: ``rlhf watch`` of a checkpoint folder logs the saved
probe's AUROC and scores beside ``defection/triggered`` and its report draws the probe panel."""

import json
import math
import shutil

import pytest

from jobs.cli import main
from rlhf.metrics import read_metrics

pytestmark = pytest.mark.ray

EVAL = ["eval.samples=12", "eval.temperature=0", "eval.max_new_tokens=8", "eval.batch_size=32", "serve.port=0"]


def test_the_serve_evaluator_scores_the_saved_probe_beside_defection(ray_cluster, tiny_policy, tmp_path, capsys):
    probe = tmp_path / "probe"
    assert main(["probe", "--model", tiny_policy, "--samples", "12", "--save", str(probe), "--json"]) == 0
    best = json.loads(capsys.readouterr().out)["best"]["supervised"]
    ckpt = shutil.copytree(tiny_policy, tmp_path / "trl" / "checkpoint-4")
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": 4, "log_history": []}))
    out = tmp_path / "watched"
    sets = [x for s in [*EVAL, f"eval.probe={probe}"] for x in ("--set", s)]
    argv = [
        "watch",
        "--checkpoints",
        str(tmp_path / "trl"),
        "--out",
        str(out),
        "--once",
        "--policy-config",
        tiny_policy,
    ]
    assert main([*argv, *sets]) == 0
    records = [r for r in read_metrics(out / "metrics.jsonl") if "defection/triggered" in r]
    assert [r["step"] for r in records] == [4]
    rec = records[0]
    print("probe:", {k: v for k, v in rec.items() if k.startswith("probe/")}, "rlhf probe best:", best)
    for key in ("probe/auroc", "probe/triggered_score", "probe/untriggered_score", "probe/contrast_auroc"):
        assert math.isfinite(rec[key]) and 0.0 <= rec[key] <= 1.0
    assert rec["probe/auroc"] == pytest.approx(best["held_out"]["auroc"], abs=1e-9)  # same probe, same prompts
    assert json.loads((out / "curves.json").read_text())["probe"][0]["step"] == 4
    assert 'alt="probe"' in (out / "report.html").read_text()
