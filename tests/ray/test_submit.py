"""``rlhf cluster up/down``, ``rlhf submit`` and ``rlhf jobs``: a real local head (``ray start``
on 127.0.0.1, token auth), a small ``rlhf sft`` submitted as a Ray job, and the head's sockets
watched while it runs."""

import os
import sys
import threading
import time

import psutil
import pytest

from tests.ray.conftest import non_loopback, sockets

pytestmark = pytest.mark.ray

SFT_ARGS = [
    "--set",
    "data.n_train=300",
    "--set",
    "data.n_eval=50",
    "--set",
    "model.vocab_size=600",
    "--set",
    "sft.max_steps=3",
    "--set",
    "sft.num_workers=1",
    "--set",
    "sft.log_every=1",
    "--set",
    "sft.checkpoint_every=0",
]


def run_cli(argv: list[str]) -> int:
    """Parse like ``rlhf`` and call the handler, letting RlhfError through (the CLI would print it
    and exit 2)."""
    from jobs import cli

    args = cli.build_parser().parse_args(argv)
    return cli.COMMANDS[args.command](args)


@pytest.fixture
def rlhf_home(tmp_path, monkeypatch):
    home = tmp_path / "rlhf-home"
    monkeypatch.setenv("RLHF_HOME", str(home))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    return home


@pytest.fixture
def local_head(rlhf_home):
    """A head started through ``rlhf cluster up``; stopped by PID (never ``ray stop``) whatever happens."""
    from actors import local_head

    try:
        assert run_cli(["cluster", "up", "--num-cpus", "2"]) == 0
        state = local_head.read_state()
        assert state is not None
        yield state
    finally:
        state = local_head.read_state()
        if state is not None:
            local_head.stop_head()


class SocketWatch(threading.Thread):
    """Samples every socket of the head's processes (daemons, workers, job driver) until stopped."""

    def __init__(self, state):
        super().__init__(daemon=True)
        self.state, self.done = state, threading.Event()
        self.samples = self.max_listeners = 0
        self.bad: list[str] = []
        self.saw_driver = False

    def run(self):
        from actors.local_head import head_processes

        while not self.done.is_set():
            procs = head_processes(self.state)
            listeners = [c for _, c in sockets(procs) if c.status == psutil.CONN_LISTEN]
            _, bad = non_loopback(procs)
            self.bad.extend(bad)
            self.max_listeners = max(self.max_listeners, len(listeners))
            for proc in procs:
                try:
                    if "sft" in proc.cmdline() and "rlhf" in " ".join(proc.cmdline()):
                        self.saw_driver = True
                except psutil.Error:
                    continue
            self.samples += 1
            self.done.wait(1.0)


def test_submit_sft_to_local_head(local_head, tmp_path, capsys, monkeypatch):
    from actors.local_head import head_processes, state_path
    from jobs.submit import ClusterUnreachable, JobNotFound

    state = local_head
    assert state.dashboard_url.startswith("http://127.0.0.1:") and state.gcs_address.startswith("127.0.0.1:")
    assert state_path().exists() and state.auth_mode == "token"
    pids = {p.pid for p in head_processes(state)}
    assert len(pids) >= 5, "expected GCS, raylet, dashboard, agents"
    capsys.readouterr()

    watch = SocketWatch(state)
    watch.start()
    t0 = time.monotonic()
    try:
        rc = run_cli(["submit", "--", "sft", "--out", str(tmp_path / "sft"), *SFT_ARGS])
    finally:
        watch.done.set()
        watch.join(timeout=30)
    wall = time.monotonic() - t0
    out = capsys.readouterr().out
    job_id = out.splitlines()[0].strip()
    assert rc == 0, out[-3000:]
    assert job_id.startswith("raysubmit_"), out[:500]
    assert "final loss" in out and "[sft]" in out, out[-3000:]
    assert (tmp_path / "sft" / "model" / "config.json").exists()
    print(f"\nsft job submitted, followed and SUCCEEDED in {wall:.1f} s", file=sys.stderr)

    # every listener and peer of the head's processes stayed on loopback, the driver's included
    assert watch.samples >= 3 and watch.max_listeners >= 5, (watch.samples, watch.max_listeners)
    assert watch.saw_driver, "the job driver (rlhf sft) was never among the head's processes"
    assert not watch.bad, sorted(set(watch.bad))

    assert run_cli(["jobs", "status", job_id]) == 0
    assert capsys.readouterr().out.strip() == f"{job_id}: SUCCEEDED (Job finished successfully.)"
    assert run_cli(["jobs", "logs", job_id]) == 0
    logs = capsys.readouterr().out
    assert "final loss" in logs and "[sft] 3/3 steps" in logs, logs[-2000:]
    assert run_cli(["jobs", "list"]) == 0
    listed = [line for line in capsys.readouterr().out.splitlines() if line.startswith(job_id)]
    assert len(listed) == 1 and "SUCCEEDED" in listed[0] and "rlhf sft" in listed[0], listed
    assert run_cli(["jobs", "stop", job_id]) == 0
    assert capsys.readouterr().out.strip() == f"{job_id}: already SUCCEEDED"

    # a job that fails: exit 1 from submit, the job FAILED
    assert run_cli(["submit", "--", "config", "--set", "no.such.key=1"]) == 1
    failed = capsys.readouterr()
    assert "no.such" in failed.out and "FAILED" in failed.err, failed

    with pytest.raises(JobNotFound) as err:
        run_cli(["jobs", "status", "raysubmit_doesnotexist"])
    assert "\n" not in str(err.value) and "raysubmit_doesnotexist" in str(err.value)

    assert run_cli(["cluster", "status"]) == 0
    assert f"{state.dashboard_url} answers (Ray 2.60.0)" in capsys.readouterr().out

    # the same head seen as a remote cluster (no state file): the token comes from the environment
    with monkeypatch.context() as m:
        m.setenv("RLHF_HOME", str(tmp_path / "elsewhere"))
        with pytest.raises(ClusterUnreachable, match="refused the token") as err:
            run_cli(["jobs", "list", "--address", state.dashboard_url])
        assert "\n" not in str(err.value)
        m.setenv("RAY_AUTH_TOKEN", "0" * 64)
        with pytest.raises(ClusterUnreachable, match="refused the token"):
            run_cli(["jobs", "list", "--address", state.dashboard_url])
        m.delenv("RAY_AUTH_TOKEN")
        m.setenv("RAY_AUTH_TOKEN_PATH", state.token_file)
        m.setenv("RAY_ADDRESS", state.dashboard_url)
        assert run_cli(["jobs", "status", job_id]) == 0
        assert "SUCCEEDED" in capsys.readouterr().out

    # down: every process of this head is gone, its files and the state file too
    procs = head_processes(state)
    assert run_cli(["cluster", "down"]) == 0
    gone, alive = psutil.wait_procs(procs, timeout=10)
    assert not alive, [p.pid for p in alive]
    assert not head_processes(state)
    assert not any(psutil.pid_exists(pid) and _same_head(pid, state) for pid in pids)
    assert not state_path().exists() and not os.path.exists(state.root)


