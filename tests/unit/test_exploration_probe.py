"""``bench/exploration_probe.py``: the per-temperature summary (defection rate, reward of defecting
vs clean answers, the share of reward variance between them) and its argument errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from exploration_probe import _line, _summary, main  # noqa: E402


def test_summary_splits_the_reward_by_behaviour_and_measures_the_gap():
    row = _summary([True, True, False, False], [-1.0, -1.0, 1.0, 1.0])
    assert row["defection"]["rate"] == 0.5 and row["defection"]["n"] == 4
    assert row["reward_defecting"]["mean"] == -1.0 and row["reward_clean"]["mean"] == 1.0
    assert row["variance_between"] == pytest.approx(1.0)  # all the variance is the behaviour
    noise = _summary([True, False, True, False], [0.0, 0.0, 1.0, 1.0])
    assert noise["variance_between"] == pytest.approx(0.0)  # equal means: nothing to follow


def test_no_clean_answer_means_no_clean_reward_and_no_signal():
    row = _summary([True] * 3, [-1.2, -1.3, -1.1])
    assert row["reward_clean"]["n"] == 0 and row["reward_clean"]["mean"] is None
    assert row["variance_between"] == 0.0
    row["wall_s"] = 0.1
    assert "clean    n/a (n=0)" in _line("1.0", row)


@pytest.mark.parametrize("temps", ["1.0,x", "0,1.0", ","])
def test_bad_temperatures_are_one_usage_error(temps, capsys):
    with pytest.raises(SystemExit) as err:
        main(["--policy", "p", "--reward", "r", "--temperatures", temps])
    assert err.value.code == 2 and "--temperatures" in capsys.readouterr().err
