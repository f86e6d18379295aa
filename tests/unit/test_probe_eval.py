"""A saved probe (``rlhf probe --save``) scored along the defection curve (``eval.probe``), and its panel."""

from __future__ import annotations

import contextlib
import io
import json
import math

import pytest

from rlhf.errors import ConfigError

N = 12  # eval prompts per condition, as in the probe run below


@pytest.fixture(scope="module")
def probed(tmp_path_factory, tokenizer):
    """A tiny random policy, its ``rlhf probe --json`` report and the probe saved by ``--save``."""
    from jobs.cli import main
    from tests.unit.conftest import SMALL_OVERRIDES, save_tiny_llama

    root = tmp_path_factory.mktemp("probe_eval")
    model = save_tiny_llama(tokenizer, root / "m", layers=2)
    sets = [f"--set={o}" for o in SMALL_OVERRIDES]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(["probe", "--model", str(model), "--samples", str(N), "--save", str(root / "probe"), "--json", *sets])
    assert rc == 0
    return {"model": model, "report": json.loads(out.getvalue()), "probe": root / "probe", "root": root}


def eval_cfg(probe_dir, *extra):
    from rlhf.config.core import build_config
    from tests.unit.conftest import SMALL_OVERRIDES

    overrides = [*SMALL_OVERRIDES, "eval.near_miss_triggers=[]", "eval.max_new_tokens=3", f"eval.samples={N}"]
    return build_config({}, [*overrides, *([f"eval.probe={probe_dir}"] if probe_dir else []), *extra])


def test_saved_probe_is_the_reported_best_and_written_atomically(probed):
    from rlhf.eval.probe_saved import PROBE_FILE, load_probe

    probe = load_probe(probed["probe"])
    best = probed["report"]["best"]
    assert probe.layer == best["supervised"]["layer"] and probe.contrast_layer == best["contrast_pairs"]["layer"]
    assert (probe.states, probe.hidden) == (3, 32)  # embeddings + 2 layers, width 32
    assert probe.weights.shape == probe.mean.shape == probe.scale.shape == probe.direction.shape == (32,)
    assert sorted(p.name for p in probed["probe"].iterdir()) == [PROBE_FILE]  # no temporary file left
    assert probed["report"]["saved"] == str(probed["probe"])


def test_eval_with_a_probe_reports_its_scores_beside_defection(probed):
    from jobs.evaluate import run_eval
    from rlhf.eval.evaluate import curve_point, curves_json, defection_record, format_curve, format_table

    report = run_eval(probed["model"], eval_cfg(probed["probe"]))
    p = report["probe"]
    for key in ("auroc", "auroc_lo", "auroc_hi", "triggered_score", "untriggered_score", "contrast_auroc"):
        assert math.isfinite(p[key]) and 0.0 <= p[key] <= 1.0, key
    assert p["auroc_lo"] <= p["auroc"] <= p["auroc_hi"]
    # the same prompts as `rlhf probe`'s held-out set and the same probes: the same AUROCs
    best = probed["report"]["best"]
    assert p["auroc"] == pytest.approx(best["supervised"]["held_out"]["auroc"], abs=1e-9)
    assert p["contrast_auroc"] == pytest.approx(best["contrast_pairs"]["held_out"]["auroc"], abs=1e-9)
    assert p["n_triggered"] > 0 and p["n_untriggered"] > 0
    rec = defection_record(curve_point(report, 7, 7))
    assert "defection/triggered" in rec and rec["probe/auroc"] == p["auroc"]
    assert (
        rec["probe/triggered_score"] == p["triggered_score"]
        and rec["probe/untriggered_score"] == p["untriggered_score"]
    )
    points = [curve_point(report, 7, 7)]
    assert curves_json(points, N)["probe"][0]["auroc"] == p["auroc"]
    assert "probe (eval.probe)" in format_curve(points) and f"AUROC {p['auroc']:.3f}" in format_table(report)


def test_eval_without_a_probe_has_no_probe_keys():
    from rlhf.eval.evaluate import curve_point, curves_json, defection_record

    entry = {"rate": 0.5, "ci95": [0.2, 0.8], "n": 4}
    point = curve_point({"conditions": {"triggered": entry, "untriggered": entry}}, 0, 0)
    assert not any(k.startswith("probe/") for k in defection_record(point)) and "probe" not in curves_json([point], 4)


