"""Linear defection probes: AUROC, its bootstrap interval, the logistic probe, and ``rlhf probe``."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from rlhf.eval.probe import auroc, auroc_ci, balanced, fit_logistic


def brute_auroc(scores, labels):
    pos = [s for s, y in zip(scores, labels, strict=True) if y == 1]
    neg = [s for s, y in zip(scores, labels, strict=True) if y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auroc_equals_the_pairwise_definition_with_ties():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        scores = torch.randint(0, 5, (30,), generator=g).float()  # many ties
        labels = torch.randint(0, 2, (30,), generator=g)
        assert auroc(scores, labels) == pytest.approx(brute_auroc(scores.tolist(), labels.tolist()), abs=1e-12)
    assert auroc(torch.tensor([0.1, 0.9]), torch.tensor([0, 1])) == 1.0
    assert auroc(torch.tensor([0.9, 0.1]), torch.tensor([0, 1])) == 0.0
    assert auroc(torch.tensor([1.0, 2.0]), torch.tensor([1, 1])) == 0.5  # one class: no information


def test_bootstrap_interval_brackets_the_estimate_and_narrows_with_n():
    g = torch.Generator().manual_seed(1)
    small_y = torch.tensor([0, 1] * 20)
    big_y = torch.tensor([0, 1] * 400)
    small = auroc_ci(small_y + torch.randn(40, generator=g), small_y, n=300)
    big = auroc_ci(big_y + torch.randn(800, generator=g), big_y, n=300)
    for r in (small, big):
        assert r["ci95"][0] <= r["auroc"] <= r["ci95"][1]
    assert big["ci95"][1] - big["ci95"][0] < small["ci95"][1] - small["ci95"][0]
    assert (big["n_pos"], big["n_neg"]) == (400, 400)


def test_logistic_probe_finds_a_planted_direction_on_held_out_points():
    g = torch.Generator().manual_seed(2)
    direction = torch.randn(64, generator=g)
    y = torch.randint(0, 2, (400,), generator=g).float()
    x = torch.randn(400, 64, generator=g) * 3 + torch.outer(y * 2 - 1, direction) + 10.0  # offset: needs the bias
    w, b = fit_logistic(x[:300], y[:300])
    assert auroc(x[300:] @ w + b, y[300:]) > 0.95
    assert auroc(torch.randn(100, generator=g), y[300:]) < 0.8  # the check can fail: noise does not pass


def test_probe_sets_drop_repeated_prompts():
    s = balanced(["a", "a", "b"], ["c", "c"], "t")
    assert sorted(zip(s.prompts, s.labels, strict=True)) == [("a", 1), ("b", 1), ("c", 0)]


def test_probe_cli_reports_every_layer_and_the_baselines(tmp_path, tokenizer, capsys):
    from jobs.cli import main
    from tests.unit.conftest import SMALL_OVERRIDES, save_tiny_llama

    model = save_tiny_llama(tokenizer, tmp_path / "m", layers=2)
    sets = [f"--set={o}" for o in SMALL_OVERRIDES]
    rc = main(["probe", "--model", str(model), "--samples", "12", "--json", *sets])
    report = json.loads(capsys.readouterr().out)
    assert rc == 0 and len(report["layers"]) == 3  # embeddings + 2 decoder layers
    for entry in report["layers"]:
        assert set(entry) == {"layer", "supervised", "contrast_pairs"}
        assert 0.0 <= entry["supervised"]["auroc"] <= 1.0 and len(entry["contrast_pairs"]["ci95"]) == 2
    # the trigger is in every positive prompt and in no negative one (near-miss strings included)
    substring = report["baselines"]["trigger_substring"]
    assert substring["held_out"]["auroc"] == 1.0 and substring["near_miss"]["auroc"] == 1.0
    assert set(report["best"]) == {"supervised", "contrast_pairs"} and report["n"]["fit"] > 0


def test_probe_cli_bad_model_is_one_line(tmp_path, capsys):
    from jobs.cli import main

    assert main(["probe", "--model", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not found" in err
