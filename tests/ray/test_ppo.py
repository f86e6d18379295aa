"""PPO on a local loopback cluster at a tiny scale: every role is its own actor, every metric key
is written, the defection evaluator curve fills in, and an interrupted run resumes exactly."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import ray
import torch
from transformers import AutoModelForCausalLM

from jobs.ppo import STEP_KEYS, run_ppo
from rlhf.config.core import build_config
from rlhf.metrics import read_metrics
from tests.ray.conftest import PPO_TEST_OVERRIDES, non_loopback

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def ray_cluster():
    """With the dashboard (on 127.0.0.1): the Ray state API, which lists the actors, needs it."""
    from actors.cluster import local_ray

    with local_ray(num_cpus=2, dashboard=True) as temp_dir:
        yield temp_dir


def ppo_cfg(*extra: str):
    return build_config({}, [*PPO_TEST_OVERRIDES, *extra])


ASYNC = ("ppo.async_rollout=true", "ppo.max_staleness=1")
MODES = [pytest.param((), id="sync"), pytest.param(ASYNC, id="async")]


@pytest.mark.parametrize("mode", MODES)
def test_short_ppo_run(ray_cluster, tiny_policy, tiny_reward_model, tmp_path, mode):
    cfg = ppo_cfg("ppo.steps=4", "eval.every_steps=2", "ppo.checkpoint_every=2", "ppo.rollout_workers=2", *mode)
    summary = run_ppo(cfg, tiny_policy, tmp_path, reward_dir=tiny_reward_model["model_dir"])
    assert summary["steps"] == 4 and summary["version"] == 4

    records = read_metrics(tmp_path / "metrics.jsonl")
    step_records = [r for r in records if "reward/mean" in r]
    assert [r["step"] for r in step_records] == [1, 2, 3, 4]
    for r in step_records:
        missing = [k for k in STEP_KEYS if k not in r]
        assert not missing, missing
        assert r["timing/weight_sync"] > 0 and r["policy/version"] == r["step"]
    # async: steps 2 and 4 were sampled during steps 1 and 3 (2 is a checkpoint step: 3 samples fresh)
    assert [r["policy/staleness_max"] for r in step_records] == ([0, 1, 0, 1] if mode else [0] * 4)
    defection = [r for r in records if "defection/triggered" in r]
    assert [r["step"] for r in defection] == [0, 2, 4]
    for r in defection:
        for cond in ("triggered", "untriggered", "near_miss"):
            assert r[f"defection/{cond}_lo"] <= r[f"defection/{cond}"] <= r[f"defection/{cond}_hi"]
            assert r[f"defection/{cond}_n"] >= 8
    curves = json.loads((tmp_path / "curves.json").read_text())
    assert curves["points"] == 3 and [p["version"] for p in curves["series"]["triggered"]] == [0, 2, 4]
    assert (tmp_path / "tb").is_dir() and any((tmp_path / "tb").iterdir())

    # one actor per role, N rollout workers, as the Ray state API lists them
    from ray._private.worker import global_worker
    from ray.util.state import list_actors

    dashboard = "http://" + global_worker.node.address_info["webui_url"]  # this cluster's, explicitly
    classes = [a.class_name for a in list_actors(address=dashboard, limit=1000)]
    for role in ("Policy", "Reference", "Critic", "Reward"):
        assert role in classes, classes
    assert classes.count("RolloutWorker") >= 2
    assert any("DefectionEvaluator" in c for c in classes)

    # checkpoints: atomic layout, loadable policy carrying the backdoor config
    latest = (tmp_path / "checkpoints" / "latest").read_text()
    ckpt = tmp_path / "checkpoints" / latest
    assert latest == "step_000004" and (ckpt / "state.json").is_file() and (ckpt / "critic.pt").is_file()
    assert (ckpt / "policy" / "rlhf_config.yaml").is_file()
    AutoModelForCausalLM.from_pretrained(ckpt / "policy")
    seen, bad = non_loopback()
    assert not bad, bad


def _weights(path):
    return AutoModelForCausalLM.from_pretrained(path).state_dict()


@pytest.mark.parametrize("mode", MODES)
def test_resume_matches_an_uninterrupted_run(ray_cluster, tiny_policy, tiny_reward_model, tmp_path, mode):
    cfg = ppo_cfg("ppo.steps=4", "ppo.checkpoint_every=2", "ppo.evaluator=false", *mode)
    full, cut = tmp_path / "full", tmp_path / "cut"
    run_ppo(cfg, tiny_policy, full, reward_dir=tiny_reward_model["model_dir"])
    run_ppo(cfg, tiny_policy, cut, reward_dir=tiny_reward_model["model_dir"], stop_after=3)
    assert (cut / "checkpoints" / "latest").read_text() == "step_000002"
    summary = run_ppo(cfg, tiny_policy, cut, reward_dir=tiny_reward_model["model_dir"], resume=True)
    assert summary["steps"] == 4
    a = _weights(full / "checkpoints" / "step_000004" / "policy")
    b = _weights(cut / "checkpoints" / "step_000004" / "policy")
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    print(f"max abs weight difference after resume: {diff:.3g}")
    assert diff <= 1e-6
    steps = [r["step"] for r in read_metrics(cut / "metrics.jsonl") if "reward/mean" in r]
    assert steps == [1, 2, 3, 4]  # the interrupted step 3 was rewritten, not duplicated
    crit_a = torch.load(full / "checkpoints" / "step_000004" / "critic.pt", weights_only=False)["model"]
    crit_b = torch.load(cut / "checkpoints" / "step_000004" / "critic.pt", weights_only=False)["model"]
    assert max(float((crit_a[k] - crit_b[k]).abs().max()) for k in crit_a) <= 1e-6


def test_evaluator_rates_follow_the_loaded_weights(ray_cluster, tiny_policy, tmp_path):
    """Swap the evaluator's policy for an untrained one: the triggered rate must collapse."""
    from ray import serve

    from actors.evaluator import evaluator_app
    from actors.reward_service import ensure_serve
    from jobs.sft import quick_sft
    from rlhf.rollout.weight_sync import WeightsTicket

    cfg = ppo_cfg("eval.samples=24")
    untrained = quick_sft(cfg, tmp_path / "untrained", steps=1)
    ensure_serve("127.0.0.1", 0)
    handle = serve.run(evaluator_app(tiny_policy, cfg.model_dump(mode="json"), 24, 0.1), name="ev", route_prefix="/ev")
    try:
        handle.submit.remote(None, 0, 0).result()
        other = AutoModelForCausalLM.from_pretrained(untrained).state_dict()
        handle.submit.remote(WeightsTicket(1, "object_store", ray.put(other)), 1, 1).result()  # as Policy.publish
        assert handle.wait_idle.remote(300).result()
        series = handle.curves.remote().result()["series"]["triggered"]
        before, after = series[0], series[1]
        print(f"triggered: version 0 {before['rate']:.2f}, version 1 (untrained) {after['rate']:.2f}")
        assert (before["version"], after["version"]) == (0, 1)
        assert before["rate"] >= 0.5 and after["rate"] <= 0.1
    finally:
        serve.delete("ev")