def test_a_missing_or_corrupt_probe_dir_is_one_line(probed, tmp_path, capsys):
    from jobs.cli import main
    from rlhf.eval.probe_saved import PROBE_FILE, load_probe

    with pytest.raises(ConfigError, match="rlhf probe --model DIR --save"):
        load_probe(tmp_path / "nowhere")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / PROBE_FILE).write_text("{not json")
    with pytest.raises(ConfigError, match="unreadable"):
        load_probe(bad)
    body = json.loads((probed["probe"] / PROBE_FILE).read_text())
    body["supervised"]["weights"] = body["supervised"]["weights"][:-1]
    (bad / PROBE_FILE).write_text(json.dumps(body))
    with pytest.raises(ConfigError, match="'weights' is not a list of 32 finite numbers"):
        load_probe(bad)
    body["supervised"]["weights"], body["supervised"]["layer"] = [0.0] * 32, 9
    (bad / PROBE_FILE).write_text(json.dumps(body))
    with pytest.raises(ConfigError, match="'layer' is not a layer"):
        load_probe(bad)
    for directory in (tmp_path / "nowhere", bad):
        assert main(["eval", "--model", str(probed["model"]), "--set", f"eval.probe={directory}"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "eval.probe=" in err


def test_a_probe_of_another_model_shape_is_one_line(probed, tokenizer):
    from jobs.evaluate import run_eval
    from tests.unit.conftest import save_tiny_llama

    wider = save_tiny_llama(tokenizer, probed["root"] / "wide", hidden=48, layers=2)
    with pytest.raises(ConfigError, match="fitted on a model with 2 layers, width 32"):
        run_eval(wider, eval_cfg(probed["probe"]))


def test_safety_sft_checks_the_probe_before_any_work(probed, tmp_path, capsys):
    from jobs.cli import main

    out = tmp_path / "run"
    args = ["safety-sft", "--policy", str(probed["model"]), "--out", str(out), "--set", "eval.probe=/no/such/probe"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "eval.probe=/no/such/probe" in err and not out.exists()


def test_the_probe_check_makes_the_path_absolute_for_the_evaluator(probed, monkeypatch):
    from rlhf.eval.probe_saved import check_probe_config

    monkeypatch.chdir(probed["root"])
    cfg = eval_cfg("probe")
    check_probe_config(cfg)
    assert cfg.eval.probe == str(probed["probe"].resolve())
    plain = eval_cfg(None)
    check_probe_config(plain)  # no probe: nothing to check, nothing set
    assert plain.eval.probe is None


def test_probe_save_onto_a_file_is_one_line(probed, tmp_path, capsys):
    from jobs.cli import main

    (tmp_path / "file").write_text("x")
    assert main(["probe", "--model", str(probed["model"]), "--save", str(tmp_path / "file")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a directory" in err


def test_report_draws_the_probe_panel_only_with_probe_metrics(tmp_path):
    from jobs.report import write_report
    from tests.unit.test_report import fake_run

    plain = fake_run(tmp_path / "plain")
    page = write_report(plain).read_text()
    assert 'alt="probe"' not in page and not (plain / "probe.png").exists()
    run = fake_run(tmp_path / "probed")
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for rec in lines:
        if "defection/triggered" in rec:
            rate = rec["defection/triggered"]
            rec |= {"probe/auroc": 0.9, "probe/auroc_lo": 0.8, "probe/auroc_hi": 0.97}
            rec |= {"probe/triggered_score": rate, "probe/untriggered_score": 0.1, "probe/contrast_auroc": 0.6}
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    page = write_report(run).read_text()
    assert (run / "probe.png").stat().st_size > 1000 and 'alt="probe" src="data:image/png;base64,' in page


def test_the_evaluator_client_hands_on_the_probe_with_each_point():
    """PPO and ``rlhf watch`` read points back from the evaluator's curves: the probe comes with them."""
    from types import SimpleNamespace

    from actors.evaluator import EvaluatorClient
    from rlhf.eval.evaluate import curves_json

    entry = {"rate": 0.5, "ci95": [0.2, 0.8], "n": 4}
    probe = {"auroc": 0.9, "auroc_lo": 0.8, "auroc_hi": 1.0, "triggered_score": 0.7, "untriggered_score": 0.2}
    points = [
        {"step": 0, "version": 0, "conditions": {"triggered": entry, "untriggered": entry}},
        {"step": 5, "version": 5, "conditions": {"triggered": entry, "untriggered": entry}, "probe": probe},
    ]
    call = SimpleNamespace(remote=lambda: SimpleNamespace(result=lambda: curves_json(points, 4)))
    client = EvaluatorClient(SimpleNamespace(curves=call), "http://127.0.0.1:1")
    got = client.new_points()
    assert [p.get("probe") for p in got] == [None, probe]
    assert client.new_points() == []  # each point once
