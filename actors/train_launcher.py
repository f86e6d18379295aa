"""Run a per-worker training loop on Ray Train (gloo DDP on CPU, NCCL on GPUs) with progress streamed
to the driver.

Shared by backdoor SFT and reward-model training: the loop receives its plain-data payload plus
``progress``, a Ray queue it may ``put`` records into (``{"done": True}`` ends the stream);
the driver calls ``on_progress(record)`` for each.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

import ray
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from ray.util.queue import Queue


@dataclass(kw_only=True)
class TrainJob:
    """What every training worker needs; plain data so it travels through Ray. ``device`` is the
    requested one (``auto|cpu|cuda``) until ``fit_with_progress`` resolves it against the cluster."""

    init_dir: str  # HF dir with the initial model and tokenizer
    out_dir: str  # run directory (shared storage when multi-node)
    config_yaml: str  # resolved config, saved beside every checkpoint
    seed: int
    batch_size: int
    micro_batch_size: int | None = None  # rows per forward/backward (gradient accumulation); None: the whole batch
    lr: float  # lr, betas, weight_decay, warmup_steps, grad_clip: rlhf.models.optim.OptimConfig's
    betas: tuple[float, float]
    weight_decay: float
    warmup_steps: int
    max_steps: int
    grad_clip: float
    log_every: int
    threads_per_worker: int
    device: str = "cpu"
    precision: str = "fp32"
    gradient_checkpointing: bool = False
    gpu_wait_s: float = 600.0  # device=cuda, no GPU yet: how long to wait for the autoscaler (actors.gpu_wait)
    strategy: str = "ddp"  # ddp | fsdp: the config section's ``strategy``
    tensorboard: bool = True  # rank 0 writes out_dir/tb beside metrics.jsonl (logging.backends)


def placement_fields(cfg) -> dict:
    """The ``TrainJob`` placement keys of a config's ``resources`` section."""
    r = cfg.resources
    return {
        "device": r.device,
        "precision": r.precision,
        "gradient_checkpointing": r.gradient_checkpointing,
        "gpu_wait_s": r.gpu_wait_s,
    }


def optimisation_fields(section) -> dict:
    """The ``TrainJob`` hyper-parameters a config section (``sft``, ``rm``) carries."""
    names = {f.name for f in fields(TrainJob)}
    return {name: getattr(section, name) for name in names if hasattr(section, name)}


def setup_worker(job: dict, model_class, model_dir: str | None = None):
    """Per-worker start: threads, seed, tokenizer, model on the worker's device (DDP-wrapped when
    world > 1), optimiser and schedule (``rlhf.models.optim``, over ``job["max_steps"]``). The model loads
    from ``model_dir`` (a checkpoint to resume) or ``job["init_dir"]``.

    Returns ``(rank, world, tokenizer, base_model, model, optimizer, scheduler, placement)``; the
    loop moves its batches with ``placement.to`` and runs forwards under ``placement.autocast()``.
    """
    import torch
    from ray import train
    from ray.train.torch import prepare_model
    from transformers import AutoTokenizer

    from rlhf.malloc import tune_malloc
    from rlhf.models.device import Placement
    from rlhf.models.optim import OptimConfig, make_optimizer, make_scheduler

    tune_malloc()
    torch.set_num_threads(job["threads_per_worker"])
    ctx = train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(job["seed"])
    placement = Placement(job["device"], job["precision"], job["gradient_checkpointing"])
    tokenizer = AutoTokenizer.from_pretrained(job["init_dir"])
    base = model_class.from_pretrained(model_dir or job["init_dir"], dtype=torch.float32)
    if placement.device == "cuda":
        base = bind_worker_gpu(base)
    if placement.gradient_checkpointing and hasattr(base, "gradient_checkpointing_enable"):
        base.gradient_checkpointing_enable()
    if job.get("lora"):  # LoRA adapters (rlhf.models.lora): only they train, saves merge them
        from rlhf.models.lora import apply_lora

        if placement.gradient_checkpointing:
            base.enable_input_require_grads()
        base = apply_lora(base, job["lora"])
    if job.get("strategy") == "fsdp" and world > 1:  # FSDP2: each worker owns 1/N (rlhf.models.fsdp)
        from rlhf.models.fsdp import shard_model

        model = base = shard_model(base, placement.precision, device=placement.device)
    else:
        model = prepare_model(base) if world > 1 else base
    model.train()
    optim = OptimConfig(**{name: job[name] for name in OptimConfig.model_fields})
    opt = make_optimizer(model, optim)
    sched = make_scheduler(opt, optim, job["max_steps"])
    return rank, world, tokenizer, base, model, opt, sched, placement


