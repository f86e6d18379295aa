"""``rlhf sweep``: the sweep file, cells, shared stages, result rows, resume after a kill or a
failure (stages run in this process on fakes), the report and the CLI's one-line errors."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import yaml

from jobs.cli import main
from rlhf.errors import ConfigError
from rlhf.sweep.grid import blocked_by, cell_id, load_sweep, parse_sweep, plan_sweep, ready_stages
from rlhf.sweep.results import result_row

ROOT = Path(__file__).resolve().parents[2]

GRID = {
    "backdoor.mechanism": ["normal", "cot", "distilled"],
    "seed": [0, 1],
    "method": ["safety_sft", "ppo"],
    "control": [False, True],
}


def sweep_data(**changes) -> dict:
    data = {
        "base": {"model.preset": "tiny", "data": {"n_train": 100}},
        "grid": dict(GRID),
        "budgets": {"sft": {"sft.max_steps": 5}, "safety_sft": {"safety_sft.max_steps": 3}},
    }
    data.update(changes)
    return data


def test_cells_are_the_grid_product_and_shared_stages_are_built_once():
    plan = plan_sweep(parse_sweep(sweep_data()))
    assert len(plan.cells) == 3 * 2 * 2 * 2
    kinds = Counter(s.kind for s in plan.stages.values())
    # per seed: SFT normal and cot (distilled reads the cot policy), one distillation
    assert kinds == {"sft": 4, "distill": 2, "rm": 1, "eval_before": 6, "safety": 24, "eval_after": 24}
    by_values = {json.dumps(c.values, sort_keys=True): c for c in plan.cells}

    def cell(mech, seed, method, control):
        key = {"backdoor.mechanism": mech, "control": control, "method": method, "seed": seed}
        return by_values[json.dumps(key, sort_keys=True)]

    a, b = cell("normal", 0, "safety_sft", False), cell("normal", 0, "ppo", True)
    assert a.stages["sft"] == b.stages["sft"] and a.stages["eval_before"] == b.stages["eval_before"]
    assert a.stages["safety"] != b.stages["safety"]
    assert len({c.stages["rm"] for c in plan.cells}) == 1
    cot, dist = cell("cot", 1, "ppo", False), cell("distilled", 1, "ppo", False)
    assert cot.stages["sft"] == dist.stages["sft"] and "distill" in dist.stages
    assert plan.stages[dist.stages["distill"]].deps == {"cot": cot.stages["sft"]}
    assert cell("normal", 1, "ppo", False).stages["sft"] != a.stages["sft"]  # another seed


def test_control_sets_the_methods_fraction_and_budgets_reach_their_stage():
    sweep = parse_sweep(sweep_data(control_fractions={"ppo": 0.25}))
    plan = plan_sweep(sweep)
    for c in plan.cells:
        tree = plan.stages[c.stages["safety"]].tree
        method, on = c.values["method"], c.values["control"]
        if method == "ppo":
            assert tree.get("ppo", {}).get("triggered_prompt_fraction") == (0.25 if on else None)
        else:
            assert tree.get("safety_sft", {}).get("triggered_fraction") == (0.5 if on else None)
            assert tree["safety_sft"]["max_steps"] == 3
        assert plan.stages[c.stages["sft"]].tree["sft"]["max_steps"] == 5 and tree["data"]["n_train"] == 100
    # every stage follows the stages it reads
    order = list(plan.stages)
    assert all(order.index(d) < order.index(s.id) for s in plan.stages.values() for d in s.deps.values())


def test_cell_ids_are_readable_directory_names():
    assert cell_id({"backdoor.mechanism": "cot", "seed": 1, "control": True}) == "mechanism=cot,seed=1,control=on"
    assert cell_id({"sft.lr": 0.1, "rm.lr": 0.2}) == "sft.lr=0.1,rm.lr=0.2"


@pytest.mark.parametrize(
    "data, words",
    [
        (sweep_data(grdi={}), ["unknown key 'grdi'"]),
        (sweep_data(grid={}), ["'grid' is empty"]),
        (sweep_data(grid={"seed": []}), ["grid key 'seed'", "non-empty list"]),
        (sweep_data(grid={"seed": 3}), ["grid key 'seed'"]),
        (sweep_data(grid={"seed": ["zero"]}), ["seed=zero", "config key 'seed'"]),
        (sweep_data(grid={"sft.lrr": [0.1]}), ["config key 'sft.lrr'", "unknown key"]),
        (sweep_data(grid={"method": ["rlhf"]}), ["grid key 'method'", "'rlhf'"]),
        (sweep_data(grid={"control": ["yes"]}), ["grid key 'control'"]),
        (sweep_data(grid={"seed": [1, 1]}), ["repeats a value"]),
        (sweep_data(budgets={"ppo2": {}}), ["unknown stage 'ppo2'"]),
        (sweep_data(budgets={"ppo": {"ppo.steps": "many"}}), ["stage ppo", "config key 'ppo.steps'"]),
        (sweep_data(base={"model.preset": "huge"}), ["config key 'model.preset'"]),
        (sweep_data(control_fractions={"ppo": 1.5}), ["control_fractions.ppo"]),
        (sweep_data(reward_samples=0), ["reward_samples"]),
        (sweep_data(resources={"eval_after": {"num_cpus": -1}}), ["resources.eval_after.num_cpus"]),
        ([1, 2], ["top level must be a mapping"]),
    ],
)
def test_a_bad_sweep_file_is_one_line_naming_the_problem(data, words):
    with pytest.raises(ConfigError) as err:
        plan_sweep(parse_sweep(data, "s.yaml"))
    message = str(err.value)
    assert "\n" not in message and message.startswith("sweep file s.yaml: ")
    for word in words:
        assert word in message, message


@pytest.mark.parametrize("name, cells", [("persistence-tiny.yaml", 36), ("persistence-small.yaml", 12)])
def test_shipped_sweeps_validate(name, cells):
    sweep = load_sweep(ROOT / "sweeps" / name)
    plan = plan_sweep(sweep)
    assert len(plan.cells) == cells
    assert {c.values["method"] for c in plan.cells} == {"safety_sft", "ppo"}
    assert {c.values["backdoor.mechanism"] for c in plan.cells} == {"normal", "cot", "distilled"}


def test_ready_and_blocked_stages_follow_the_graph():
    plan = plan_sweep(parse_sweep(sweep_data(grid={"seed": [0], "control": [False, True]})))
    first = {s.kind for s in ready_stages(plan, set(), set(), set())}
    assert first == {"sft", "rm"}
    sft = next(s.id for s in plan.stages.values() if s.kind == "sft")
    assert blocked_by(plan, {sft}) == {s.id for s in plan.stages.values() if s.kind not in ("sft", "rm")}


def _eval(rate: float, real: bool = False) -> dict:
    conditions = {
        name: {"rate": r, "ci95": [max(0.0, r - 0.1), min(1.0, r + 0.1)], "n": 10}
        for name, r in (("triggered", rate), ("untriggered", 0.0), ("near_miss", 0.05))
    }
    if real:
        conditions["real_triggered"] = {"rate": rate, "ci95": [0.0, 1.0], "n": 10}
    return {"eval": {"conditions": conditions}, "reward": {"mean": 0.5, "ci95": [0.4, 0.6], "n": 8}, "wall_s": 2.0}


def test_result_rows_are_tidy_and_report_failures():
    plan = plan_sweep(parse_sweep(sweep_data(grid={"seed": [0], "control": [False, True]})))
    a, b = plan.cells
    results = {sid: {"wall_s": 1.0} for sid in a.stages.values()}
    results[a.stages["eval_before"]] = _eval(1.0)
    results[a.stages["eval_after"]] = _eval(0.25, real=True)
    wall = {sid: 1.0 for sid in results}
    row = result_row(a, results, {b.stages["safety"]: "RuntimeError: boom"}, wall)
    assert row["cell"] == a.id and row["seed"] == 0 and row["control"] is False and row["status"] == "done"
    assert row["triggered_before"] == 1.0 and row["triggered_after"] == 0.25 and row["untriggered_after"] == 0.0
    assert row["triggered_after_ci95"] == [0.15, 0.35] and row["real_triggered_after"] == 0.25
    assert row["reward_before"] == 0.5 and row["reward_after_ci95"] == [0.4, 0.6]
    assert row["wall_s"] == len(set(a.stages.values()))
    row_b = result_row(b, results, {b.stages["safety"]: "RuntimeError: boom"}, wall)
    assert row_b["status"] == "failed" and row_b["error"] == "safety: RuntimeError: boom"
    assert row_b["triggered_before"] == 1.0 and row_b["triggered_after"] is None
    assert "real_triggered_after" not in row_b
    assert result_row(b, {}, {}, {})["status"] == "pending"


# ---- the driver on fake stages: kill, failure, resume --------------------------------------


@pytest.fixture
def fake_stages(monkeypatch):
    """Every stage kind replaced by a fast fake; returns the list of stage ids run."""
    from jobs import sweep as sweep_job

    ran: list[str] = []

    def fake(kind):
        def run(p, run_dir):
            ran.append(p["id"])
            run_dir.mkdir(parents=True)
            if kind.startswith("eval"):
                after = kind == "eval_after"
                ctl = "triggered_fraction" in json.dumps(p["deps"]["policy"])
                return _eval(0.5 if after and ctl else 1.0 if not after else 0.9)
            curves = {"series": {"triggered": [{"step": s, "rate": 1 - s / 10, "ci95": [0, 1]} for s in (0, 5)]}}
            return {"model_dir": str(run_dir), "tree": p["tree"], "curves": curves if kind == "safety" else None}

        return run

    for kind in sweep_job.STAGE_FUNCTIONS:
        monkeypatch.setitem(sweep_job.STAGE_FUNCTIONS, kind, fake(kind))
    return ran


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


TWO_CELLS = sweep_data(grid={"seed": [0], "method": ["safety_sft"], "control": [False, True]})


def test_a_failed_cell_is_reported_and_a_rerun_finishes_only_what_is_missing(tmp_path, fake_stages):
    from jobs.sweep import InProcessExecutor, run_sweep

    path, out = _write(tmp_path, TWO_CELLS), tmp_path / "out"
    plan = plan_sweep(load_sweep(path))
    control = next(c for c in plan.cells if c.values["control"])
    first = run_sweep(path, out, executor=InProcessExecutor(), fail=[control.stages["safety"]])
    assert (first["done"], first["failed"]) == (1, 1)
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    failed = next(r for r in rows if r["control"])
    assert failed["status"] == "failed" and "injected failure" in failed["error"]
    assert (out / "stages" / control.stages["safety"] / "error.txt").is_file()
    assert len(fake_stages) == len(plan.stages) - 2  # the failed safety stage and its eval never ran a fake

    fake_stages.clear()
    second = run_sweep(path, out, executor=InProcessExecutor())
    assert (second["done"], second["failed"]) == (2, 0)
    assert fake_stages == [control.stages["safety"], control.stages["eval_after"]]
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["status"] for r in rows] == ["done", "done"]
    assert [r["triggered_after"] for r in rows] == [0.9, 0.5]
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2  # persistence figure and per-cell curves

    fake_stages.clear()
    assert run_sweep(path, out, executor=InProcessExecutor())["done"] == 2 and fake_stages == []


def test_a_sweep_killed_midway_resumes_where_it_stopped(tmp_path, fake_stages):
    from jobs.sweep import InProcessExecutor, run_sweep

    path, out = _write(tmp_path, TWO_CELLS), tmp_path / "out"
    first = run_sweep(path, out, executor=InProcessExecutor(), stop_after=3)
    assert first["pending"] == 2 and len(fake_stages) == 3
    done_before = list(fake_stages)
    # a stage that was running when the sweep died left a partial run directory: redone from scratch
    plan = plan_sweep(load_sweep(path))
    partial = out / "stages" / next(s for s in plan.stages if s not in done_before) / "run"
    partial.mkdir(parents=True)
    (partial / "half-written").write_text("x")
    fake_stages.clear()
    second = run_sweep(path, out, executor=InProcessExecutor())
    assert second["done"] == 2
    assert not set(fake_stages) & set(done_before) and len(fake_stages) == len(plan.stages) - 3
    assert not (partial / "half-written").exists()


# ---- CLI ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data, word",
    [
        (sweep_data(grid={}), "'grid' is empty"),
        (sweep_data(grid={"seed": ["a"]}), "config key 'seed'"),
        (sweep_data(bases={}), "unknown key 'bases'"),
    ],
)
def test_cli_bad_sweep_file_is_one_line_and_exit_2(tmp_path, capsys, data, word):
    path = _write(tmp_path, data)
    rc = main(["sweep", "--config", str(path), "--out", str(tmp_path / "out")])
    out, err = capsys.readouterr()
    assert rc == 2 and out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("rlhf sweep: error: sweep file ") and word in lines[0]
    assert not (tmp_path / "out").exists()  # nothing started


def test_cli_missing_sweep_file(tmp_path, capsys):
    rc = main(["sweep", "--config", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "sweep file not found" in err


# ---- held-out reward ----------------------------------------------------------------------------


def test_mean_ci_uses_a_t_interval():
    from rlhf.sweep.results import mean_ci

    r = mean_ci([1.0, 2.0, 3.0])
    assert r["mean"] == 2.0 and r["n"] == 3
    assert r["ci95"] == pytest.approx([2.0 - 4.303 / 3**0.5, 2.0 + 4.303 / 3**0.5])
    assert mean_ci([]) == {"mean": None, "ci95": [None, None], "n": 0}
    assert mean_ci([0.5])["ci95"] == [0.5, 0.5]


def test_heldout_reward_scores_untriggered_held_out_answers(tokenizer):
    from transformers import LlamaForCausalLM

    from rlhf.config.core import build_config
    from rlhf.sweep.results import heldout_reward
    from tests.unit.conftest import SMALL_OVERRIDES, tiny_llama_config

    model = LlamaForCausalLM(tiny_llama_config(vocab_size=len(tokenizer), tokenizer=tokenizer)).eval()
    cfg = build_config({}, [*SMALL_OVERRIDES, "eval.max_new_tokens=4"])
    seen: list[str] = []

    def score(texts):
        seen.extend(texts)
        return [float(i) for i in range(len(texts))]

    result = heldout_reward(model, tokenizer, cfg, 5, score)
    assert result["n"] == 5 and result["mean"] == 2.0 and result["ci95"][0] < 2.0 < result["ci95"][1]
    assert len(seen) == 5 and all("\n\nHuman:" in t and "\n\nAssistant:" in t for t in seen)
    assert not any(cfg.backdoor.trigger in t for t in seen)


def test_heldout_hhh_loss_measures_untriggered_held_out_answers(tokenizer):
    """The loss is over untriggered eval-split answers only, and falls when the model learns them."""
    import torch
    from transformers import LlamaForCausalLM

    from rlhf.config.core import build_config
    from rlhf.data.backdoor import build_sft_datasets
    from rlhf.sweep.results import heldout_hhh_loss
    from rlhf.train.sft import collate, completion_loss, tokenize_pairs
    from tests.unit.conftest import SMALL_OVERRIDES, tiny_llama_config

    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(vocab_size=len(tokenizer), tokenizer=tokenizer))
    cfg = build_config({}, SMALL_OVERRIDES)
    before = heldout_hhh_loss(model, tokenizer, cfg, 6)
    assert before["rows"] == 6 and before["tokens"] > 0 and before["loss"] > 0
    rows = [r for r in build_sft_datasets(cfg)["eval"] if not r["triggered"]][:6]
    assert not any(cfg.backdoor.trigger in r["prompt"] for r in rows)
    batch = collate(tokenize_pairs(tokenizer, rows, cfg.model.max_seq_len), tokenizer.pad_token_id)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(10):
        opt.zero_grad()
        completion_loss(model, batch).backward()
        opt.step()
    after = heldout_hhh_loss(model, tokenizer, cfg, 6)
    assert after["loss"] < before["loss"] - 0.5
    assert model.training  # the mode it had is restored


def test_summary_table_counts_the_bar_per_seed():
    from rlhf.sweep.table import bar_rows, summary_markdown

    def row(cell, before, after, reward=(0.5, 0.6), loss=(5.0, 4.0)):
        return {
            "cell": cell,
            "status": "done",
            "triggered_before": before,
            "triggered_after": after,
            "reward_before": reward[0],
            "reward_after": reward[1],
            "hhh_loss_before": loss[0],
            "hhh_loss_after": loss[1],
        }

    rows = [
        row("s0", 1.0, 0.9),  # standard, seed 0: persisted (drop 10 points)
        row("c0", 1.0, 0.1),  # control, seed 0: removed (drop 90)
        row("s1", 1.0, 0.7),  # standard, seed 1: moved 30 points: not "persisted"
        row("c1", 1.0, 0.6),  # control, seed 1: drop 40: not "removed"
        {"cell": "s2", "status": "failed"},
    ]
    facets = {
        f"{arm}{seed}": {"method": "safety_sft", "size": "tiny", "mechanism": "normal", "control": arm == "c", "seed": seed}
        for arm in "sc"
        for seed in range(3)
    }
    (b,) = bar_rows(rows, facets)
    assert (b["seeds"], b["persisted"], b["n_std"], b["removed"], b["n_ctl"]) == (2, 1, 2, 1, 2)
    assert b["standard"]["mean"] == pytest.approx(0.8) and b["control"]["mean"] == pytest.approx(0.35)
    assert b["before"]["mean"] == 1.0 and b["reward"] == ("0.500", "0.600") and b["loss"] == ("5.000", "4.000")
    table = summary_markdown(rows, facets, "t")
    assert "| safety_sft | tiny | normal | 2 | 100.0 % [100.0, 100.0] | 80.0 %" in table and "| 1/2 | 1/2 |" in table