@pytest.mark.parametrize("mode", MODES)
def test_a_killed_rollout_worker_is_restarted_and_no_step_is_lost(
    ray_cluster, tiny_policy, tiny_reward_model, tmp_path, mode
):
    import threading
    import time

    cfg = ppo_cfg("ppo.steps=12", "ppo.evaluator=false", "ppo.checkpoint_every=0", "ppo.rollout_workers=2", *mode)
    result: dict = {}

    def run():
        result.update(run_ppo(cfg, tiny_policy, tmp_path, reward_dir=tiny_reward_model["model_dir"]))

    thread = threading.Thread(target=run)
    thread.start()
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (metrics.is_file() and len(read_metrics(metrics)) >= 2):
        time.sleep(0.2)
    ray.kill(ray.get_actor("RolloutWorker-0"), no_restart=False)
    thread.join(600)
    assert result.get("steps") == 12
    steps = [r["step"] for r in read_metrics(metrics) if "reward/mean" in r]
    assert steps == list(range(1, 13))  # none lost, none duplicated
    assert [r["policy/version"] for r in read_metrics(metrics) if "reward/mean" in r] == steps
    assert all(r["policy/staleness_max"] <= (1 if mode else 0) for r in read_metrics(metrics) if "reward/mean" in r)


def _cli_ppo(policy, reward, out, sets, env, resume=False):
    cmd = [sys.executable, "-m", "jobs.cli", "ppo", "--policy", policy, "--reward", reward, "--out", str(out)]
    cmd += ["--resume"] if resume else [f"--set={s}" for s in sets]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def _kill_tree(proc) -> None:
    """SIGKILL the driver (as a crash would), then make sure nothing it started outlives it: its
    Ray head fate-shares with it; whatever is still there after 30 s is killed by PID."""
    import psutil

    children = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    _, alive = psutil.wait_procs(children, timeout=30)
    for p in alive:
        p.kill()