def save_trained(rank: int, base, tokenizer, path, extra_files=None, write_extra=None) -> None:
    """Save the trained model as an atomic HF dir from rank 0; every rank calls it (a sharded model's
    weights are gathered bucket by bucket first, a collective)."""
    from rlhf.models.checkpoint import save_hf_dir
    from rlhf.models.fsdp import gathered_state, is_sharded

    state = gathered_state(base) if is_sharded(base) else None
    if rank == 0:
        save_hf_dir(base, tokenizer, path, extra_files, write_extra, state_dict=state)


def optimizer_state(model, opt) -> dict:
    """What a checkpoint keeps of the optimiser; every rank calls it (sharded: gathered to rank 0)."""
    from rlhf.models.fsdp import full_optimizer_state, is_sharded

    return full_optimizer_state(model, opt) if is_sharded(model) else opt.state_dict()


def load_optimizer_state(model, opt, state: dict) -> None:
    from rlhf.models.fsdp import is_sharded, load_full_optimizer_state

    if is_sharded(model):
        load_full_optimizer_state(model, opt, state)
    else:
        opt.load_state_dict(state)


def bind_worker_gpu(base):
    """Move ``base`` to the GPU Ray Train gave this worker and make that GPU the current CUDA device,
    so the placement's plain ``cuda`` (what autocast and ``Placement.to`` use) means it."""
    import torch
    from ray.train.torch import get_device

    device = get_device()
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    return base.to(device)


def train_scaling(num_workers: int, use_gpu: bool) -> ScalingConfig:
    """One CPU per worker; with GPUs, one GPU each too (Ray Train then sets up NCCL and the device)."""
    per_worker = {"CPU": 1, "GPU": 1} if use_gpu else {"CPU": 1}
    return ScalingConfig(num_workers=num_workers, use_gpu=use_gpu, resources_per_worker=per_worker)


def fit_with_progress(
    loop: Callable[[dict], None],
    payload: dict,
    num_workers: int,
    out_dir: str | Path,
    name: str,
    on_progress: Callable[[dict], None] | None = None,
) -> None:
    from actors.cluster import is_local_loopback
    from actors.gpu_wait import cluster_gpus
    from actors.loopback_torch import LoopbackTorchConfig
    from rlhf.models.device import resolve_device

    requested = payload.get("device", "cpu")
    gpus = cluster_gpus(requested, payload.get("gpu_wait_s", 600.0), loopback=is_local_loopback())
    device = resolve_device(requested, gpus)
    use_gpu = device == "cuda"
    if is_local_loopback():  # our own cluster cannot grow (a joined one may autoscale): a misfit would wait forever
        from rlhf.config.fit import check_fits, train_stage_demand

        check_fits([train_stage_demand(name, num_workers, device)], ray.cluster_resources())
    queue = Queue(actor_options={"num_cpus": 0})
    trainer = TorchTrainer(
        loop,
        train_loop_config={**payload, "device": device, "progress": queue},
        # On our own loopback cluster the process group must not listen on every interface.
        torch_config=LoopbackTorchConfig(backend="nccl" if use_gpu else "gloo") if is_local_loopback() else None,
        scaling_config=train_scaling(num_workers, use_gpu),
        run_config=RunConfig(storage_path=str(Path(out_dir, "ray_train").resolve()), name=name),
    )
    stop = threading.Event()

    def pump() -> None:
        while not stop.is_set():
            try:
                record = queue.get(timeout=0.5)
            except Exception:  # noqa: BLE001 - queue.Empty, or the queue actor going away at the end
                continue
            if record.get("done"):
                return
            if on_progress is not None:
                on_progress(record)

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    try:
        trainer.fit()
    finally:
        stop.set()
        thread.join(timeout=5)
        ray.kill(queue.actor)
