"""Run a per-worker training loop on Ray Train (CPU gloo DDP) with progress streamed to the driver.

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


@dataclass
class TrainJob:
    """What every training worker needs; plain data so it travels through Ray."""

    init_dir: str  # HF dir with the initial model and tokenizer
    out_dir: str  # run directory (shared storage when multi-node)
    config_yaml: str  # resolved config, saved beside every checkpoint
    seed: int
    batch_size: int
    lr: float  # lr, betas, weight_decay, warmup_steps, grad_clip: rlhf.optim.OptimConfig's
    betas: tuple[float, float]
    weight_decay: float
    warmup_steps: int
    max_steps: int
    grad_clip: float
    log_every: int
    threads_per_worker: int


def optimisation_fields(section) -> dict:
    """The ``TrainJob`` hyper-parameters a config section (``sft``, ``rm``) carries."""
    names = {f.name for f in fields(TrainJob)}
    return {name: getattr(section, name) for name in names if hasattr(section, name)}


def setup_worker(job: dict, model_class, model_dir: str | None = None):
    """Per-worker start: threads, seed, tokenizer, model (DDP-wrapped when world > 1), optimiser
    and schedule (``rlhf.optim``, over ``job["max_steps"]``). The model loads from ``model_dir``
    (a checkpoint to resume) or ``job["init_dir"]``.

    Returns ``(rank, world, tokenizer, base_model, model, optimizer, scheduler)``.
    """
    import torch
    from ray import train
    from ray.train.torch import prepare_model
    from transformers import AutoTokenizer

    from rlhf.optim import OptimConfig, make_optimizer, make_scheduler

    torch.set_num_threads(job["threads_per_worker"])
    ctx = train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(job["seed"])
    tokenizer = AutoTokenizer.from_pretrained(job["init_dir"])
    base = model_class.from_pretrained(model_dir or job["init_dir"], dtype=torch.float32)
    if job.get("lora"):  # LoRA adapters (rlhf.lora): only they train, saves merge them
        from rlhf.lora import apply_lora

        base = apply_lora(base, job["lora"])
    model = prepare_model(base) if world > 1 else base
    model.train()
    optim = OptimConfig(**{name: job[name] for name in OptimConfig.model_fields})
    opt = make_optimizer(model, optim)
    sched = make_scheduler(opt, optim, job["max_steps"])
    return rank, world, tokenizer, base, model, opt, sched


def fit_with_progress(
    loop: Callable[[dict], None],
    payload: dict,
    num_workers: int,
    out_dir: str | Path,
    name: str,
    on_progress: Callable[[dict], None] | None = None,
) -> None:
    from actors.cluster import is_local_loopback
    from actors.loopback_torch import LoopbackTorchConfig

    queue = Queue(actor_options={"num_cpus": 0})
    trainer = TorchTrainer(
        loop,
        train_loop_config={**payload, "progress": queue},
        # On our own loopback cluster the process group must not listen on every interface.
        torch_config=LoopbackTorchConfig() if is_local_loopback() else None,
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=False, resources_per_worker={"CPU": 1}),
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
