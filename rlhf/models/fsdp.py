"""Sharded training with PyTorch's FSDP2 (``torch.distributed.fsdp.fully_shard``): pure torch, no Ray.

A trained model is sharded per decoder layer, then at the root (the embeddings, the final norm and
the tied head), over a 1-D mesh of every rank of the default process group (gloo on CPUs, NCCL on
GPUs). Each rank then OWNS 1/N of every parameter, of its gradient and of the AdamW state; the
full parameters of one layer exist only while that layer runs (gathered before its forward and
again before its backward, freed after). The step on N ranks is the unsharded step on the
concatenated batch, up to the order of the floating-point sums (the gradient reduce-scatter averages
over ranks, as DDP's all-reduce does).

- ``shard_model``: wrap a causal LM (or any HF model with ``_no_split_modules``); ``precision=bf16``
  computes with bf16 parameters while the optimiser keeps fp32 master weights and the gradients are
  reduced in fp32 (``MixedPrecisionPolicy``); ``offload=True`` keeps the shards, gradients and
  optimiser state in host memory (``CPUOffloadPolicy``).
- ``owned_bytes``: the bytes of parameters, gradients and optimiser state this rank holds, counted
  from its local shards.
- ``iter_full_state``: the full state dict streamed per bucket (every rank calls it; one bucket of
  gathered tensors exists at a time), for a weight publish or an HF save.
- ``save_sharded`` / ``load_sharded`` / ``load_latest_sharded``: ``torch.distributed.checkpoint``
  directories (model and optimiser shards plus each rank's small state), written to a temporary
  sibling and renamed; a manifest of sizes and SHA-256 digests finds a corrupt or partial shard.
- ``run_ranks``: spawn N local processes joined over gloo on 127.0.0.1 (tests, bench scripts).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from rlhf.errors import CheckpointError, ConfigError

MANIFEST = "manifest.json"
BUCKET_BYTES = 64 << 20


def world() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks to shard one by one: modules whose class the model names in
    ``_no_split_modules`` (``LlamaDecoderLayer``...); found through LoRA wrappers, and after
    sharding (which subclasses each unit's class)."""
    names: set[str] = set()
    for module in model.modules():
        names |= set(getattr(module, "_no_split_modules", None) or ())
    return [m for m in model.modules() if any(c.__name__ in names for c in type(m).__mro__)]


def mixed_precision(precision: str):
    """``fp32``: None (parameters and reductions in fp32). ``bf16``: bf16 parameters for the
    forward and backward, fp32 gradient reduction; the sharded parameters the optimiser updates
    (the master weights) stay fp32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if precision == "fp32":
        return None
    if precision == "bf16":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    raise ConfigError(f"resources.precision must be fp32 or bf16, got {precision!r}")


def shard_model(model: nn.Module, precision: str = "fp32", offload: bool = False, device: str = "cpu") -> nn.Module:
    """Shard ``model`` in place over every rank of the default process group: each decoder layer is
    its own FSDP2 unit, then the root. The model must already be on ``device`` (``cpu`` or a CUDA
    device); returns it (now an ``FSDPModule``)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, fully_shard

    if not dist.is_initialized():
        raise ConfigError("sharded training needs a process group (torch.distributed.init_process_group)")
    mesh = init_device_mesh(torch.device(device).type, (dist.get_world_size(),))
    kwargs: dict[str, Any] = {"mesh": mesh}
    mp = mixed_precision(precision)
    if mp is not None:
        kwargs["mp_policy"] = mp
    if offload:
        kwargs["offload_policy"] = CPUOffloadPolicy(pin_memory=torch.device(device).type == "cuda")
    for layer in decoder_layers(model):
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)
    return model


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a (possibly) distributed tensor."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def _nbytes(tensor: torch.Tensor) -> int:
    t = local(tensor)
    return t.numel() * t.element_size()


def owned_bytes(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, int]:
    """Bytes of the parameters, gradients and optimiser state this rank holds, counted from the
    local shards (each tensor once: tied weights are one parameter)."""
    params = {id(p): p for p in model.parameters()}.values()
    out = {
        "params": sum(_nbytes(p) for p in params),
        "grads": sum(_nbytes(p.grad) for p in params if p.grad is not None),
        "optimizer": 0,
    }
    if optimizer is not None:
        seen: set[int] = set()
        for state in optimizer.state.values():
            for value in state.values():
                if isinstance(value, torch.Tensor) and id(value) not in seen:
                    seen.add(id(value))
                    out["optimizer"] += _nbytes(value)
    out["total"] = out["params"] + out["grads"] + out["optimizer"]
    return out


def clip_grad_norm(model: nn.Module, max_norm: float | None) -> float | None:
    """Clip the global gradient norm of a sharded or plain model to ``max_norm`` (None or <= 0: no
    clipping); returns the norm before clipping, the same on every rank."""
    if max_norm is None or max_norm <= 0:
        return None
    norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], max_norm)
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return float(norm)


