"""A long-lived local Ray head (``ray start --head``) for ``rlhf cluster up`` and job submission.

``local_ray`` starts a private cluster for one process; this module starts one that outlives the
command, on loopback, with the same four settings (docs/ray-on-one-machine.md) plus the
dashboard (the Jobs API lives there), every port picked free on 127.0.0.1:

    ray start --head --node-ip-address=127.0.0.1 --port=P --dashboard-host=127.0.0.1
        --dashboard-port=D --include-dashboard=true --temp-dir=ROOT/t --disable-usage-stats ...

run with ``loopback_environment(ROOT/home)`` (``HOME`` holds the local-provider bootstrap config).

Authentication: token mode, one fresh token per head (``RAY_AUTH_MODE=token`` and
``RAY_AUTH_TOKEN`` in the head's environment, so its job drivers join with it; a copy in
``ROOT/home/.ray/auth_token``, mode 0600). Clients send ``Authorization: Bearer <token>``:
``rlhf`` does it by itself from the state file; Ray's own CLI needs ``RAY_AUTH_MODE=token
RAY_AUTH_TOKEN_PATH=<token_file>``.

State: ``$RLHF_HOME/local-head.json`` (default ``~/.rlhf``) records the dashboard URL, GCS
address, temp dir, home and token file. ``stop_head`` never calls ``ray stop`` (that stops every
Ray process of the machine): it signals only the processes whose command line names this head's
temp dir or GCS address, and their descendants (workers, job drivers).

Every process of the head inherits ``RLHF_LOOPBACK_ONLY=1`` (``LOOPBACK_ENV``): a job driver
(``rlhf sft`` ...) that joins through ``$RAY_ADDRESS`` must take it as "this cluster is a
loopback one" (Serve's gRPC server, Ray Train's TCPStore), as ``local_ray`` clusters do.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import psutil

from actors.cluster import LOOPBACK, loopback_environment
from rlhf.errors import RlhfError

STATE_NAME = "local-head.json"
AUTH_MODE = "token"
READY_TIMEOUT_S = 120.0  # after ray start returns: the Jobs API answers


class LocalHeadError(RlhfError):
    """The local head could not be started, found or stopped."""


class NoLocalHead(LocalHeadError):
    """No state file, or the head it describes is not running."""


@dataclass
class HeadState:
    dashboard_url: str
    gcs_address: str
    root: str  # everything of this head: ROOT/t (Ray temp dir), ROOT/home, ROOT/ray-start.log
    temp_dir: str
    home: str
    auth_mode: str
    token_file: str
    num_cpus: int | None
    started_at: float
    ray_version: str

    def token(self) -> str | None:
        if self.auth_mode != AUTH_MODE:
            return None
        try:
            return Path(self.token_file).read_text().strip() or None
        except OSError:
            return None

    def auth_headers(self) -> dict[str, str]:
        token = self.token()
        return {"Authorization": f"Bearer {token}"} if token else {}

    def client_environment(self) -> dict[str, str]:
        """For Ray's own CLI (``ray job ...``) against this head."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": self.token_file} if self.token() else {}


def rlhf_home() -> Path:
    return Path(os.environ.get("RLHF_HOME") or "~/.rlhf").expanduser()


def state_path(home: Path | None = None) -> Path:
    return (home or rlhf_home()) / STATE_NAME


def read_state(home: Path | None = None) -> HeadState | None:
    """The recorded head, or None when there is no state file. A damaged file is an error."""
    path = state_path(home)
    try:
        raw = json.loads(path.read_text())
        return HeadState(**{f.name: raw[f.name] for f in fields(HeadState)})
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LocalHeadError(f"unreadable local head state {path}: {exc} (delete it if no head runs)") from exc


def _write_state(state: HeadState, home: Path | None = None) -> Path:
    path = state_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(asdict(state), f, indent=2)
    tmp.replace(path)
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def _ray_command() -> list[str]:
    """The ``ray`` CLI of this interpreter's environment (never another one on PATH)."""
    script = Path(sys.executable).parent / "ray"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from ray.scripts.scripts import main; sys.exit(main())"]


