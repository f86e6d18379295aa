"""``rlhf submit``, ``rlhf jobs ...`` and ``rlhf cluster ...``: run the CLI as Ray jobs.

A job's entrypoint is ``rlhf <args>`` (shell-quoted) and runs on the cluster, through Ray's Jobs
API (``ray.job_submission.JobSubmissionClient``, the dashboard's HTTP port, 8265 on KubeRay).

Address: ``--address URL``, else ``$RAY_ADDRESS`` when it is an http(s) URL, else the local head
that ``rlhf cluster up`` recorded (actors/local_head.py). Token: the local head's own token
(from its state file), else ``$RAY_AUTH_TOKEN`` or the file ``$RAY_AUTH_TOKEN_PATH``, sent as
``Authorization: Bearer <token>``; with none of these Ray's own lookup applies
(``RAY_AUTH_MODE=token`` + ``~/.ray/auth_token``).

On the local head the project is installed in the same environment: nothing is uploaded and the
job runs in the directory ``rlhf submit`` was called from (relative paths mean the same as for
``rlhf sft``). ``--working-dir DIR`` uploads DIR (without .venv, .git, runs/...) instead.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from actors.job_client import TokenRefused, call, open_client, server_ray_version, working_dir_size
from rlhf.errors import RlhfError

WORKING_DIR_LIMIT_MB = 100  # Ray's own limit is 512 MiB zipped; beyond ~100 MiB uploads crawl
DEFAULT_EXCLUDES = [
    ".venv/",
    "venv/",
    ".git/",
    "runs/",
    "__pycache__/",
    "*.egg-info/",
    ".pytest_cache/",
    ".ruff_cache/",
]
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
NOT_SUBMITTABLE = {"submit", "jobs", "cluster"}


class SubmitError(RlhfError):
    """A job request that could not be made."""


class NoCluster(SubmitError):
    """No address given and no local head recorded."""


class ClusterUnreachable(SubmitError):
    """Nothing answers at the address, or it refused the token."""


class JobNotFound(SubmitError):
    """No job with that id on the cluster."""


class RuntimeEnvError(SubmitError):
    """An unreadable or malformed --runtime-env file, or a --working-dir that is too large."""


# -- address, token, client --------------------------------------------------------------------


def _local_state():
    from actors.local_head import read_state

    return read_state()


def resolve_address(address: str | None) -> tuple[str, Any]:
    """(dashboard URL, the local head's state when the URL is that head's, else None)."""
    state = _local_state()
    if address is None:
        env = os.environ.get("RAY_ADDRESS", "")
        if env.startswith(("http://", "https://")):
            address = env
        elif state is not None:
            return state.dashboard_url, state
        else:
            raise NoCluster(
                "no Ray cluster: pass --address http://HOST:8265, set RAY_ADDRESS to the dashboard URL, "
                "or start a local head with `rlhf cluster up`"
            )
    if not address.startswith(("http://", "https://")):
        raise SubmitError(
            f"--address must be the Ray dashboard's http(s) URL, e.g. http://127.0.0.1:8265, not {address!r}"
        )
    address = address.rstrip("/")
    local = state if state is not None and state.dashboard_url == address else None
    return address, local


def auth_headers(local) -> dict[str, str]:
    if local is not None:
        return local.auth_headers()
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if not token and path:
        try:
            token = Path(path).expanduser().read_text().strip()
        except OSError as exc:
            raise SubmitError(f"cannot read RAY_AUTH_TOKEN_PATH {path}: {exc.strerror or exc}") from exc
    return {"Authorization": f"Bearer {token}"} if token else {}


def connect(address: str | None):
    """(JobSubmissionClient, URL, local head state or None); ClusterUnreachable if nobody answers."""
    url, local = resolve_address(address)
    try:
        client = open_client(url, auth_headers(local))
    except TokenRefused as exc:
        raise ClusterUnreachable(
            f"{url} refused the token: set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to the cluster's token ({_first_line(exc)})"
        ) from exc
    except (ConnectionError, OSError, RuntimeError) as exc:
        hint = " (is the local head running? `rlhf cluster status`)" if local is not None else ""
        raise ClusterUnreachable(f"no Ray Jobs API at {url}: {_first_line(exc)}{hint}") from exc
    return client, url, local


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _job_call(fn, job_id: str, *args):
    """Call a client method about one job; a 404 becomes JobNotFound."""
    try:
        return call(fn, job_id, *args)
    except TokenRefused as exc:
        raise ClusterUnreachable(f"the cluster refused the token: {_first_line(exc)}") from exc
    except RuntimeError as exc:
        if "404" in str(exc) or "does not exist" in str(exc):
            raise JobNotFound(f"no job {job_id!r} on this cluster (rlhf jobs list shows the known ones)") from exc
        raise SubmitError(f"job {job_id}: {_first_line(exc)}") from exc
    except (ConnectionError, OSError) as exc:
        raise ClusterUnreachable(f"lost the Ray Jobs API: {_first_line(exc)}") from exc


# -- runtime env -------------------------------------------------------------------------------


def load_runtime_env(path: str | None) -> dict:
    if path is None:
        return {}
    import yaml

    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise RuntimeEnvError(f"--runtime-env {path}: {exc.strerror or exc}") from exc
    try:
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise RuntimeEnvError(
            f"--runtime-env {path}: not valid {'JSON' if p.suffix == '.json' else 'YAML'}: {_first_line(exc)}"
        ) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RuntimeEnvError(
            f"--runtime-env {path}: expected a mapping (env_vars, pip, working_dir...), got {type(data).__name__}"
        )
    return data


def build_runtime_env(runtime_env_file: str | None, working_dir: str | None) -> dict:
    env = load_runtime_env(runtime_env_file)
    if working_dir is not None:
        wd = Path(working_dir).expanduser().resolve()
        if not wd.is_dir():
            raise RuntimeEnvError(f"--working-dir {working_dir}: not a directory")
        excludes = [*DEFAULT_EXCLUDES, *[e for e in env.get("excludes", []) if e not in DEFAULT_EXCLUDES]]
        limit = WORKING_DIR_LIMIT_MB * 1024 * 1024
        size = working_dir_size(wd, excludes, limit)
        if size > limit:
            raise RuntimeEnvError(
                f"--working-dir {working_dir}: more than {WORKING_DIR_LIMIT_MB} MiB to upload; "
                "add `excludes:` to a --runtime-env file or keep data on shared storage"
            )
        env["working_dir"] = str(wd)
        env["excludes"] = excludes
    return env


# -- handlers ----------------------------------------------------------------------------------


def entrypoint(rlhf_args: list[str], cwd: str | None = None) -> str:
    command = shlex.join(["rlhf", *rlhf_args])
    return f"cd {shlex.quote(cwd)} && {command}" if cwd else command


def _strip_dashdash(args: list[str]) -> list[str]:
    return args[1:] if args and args[0] == "--" else list(args)


def cmd_submit(args) -> int:
    rlhf_args = _strip_dashdash(args.rlhf_args or [])
    if not rlhf_args:
        raise SubmitError("nothing to run: give the rlhf command after --, e.g. rlhf submit -- sft --out runs/sft")
    if rlhf_args[0] in NOT_SUBMITTABLE:
        raise SubmitError(f"`rlhf {rlhf_args[0]}` runs on your machine, not as a job")
    if getattr(args, "k8s", False):
        from jobs.k8s_job import cmd_submit_k8s

        return cmd_submit_k8s(args, rlhf_args)
    runtime_env = build_runtime_env(args.runtime_env, args.working_dir)
    client, url, local = connect(args.address)
    # The local head shares this machine and environment: run where the user is, upload nothing.
    cwd = os.getcwd() if local is not None and "working_dir" not in runtime_env else None
    try:
        job_id = client.submit_job(
            entrypoint=entrypoint(rlhf_args, cwd), runtime_env=runtime_env or None, metadata={"rlhf": rlhf_args[0]}
        )
    except (RuntimeError, ValueError) as exc:
        raise SubmitError(f"submission to {url} failed: {_first_line(exc)}") from exc
    print(job_id, flush=True)
    if args.no_wait:
        print(f"submitted to {url}; rlhf jobs logs {job_id} --follow", file=sys.stderr)
        return 0
    status = follow(client, job_id)
    info = _job_call(client.get_job_info, job_id)
    message = f": {info.message}" if info.message and status != "SUCCEEDED" else ""
    print(f"job {job_id} {status}{message}", file=sys.stderr)
    return 0 if status == "SUCCEEDED" else 1


def follow(client, job_id: str, out=None, poll_s: float = 1.0) -> str:
    """Print the job's logs as they come until it ends; returns its final status."""
    import logging

    import aiohttp

    out = out or sys.stdout
    logging.getLogger("ray.dashboard.modules.job.sdk").setLevel(logging.WARNING)  # "WebSocket closed" chatter

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    try:
        asyncio.run(tail())
    except KeyboardInterrupt:
        print(f"\nstopped following; the job goes on (rlhf jobs stop {job_id} stops it)", file=sys.stderr)
        raise
    except (TimeoutError, RuntimeError, aiohttp.ClientError):
        # the log websocket failed (proxy, dropped connection): poll the whole log instead
        printed = 0
        while True:
            status = _status_name(_job_call(client.get_job_status, job_id))
            logs = _job_call(client.get_job_logs, job_id)
            out.write(logs[printed:])
            out.flush()
            printed = len(logs)
            if status in TERMINAL:
                break
            time.sleep(poll_s)
    return wait_terminal(client, job_id)


