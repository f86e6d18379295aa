"""``bench/timeline.py`` reads Ray's task events into per-role busy intervals: an execution span
belongs to the call that holds it on the same worker, constructors and non-PPO tasks are left out,
and the busy share of a window counts only the time inside it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import timeline  # noqa: E402


def span(cat: str, tid: str, ts_s: float, dur_s: float) -> dict:
    return {"ph": "X", "cat": cat, "name": cat, "tid": tid, "ts": ts_s * 1e6, "dur": dur_s * 1e6}


EVENTS = [
    span("task::Policy-0:Policy.__init__", "w1", 0.0, 0.5),
    span("task:execute", "w1", 0.1, 0.3),
    span("task::Policy.train", "w1", 1.0, 1.0),  # waited 0.2 s for its arguments
    span("task:execute", "w1", 1.2, 0.8),
    span("task::RolloutWorker.generate", "w2", 0.5, 1.5),
    span("task:execute", "w2", 0.5, 1.5),
    span("task::some_function", "w3", 0.0, 3.0),
    span("task:execute", "w3", 0.0, 3.0),
    {"ph": "i", "cat": "submit_task", "tid": "driver", "ts": 0.0},
]


def test_executions_are_assigned_to_their_role_and_method():
    got = timeline.role_intervals(EVENTS)
    assert set(got) == {"Policy", "RolloutWorker"}  # no constructor, no plain task
    assert got["Policy"] == [(pytest.approx(1.2), pytest.approx(2.0), "train")]
    assert got["RolloutWorker"] == [(pytest.approx(0.5), pytest.approx(2.0), "generate")]


def test_busy_share_counts_the_window_only_and_the_window_ends_at_the_last_train():
    got = timeline.role_intervals(EVENTS)
    window = timeline.last_window(got, 1.0)
    assert window == (pytest.approx(1.0), pytest.approx(2.0))
    busy = timeline.busy_fractions(got, *window)
    assert busy["Policy"] == pytest.approx(0.8) and busy["RolloutWorker"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="empty window"):
        timeline.busy_fractions(got, 2.0, 2.0)
    with pytest.raises(ValueError, match="no Policy.train"):
        timeline.last_window({"RolloutWorker": got["RolloutWorker"]}, 1.0)


def test_the_gantt_chart_is_written(tmp_path):
    got = timeline.role_intervals(EVENTS)
    timeline.plot(got, (0.0, 2.0), tmp_path / "t.png", "test")
    assert (tmp_path / "t.png").stat().st_size > 1000