def head_environment(home: Path, token: str) -> dict[str, str]:
    """os.environ + the loopback settings + token auth; this interpreter's bin dir first on PATH,
    so a job's ``rlhf`` entrypoint is this project's console script."""
    env = {key: value for key, value in os.environ.items() if key not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
    env.update(loopback_environment(home))
    env.update({"RAY_AUTH_MODE": AUTH_MODE, "RAY_AUTH_TOKEN": token})
    # ray start gives the dashboard 60 s by default; on a loaded 2-CPU machine that was not enough
    env.setdefault("RAY_DASHBOARD_STARTUP_TIMEOUT_S", "180")
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def is_running(state: HeadState) -> bool:
    return any(_name(p) == "gcs_server" for p in _roots(state))


def start_head(num_cpus: int | None = None, home: Path | None = None, timeout: float = READY_TIMEOUT_S) -> HeadState:
    """Start a head, wait until its Jobs API answers, record it; raise LocalHeadError if one runs."""
    existing = read_state(home)
    if existing is not None:
        if is_running(existing):
            raise LocalHeadError(
                f"a local Ray head is already running at {existing.dashboard_url} (rlhf cluster down stops it)"
            )
        _forget(existing, home)  # stale: its processes are gone
    if num_cpus is not None and num_cpus < 1:
        raise LocalHeadError("--num-cpus must be at least 1")

    import ray

    # Ray's unix sockets must fit in 107 bytes: a short root under the system temp dir.
    root = Path(tempfile.mkdtemp(prefix="rlhf-head-"))
    temp_dir, ray_home = root / "t", root / "home"
    token = secrets.token_hex(32)
    env = head_environment(ray_home, token)
    token_file = ray_home / ".ray" / "auth_token"
    token_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)

    # Every port picked free: Ray's defaults (6379, 8265, 52365, 10001) may be taken by another head.
    gcs_port, dashboard_port, agent_port, client_port = (free_port() for _ in range(4))
    cmd = [
        *_ray_command(),
        "start",
        "--head",
        f"--node-ip-address={LOOPBACK}",
        f"--port={gcs_port}",
        "--include-dashboard=true",
        f"--dashboard-host={LOOPBACK}",
        f"--dashboard-port={dashboard_port}",
        f"--dashboard-agent-listen-port={agent_port}",
        f"--ray-client-server-port={client_port}",  # on the node IP, 127.0.0.1
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]
    if num_cpus is not None:
        cmd.append(f"--num-cpus={num_cpus}")
    state = HeadState(
        dashboard_url=f"http://{LOOPBACK}:{dashboard_port}",
        gcs_address=f"{LOOPBACK}:{gcs_port}",
        root=str(root),
        temp_dir=str(temp_dir),
        home=str(ray_home),
        auth_mode=AUTH_MODE,
        token_file=str(token_file),
        num_cpus=num_cpus,
        started_at=time.time(),
        ray_version=ray.__version__,
    )
    log = root / "ray-start.log"
    # Output to a file, not a pipe: the daemons ray start leaves behind could hold a pipe open.
    with open(log, "wb") as out:
        rc = subprocess.call(
            cmd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    if rc != 0:
        _kill_tree(head_processes(state), grace=5.0)
        kept = state_path(home).with_name("local-head-start.log")
        kept.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            shutil.copyfile(log, kept)
        reason = _failure_line(log)
        shutil.rmtree(root, ignore_errors=True)
        raise LocalHeadError(f"ray start failed (exit {rc}): {reason} (full output: {kept})")
    _write_state(state, home)
    try:
        wait_until_ready(state, timeout)
    except BaseException:
        stop_head(home)
        raise
    return state


def _failure_line(path: Path) -> str:
    """The last error-looking line of ray start's output, else its last line."""
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no output"
    errors = [ln for ln in lines if any(w in ln for w in ("Error", "error", "Exception", "failed", "Failed"))]
    return (errors or lines or ["no output"])[-1][:300]


def wait_until_ready(state: HeadState, timeout: float = READY_TIMEOUT_S) -> None:
    """Poll the Jobs API (with the token) until it answers 200."""
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(f"{state.dashboard_url}/api/jobs/", headers=state.auth_headers())
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(request, timeout=5) as r:
                if r.status == 200:
                    return
                last = f"HTTP {r.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            last = str(getattr(exc, "reason", exc))
        if not is_running(state):
            raise LocalHeadError(f"the local Ray head exited during start-up; see {state.temp_dir}/session_latest/logs")
        time.sleep(0.5)
    raise LocalHeadError(f"the Ray dashboard at {state.dashboard_url} did not answer within {timeout:.0f} s ({last})")


# -- this head's processes ---------------------------------------------------------------------


def _name(proc: psutil.Process) -> str:
    try:
        return proc.name()
    except psutil.Error:
        return "?"


def _protected() -> set[int]:
    """This process and its ancestors are never signalled."""
    me = psutil.Process(os.getpid())
    return {me.pid, *(p.pid for p in me.parents())}


def _roots(state: HeadState) -> list[psutil.Process]:
    """Processes whose command line names this head's temp dir (GCS, raylet, dashboard, agents,
    monitor, log monitor, workers; the temp dir is unique to the head: ``mkdtemp``) or its GCS
    address (the Ray Client server names only ``--address=127.0.0.1:<gcs port>``)."""
    markers = (str(state.temp_dir), f"={state.gcs_address}")
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            cmdline = proc.info["cmdline"] or []
        except psutil.Error:
            continue
        if any(marker in part for part in cmdline for marker in markers):
            found.append(proc)
    return found


def head_processes(state: HeadState) -> list[psutil.Process]:
    """Every live process of this head: its daemons, workers, job drivers and their children."""
    procs: dict[int, psutil.Process] = {}
    for root in _roots(state):
        procs[root.pid] = root
        with contextlib.suppress(psutil.Error):
            for child in root.children(recursive=True):
                procs[child.pid] = child
    protected = _protected()
    return [p for pid, p in procs.items() if pid not in protected]


def _kill_tree(procs: list[psutil.Process], grace: float) -> None:
    """SIGTERM in ``ray stop``'s order (raylet, the rest, GCS), SIGKILL what outlives ``grace``."""
    order = {"raylet": 0, "gcs_server": 2}
    buckets: dict[int, list[psutil.Process]] = {0: [], 1: [], 2: []}
    for proc in procs:
        buckets[order.get(_name(proc), 1)].append(proc)
    for rank in (0, 1, 2):
        bucket = buckets[rank]
        for proc in bucket:
            with contextlib.suppress(psutil.Error):
                proc.terminate()
        _, alive = psutil.wait_procs(bucket, timeout=grace / 3)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(alive, timeout=2)


def stop_head(home: Path | None = None, grace: float = 15.0, keep_files: bool = False) -> int:
    """Stop the recorded head; returns how many of its processes were running. NoLocalHead if none
    is recorded. Removes the state file and (unless keep_files) the head's temp dir and home."""
    state = read_state(home)
    if state is None:
        raise NoLocalHead(f"no local Ray head is recorded in {state_path(home)} (rlhf cluster up starts one)")
    procs = head_processes(state)
    _kill_tree(procs, grace)
    # workers the raylet forked while we were signalling
    for _ in range(3):
        late = head_processes(state)
        if not late:
            break
        _kill_tree(late, grace=3.0)
    _forget(state, home, keep_files=keep_files)
    return len(procs)


def _forget(state: HeadState, home: Path | None, keep_files: bool = False) -> None:
    with contextlib.suppress(FileNotFoundError):
        state_path(home).unlink()
    if not keep_files:
        shutil.rmtree(state.root, ignore_errors=True)