def _status_name(status) -> str:
    return getattr(status, "value", str(status)).split(".")[-1]


def wait_terminal(client, job_id: str, timeout: float | None = None, poll_s: float = 0.5) -> str:
    """Poll until the job is SUCCEEDED, FAILED or STOPPED (or timeout: then its current status)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        status = _status_name(_job_call(client.get_job_status, job_id))
        if status in TERMINAL or (deadline is not None and time.monotonic() > deadline):
            return status
        time.sleep(poll_s)


def _when(ms: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) if ms else "-"


def cmd_jobs(args) -> int:
    client, url, _ = connect(args.address)
    what = args.jobs_command
    if what == "status":
        info = _job_call(client.get_job_info, args.job_id)
        status = _status_name(info.status)
        print(f"{args.job_id}: {status}" + (f" ({info.message})" if info.message else ""))
        return 0
    if what == "logs":
        if args.follow:
            _job_call(client.get_job_info, args.job_id)  # a clear error for an unknown id
            follow(client, args.job_id)
        else:
            sys.stdout.write(_job_call(client.get_job_logs, args.job_id))
        return 0
    if what == "stop":
        stopped = _job_call(client.stop_job, args.job_id)
        status = _status_name(_job_call(client.get_job_status, args.job_id))
        print(f"{args.job_id}: stop requested" if stopped else f"{args.job_id}: already {status}")
        return 0
    if what == "list":
        try:
            jobs = client.list_jobs()
        except (RuntimeError, ConnectionError, OSError) as exc:
            raise ClusterUnreachable(f"listing jobs at {url} failed: {_first_line(exc)}") from exc
        jobs = sorted(jobs, key=lambda j: j.start_time or 0)
        print(f"{'id':<30} {'status':<10} {'started':<19}  entrypoint")
        for job in jobs:
            ident = job.submission_id or job.job_id or "-"
            print(f"{ident:<30} {_status_name(job.status):<10} {_when(job.start_time):<19}  {job.entrypoint}")
        return 0
    raise SubmitError(f"unknown jobs command {what!r}")


def cmd_cluster(args) -> int:
    from actors import local_head

    what = args.cluster_command
    if what == "up":
        started = time.monotonic()
        state = local_head.start_head(num_cpus=args.num_cpus)
        print(f"local Ray head up in {time.monotonic() - started:.0f} s (loopback only, token auth)")
        print(f"dashboard / Jobs API: {state.dashboard_url}")
        print(f"GCS address:          {state.gcs_address}")
        print(f"token file:           {state.token_file}")
        print(f"state:                {local_head.state_path()}")
        print("submit with: rlhf submit -- sft --out runs/sft   stop with: rlhf cluster down")
        return 0
    if what == "down":
        state = local_head.read_state()
        n = local_head.stop_head()
        print(f"local Ray head at {state.dashboard_url} stopped ({n} processes)")
        return 0
    if what == "status":
        url, local = resolve_address(args.address)
        if local is not None:
            alive = local_head.is_running(local)
            print(f"local head: {local.dashboard_url} (GCS {local.gcs_address}, temp dir {local.temp_dir})")
            print(f"processes:  {len(local_head.head_processes(local)) if alive else 0} running")
            if not alive:
                print("state: recorded but not running (rlhf cluster down clears it, rlhf cluster up starts a new one)")
                return 1
        client, url, _ = connect(url)
        try:
            jobs = client.list_jobs()
        except (RuntimeError, ConnectionError, OSError) as exc:
            raise ClusterUnreachable(f"listing jobs at {url} failed: {_first_line(exc)}") from exc
        counts: dict[str, int] = {}
        for job in jobs:
            counts[_status_name(job.status)] = counts.get(_status_name(job.status), 0) + 1
        summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none"
        print(f"Jobs API:   {url} answers (Ray {server_ray_version(client) or '?'}); jobs: {summary}")
        return 0
    raise SubmitError(f"unknown cluster command {what!r}")


COMMANDS = {"submit": cmd_submit, "jobs": cmd_jobs, "cluster": cmd_cluster}