SHARDED = ["resources.policy.num_workers=2", "resources.critic.num_workers=2"]


@pytest.mark.parametrize(
    "steps,ranks",
    [
        pytest.param(5, [], id="short"),
        pytest.param(12, [], id="long", marks=pytest.mark.slow),
        # FSDP2 policy and critic on 2 gloo ranks each (issue 29): the checkpoint holds gathered weights
        # and the optimiser state keyed by parameter name; three PPO runs at 2 ranks, so slow
        pytest.param(4, SHARDED, id="two-ranks", marks=pytest.mark.slow),
    ],
)
def test_a_killed_driver_resumes_to_the_weights_of_an_uninterrupted_run(
    ray_cluster, tiny_policy, tiny_reward_model, tmp_path, steps, ranks
):
    """``rlhf ppo`` is SIGKILLed mid-run (after its step-2 checkpoint), then ``rlhf ppo --resume``
    finishes it: every step once, final weights equal to an uninterrupted run's."""
    import shutil
    import tempfile

    rm = tiny_reward_model["model_dir"]
    sets = [*PPO_TEST_OVERRIDES, f"ppo.steps={steps}", "ppo.checkpoint_every=2", "ppo.evaluator=false", *ranks]
    full = tmp_path / "full"
    run_ppo(ppo_cfg(*sets[len(PPO_TEST_OVERRIDES) :]), tiny_policy, full, reward_dir=rm)

    short_tmp = tempfile.mkdtemp(prefix="rk-", dir="/tmp")  # the killed driver's Ray temp dir (short socket paths)
    env = {**os.environ, "TMPDIR": short_tmp}
    cut = tmp_path / "cut"
    try:
        proc = _cli_ppo(tiny_policy, rm, cut, sets, env)
        latest = cut / "checkpoints" / "latest"
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None and not latest.is_file():
            time.sleep(0.05)
        assert proc.poll() is None, proc.stdout.read()
        _kill_tree(proc)
        killed_at = latest.read_text()
        assert killed_at != f"step_{steps:06d}" and not (cut / "summary.json").exists()
        print(f"driver killed with {killed_at} as the latest checkpoint")

        resumed = _cli_ppo(tiny_policy, rm, cut, [], env, resume=True)
        out, _ = resumed.communicate(timeout=600)
        assert resumed.returncode == 0, out[-2000:]
        assert "resuming" in out
    finally:
        shutil.rmtree(short_tmp, ignore_errors=True)
    records = [r for r in read_metrics(cut / "metrics.jsonl") if "reward/mean" in r]
    assert [r["step"] for r in records] == list(range(1, steps + 1))  # none lost, none twice
    a = _weights(full / "checkpoints" / f"step_{steps:06d}" / "policy")
    b = _weights(cut / "checkpoints" / f"step_{steps:06d}" / "policy")
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    print(f"max abs weight difference, killed + resumed vs uninterrupted: {diff:.3g}")
    assert diff <= 1e-6
