"""PPO run checkpoints: written atomically (each actor writes its part into a hidden
temporary directory, then one rename publishes it), checked before a resume (a damaged newest
checkpoint is reported in one line and skipped for the previous good one), and the driver's
own state (step, weight version, KL controller, RNG states, evaluator points).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import zipfile
from pathlib import Path
from typing import Any

import torch

from jobs.progress import log
from rlhf.errors import CheckpointError
from rlhf.metrics import read_metrics
from rlhf.models.fsdp import shards_dir, verify_sharded

CKPT_DIR = "checkpoints"
ROLE_FILES = {"policy": "policy_optim.pt", "critic": "critic.pt"}  # a one-rank role's optimiser (and critic) file


def checkpoint_problem(path: Path) -> str | None:
    """Why ``path`` cannot be resumed from, or None when it looks complete."""
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
        int(state["step"]), int(state["version"]), state["kl_controller"], state["python_rng"], state["torch_rng"]
    except FileNotFoundError:
        return "no state.json"
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return "state.json is corrupt"
    roles = ("policy", "critic") if state.get("critic", True) else ("policy",)
    parts = [ROLE_FILES[r] for r in roles if not (path / shards_dir(r)).is_dir()]
    for part in (*parts, "policy/config.json"):
        if not (path / part).is_file() or (path / part).stat().st_size == 0:
            return f"{part} is missing or empty"
    for part in parts:
        problem = torch_file_problem(path / part)
        if problem:
            return f"{part} {problem}"
    for role in roles:
        problem = sharded_problem(path / shards_dir(role))
        if problem:
            return problem
    return weights_problem(path / "policy", "policy/")


def sharded_problem(path: Path) -> str | None:
    """What is wrong with a sharded role's checkpoint (``rlhf.models.fsdp.save_sharded``), or None (also
    when the role was not sharded)."""
    if not path.is_dir():
        return None
    try:
        verify_sharded(path)
    except CheckpointError as exc:
        return str(exc)
    return None


def torch_file_problem(path: Path) -> str | None:
    """What is wrong with a ``torch.save`` file (a zip: its CRCs are checked), or None."""
    try:
        with zipfile.ZipFile(path) as zf:
            if zf.testzip() is not None:
                return "is corrupt"
    except (zipfile.BadZipFile, OSError):
        return "is truncated or corrupt"
    return None


def weights_problem(model_dir: Path, label: str = "") -> str | None:
    """What is wrong with the safetensors weights of an HF dir, or None."""
    shards = sorted(model_dir.glob("*.safetensors"))
    if not shards:
        return f"{label.rstrip('/') or 'model'} weights are missing"
    for shard in shards:
        if not _safetensors_complete(shard):
            return f"{label}{shard.name} is truncated or corrupt"
    return None


def _safetensors_complete(path: Path) -> bool:
    """The header parses and every tensor's bytes lie inside the file."""
    try:
        with open(path, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        return path.stat().st_size >= 8 + n + end
    except (OSError, ValueError, KeyError, TypeError):
        return False


def latest_checkpoint(run: Path) -> Path | None:
    """The newest complete checkpoint. A damaged newer one is reported (one line) and skipped;
    it is left in place for inspection."""
    root = run / CKPT_DIR
    candidates = sorted((p for p in root.glob("step_*") if p.is_dir()), reverse=True) if root.is_dir() else []
    for path in candidates:
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        log(f"[ppo] checkpoint {path} is unusable ({problem}); trying an older one")
    return None


def save_checkpoint(run: Path, step: int, policy, critic, state: dict[str, Any], keep: int = 2, get=None) -> Path:
    """Each actor writes its part into a temporary dir, then one rename publishes it. ``get``
    resolves the actors' calls (``ray.get``, or ``actors.local.local_get`` in one process)."""
    if get is None:
        from actors.cluster import ray_get as get
    root = run / CKPT_DIR
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:06d}"
    tmp = root / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    get([r.save.remote(str(tmp)) for r in (policy, critic) if r is not None])  # no critic: rloo, group_norm
    (tmp / "state.json").write_text(json.dumps(state, indent=1), encoding="utf-8")
    final = root / name
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    pointer_tmp = root / ".latest.tmp"
    pointer_tmp.write_text(name, encoding="utf-8")
    os.replace(pointer_tmp, root / "latest")
    for old in sorted(p for p in root.glob("step_*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def truncate_metrics(path: Path, step: int) -> None:
    """Drop records after ``step`` (a resumed run rewrites them)."""
    if path.is_file():
        kept = [r for r in read_metrics(path) if r.get("step", 0) <= step]
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
        os.replace(tmp, path)


def tuple_state(obj):
    return tuple(tuple_state(x) for x in obj) if isinstance(obj, list) else obj


def driver_state(step: int, version: int, kl_ctl, eval_points: list[dict], critic: bool = True) -> dict[str, Any]:
    return {
        "step": step,
        "critic": critic,  # False: a critic-free run (no critic.pt)
        "version": version,
        "data_position": step,  # prompts_for_step(pool, step) is a pure function of the step
        "kl_controller": kl_ctl.state_dict(),
        "python_rng": random.getstate(),
        "torch_rng": torch.get_rng_state().tolist(),
        "eval_points": eval_points,
    }
