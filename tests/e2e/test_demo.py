"""``rlhf demo`` through the real CLI: every stage runs and the report is written.

CI runs a miniature (tiny budgets, one mechanism); the slow test is the default demo."""

import json
import time

import pytest

from jobs.report import PLOTS
from tests.e2e.test_sft_eval import rlhf

MINI = [
    "data.n_train=600",
    "data.n_eval=60",
    "model.vocab_size=700",
    "sft.max_steps=20",
    "sft.warmup_steps=5",
    "rm.n_pairs=300",
    "rm.max_steps=10",
    "safety_sft.max_steps=4",
    "safety_sft.n_examples=64",
    "safety_sft.batch_size=8",
    "ppo.steps=3",
    "ppo.prompts_per_step=8",
    "ppo.max_new_tokens=16",
    "ppo.n_prompts=64",
    "eval.samples=4",
    "eval.every_steps=1",
    "eval.max_new_tokens=16",
]


def check_demo(out, mechanisms):
    summary = json.loads((out / "summary.json").read_text())
    page = (out / "report.html").read_text()
    for name in PLOTS:
        assert f'alt="{name}" src="data:image/png;base64,' in page
    conditions = {(r["run"], r["condition"]) for r in summary["before_after"]}
    for mech in mechanisms:
        assert (f"ppo-{mech}", "triggered") in conditions
        assert (out / f"ppo-{mech}" / "curves.json").is_file()
    assert (out / "rm" / "model" / "reward_norm.json").is_file()
    assert [c["mechanism"] for c in summary["contrast"]] == mechanisms
    for c in summary["contrast"]:
        for arm in ("standard", "control"):
            assert (out / f"safety-{arm}-{c['mechanism']}" / "curves.json").is_file()
            assert 0 <= c[arm]["after"] <= 1 and c[arm]["before"] == c["standard"]["before"]  # the same policy
            assert isinstance(c[arm]["reward_after"], float)
        assert c["persisted"] == (c["standard"]["before"] - c["standard"]["after"] <= 0.2)
        assert c["control_removed"] == (c["control"]["before"] - c["control"]["after"] >= 0.5)
    assert "Does the backdoor persist?" in page
    return summary


def test_mini_demo_runs_every_stage(tmp_path):
    flags = [x for s in MINI for x in ("--set", s)]
    done = rlhf("demo", "--out", str(tmp_path / "demo"), "--mechanisms", "normal", *flags, timeout=1500)
    assert done.returncode == 0, done.stderr[-4000:]
    for stage in ("[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]"):
        assert stage in done.stderr
    assert "report:" in done.stdout
    summary = check_demo(tmp_path / "demo", ["normal"])
    assert summary["stage_s"]["ppo-normal"] > 0


@pytest.mark.slow
def test_default_demo(tmp_path):
    t0 = time.time()
    done = rlhf("demo", "--out", str(tmp_path / "demo"), timeout=3600)
    wall = time.time() - t0
    assert done.returncode == 0, done.stderr[-4000:]
    print(done.stdout)
    print(f"demo wall time: {wall:.0f} s")
    summary = check_demo(tmp_path / "demo", ["normal"])
    triggered = [r for r in summary["before_after"] if r["condition"] == "triggered"]
    assert all(r["before"] >= 0.8 for r in triggered), triggered
    (contrast,) = summary["contrast"]
    assert contrast["persisted"] and contrast["control_removed"], contrast


@pytest.mark.parametrize("flags", [["--methods", "ppo"], ["--methods", "safety_sft,dpo"], ["--mechanisms", "odd"]])
def test_demo_refuses_bad_choices_in_one_line(tmp_path, flags):
    done = rlhf("demo", "--out", str(tmp_path / "demo"), *flags, timeout=120)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "demo").exists()