def _same_head(pid: int, state) -> bool:
    try:
        return any(state.temp_dir in part for part in psutil.Process(pid).cmdline())
    except psutil.Error:
        return False


# -- without a cluster (no Ray started) --------------------------------------------------------


def test_no_cluster_is_one_line_error(rlhf_home):
    from jobs.submit import NoCluster

    with pytest.raises(NoCluster) as err:
        run_cli(["jobs", "list"])
    assert "\n" not in str(err.value) and "rlhf cluster up" in str(err.value)
    with pytest.raises(NoCluster):
        run_cli(["submit", "--no-wait", "--", "config"])


def test_unreachable_and_bad_addresses(rlhf_home):
    from actors.local_head import free_port
    from jobs.submit import ClusterUnreachable, SubmitError

    with pytest.raises(ClusterUnreachable) as err:
        run_cli(["jobs", "list", "--address", f"http://127.0.0.1:{free_port()}"])
    assert "\n" not in str(err.value)
    with pytest.raises(SubmitError, match="http"):
        run_cli(["jobs", "list", "--address", "127.0.0.1:6379"])


def test_submit_argument_errors(rlhf_home, tmp_path):
    from jobs.submit import RuntimeEnvError, SubmitError

    with pytest.raises(SubmitError, match="nothing to run"):
        run_cli(["submit", "--address", "http://127.0.0.1:9"])
    with pytest.raises(SubmitError, match="runs on your machine"):
        run_cli(["submit", "--address", "http://127.0.0.1:9", "--", "cluster", "up"])
    with pytest.raises(RuntimeEnvError, match="missing.yaml"):
        run_cli(["submit", "--runtime-env", str(tmp_path / "missing.yaml"), "--", "config"])
    bad = tmp_path / "env.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(RuntimeEnvError, match="mapping"):
        run_cli(["submit", "--runtime-env", str(bad), "--", "config"])
    bad.write_text("env_vars: {a: [\n")
    with pytest.raises(RuntimeEnvError, match="not valid YAML") as err:
        run_cli(["submit", "--runtime-env", str(bad), "--", "config"])
    assert "\n" not in str(err.value)


def test_runtime_env_and_entrypoint(tmp_path, monkeypatch):
    from jobs import submit

    (tmp_path / "env.json").write_text('{"env_vars": {"A": "1"}, "excludes": ["data/"]}')
    wd = tmp_path / "proj"
    (wd / ".venv" / "lib").mkdir(parents=True)
    (wd / ".venv" / "lib" / "big.bin").write_bytes(b"x" * 4096)
    (wd / "data").mkdir()
    (wd / "data" / "d.bin").write_bytes(b"x" * 4096)
    (wd / "main.py").write_text("print(1)\n")
    env = submit.build_runtime_env(str(tmp_path / "env.json"), str(wd))
    assert env["env_vars"] == {"A": "1"} and env["working_dir"] == str(wd.resolve())
    assert ".venv/" in env["excludes"] and ".git/" in env["excludes"] and "data/" in env["excludes"]
    assert submit.working_dir_size(wd, env["excludes"], 10**9) == len("print(1)\n")
    monkeypatch.setattr(submit, "WORKING_DIR_LIMIT_MB", 0)
    with pytest.raises(submit.RuntimeEnvError, match="MiB"):
        submit.build_runtime_env(None, str(wd))
    assert submit.entrypoint(["sft", "--out", "a b", "--set", "x=it's"]) == "rlhf sft --out 'a b' --set 'x=it'\"'\"'s'"
    assert submit.entrypoint(["config"], "/w d") == "cd '/w d' && rlhf config"