def iter_full_state(model: nn.Module, bucket_bytes: int = BUCKET_BYTES) -> Iterator[dict[str, torch.Tensor]]:
    """The model's full state dict in buckets of about ``bucket_bytes``, as fp32 CPU tensors. Every
    rank must iterate it to the end (each gather is a collective); one bucket's gathered tensors
    are alive at a time, so a caller that forwards each bucket and drops it never holds the full
    model twice. A tied tensor appears under each of its names, gathered once."""
    bucket: dict[str, torch.Tensor] = {}
    size = 0
    gathered: dict[int, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        key = id(tensor)
        if key not in gathered:
            full = tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor.detach()
            gathered[key] = full.to("cpu", torch.float32 if full.is_floating_point() else full.dtype)
            size += gathered[key].numel() * gathered[key].element_size()
        bucket[name] = gathered[key]
        if size >= bucket_bytes:
            yield bucket
            bucket, size, gathered = {}, 0, {}
    if bucket:
        yield bucket


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _barrier() -> None:
    if world()[1] > 1:
        dist.barrier()


def save_sharded(
    model: nn.Module, optimizer: torch.optim.Optimizer, path: str | Path, extra: dict | None = None
) -> Path:
    """Write a sharded checkpoint of ``model`` and ``optimizer`` to ``path`` (every rank calls it;
    the directory must be on storage every rank sees). ``extra``: this rank's small state (step,
    scheduler, RNG), saved beside the shards. Written to a temporary sibling, a manifest added,
    then renamed into place: a crash leaves the previous checkpoint as it was."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    rank, _ = world()
    dest = Path(path)
    tmp = dest.with_name(f".{dest.name}.tmp")
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp))
    torch.save(extra or {}, tmp / f"rank-{rank}.pt")
    _barrier()
    if rank == 0:
        files = sorted(p for p in tmp.iterdir() if p.is_file())
        manifest = {p.name: {"bytes": p.stat().st_size, "sha256": _digest(p)} for p in files}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        old = dest.with_name(f".{dest.name}.old")
        if dest.exists():
            shutil.rmtree(old, ignore_errors=True)
            dest.rename(old)
        tmp.rename(dest)
        shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return dest


def shards_dir(role: str) -> str:
    """Where a sharded PPO role (``policy``, ``critic``) keeps its shards inside a PPO checkpoint directory."""
    return f"{role}_shards"


def verify_sharded(path: str | Path) -> None:
    """Raise a one-line ``CheckpointError`` unless every file the manifest names is there with its
    size and digest."""
    p = Path(path)
    try:
        manifest = json.loads((p / MANIFEST).read_text())
    except (OSError, ValueError):
        raise CheckpointError(f"sharded checkpoint {p} has no readable {MANIFEST} (incomplete write?)") from None
    for name, want in manifest.items():
        f = p / name
        if not f.is_file():
            raise CheckpointError(f"sharded checkpoint {p} is missing {name}")
        if f.stat().st_size != want["bytes"] or _digest(f) != want["sha256"]:
            raise CheckpointError(f"sharded checkpoint {p}: {name} is corrupt (size or SHA-256 differs)")


def _agree(ok: bool) -> bool:
    """True when ``ok`` holds on every rank."""
    if world()[1] == 1:
        return ok
    flag = torch.tensor([0 if ok else 1])
    dist.all_reduce(flag)
    return int(flag) == 0


def load_sharded(model: nn.Module, optimizer: torch.optim.Optimizer, path: str | Path) -> dict:
    """Load a ``save_sharded`` checkpoint into ``model`` and ``optimizer`` (every rank calls it, with
    the same world size as the save); returns this rank's ``extra``. A missing, partial or corrupt
    checkpoint is one ``CheckpointError`` line, on every rank."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    rank, _ = world()
    error = None
    try:
        verify_sharded(path)
    except CheckpointError as exc:
        error = str(exc)
    if not _agree(error is None):
        raise CheckpointError(error or f"sharded checkpoint {path} is unreadable on another rank")
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    try:
        dcp.load(state, checkpoint_id=str(path))
    except Exception as exc:  # noqa: BLE001 - any reader failure is a bad checkpoint to the user
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"cannot load sharded checkpoint {path}: {first}") from None
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    return torch.load(Path(path) / f"rank-{rank}.pt", weights_only=False)


def load_latest_sharded(
    model: nn.Module, optimizer: torch.optim.Optimizer, root: str | Path, warn: Callable[[str], None] = print
) -> tuple[Path, dict] | None:
    """Load the newest loadable checkpoint among ``root``'s ``step-*`` directories; a corrupt or
    partial one is ``warn``-ed in one line and the one before it is tried. None when none loads."""
    candidates = sorted(Path(root).glob("step-*"), reverse=True) if Path(root).is_dir() else []
    for path in candidates:
        try:
            return path, load_sharded(model, optimizer, path)
        except CheckpointError as exc:
            if world()[0] == 0:
                warn(f"{exc}; using the previous checkpoint")
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, fn: Callable, world_size: int, port: int, args: tuple, backend: str = "gloo") -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    if backend == "nccl":
        torch.cuda.set_device(rank)  # one GPU per rank
    dist.init_process_group(backend, rank=rank, world_size=world_size)
    try:
        fn(rank, world_size, *args)
    finally:
        dist.destroy_process_group()


def run_ranks(fn: Callable, world_size: int, *args, backend: str = "gloo") -> None:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` fresh processes joined by a process group
    (``gloo``; ``nccl``: rank r on GPU r) on 127.0.0.1 (a free port). ``fn`` must be importable (module level)."""
    import torch.multiprocessing as mp

    mp.spawn(_rank_main, args=(fn, world_size, free_port(), args, backend), nprocs=world_size, join=True)


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimiser state of a sharded model gathered into full tensors keyed by parameter name,
    on the CPU of rank 0 (other ranks get an empty dict); every rank calls it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a ``full_optimizer_state`` dict (every rank passes the full dict; each keeps its shard)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


def gathered_state(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """The full weights of a sharded model on rank 0 (None elsewhere), assembled bucket by bucket:
    rank 0 holds them once, beside its own shard. Every rank calls it."""
    rank, _ = world()
    full: dict[str, torch.Tensor] = {}
    for bucket in iter_full_state(model):
        if rank == 0:
            full.update(bucket)
    return full if rank == 0 else None


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)
