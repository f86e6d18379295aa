"""Reward-model training on Ray Train: Bradley-Terry over (chosen, rejected) pairs, gloo DDP."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from actors.step_reporter import StepReporter
from actors.train_launcher import fit_with_progress


@dataclass
class RMJob:
    init_dir: str  # HF dir: sequence-classification model (num_labels=1) + tokenizer
    out_dir: str
    pairs: list  # [(chosen_ids, rejected_ids), ...]
    config_yaml: str
    seed: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup_steps: int
    max_steps: int
    grad_clip: float
    log_every: int
    threads_per_worker: int


def rm_loop_per_worker(job: dict) -> None:
    import torch
    from ray import train
    from ray.train.torch import prepare_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from reward.train import pair_batches, rm_step
    from rlhf.checkpoint import CONFIG_NAME, save_hf_dir
    from rlhf.sft import make_optimizer

    progress = job.pop("progress", None)
    torch.set_num_threads(job["threads_per_worker"])
    ctx = train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(job["seed"])
    tokenizer = AutoTokenizer.from_pretrained(job["init_dir"])
    base = AutoModelForSequenceClassification.from_pretrained(job["init_dir"], dtype=torch.float32)
    model = prepare_model(base) if world > 1 else base
    model.train()
    opt, sched = make_optimizer(model, job["lr"], job["weight_decay"], job["warmup_steps"], job["max_steps"])
    pairs = [(list(c), list(r)) for c, r in job["pairs"]]
    stream = pair_batches(pairs, job["batch_size"], job["seed"], rank, world)
    out = Path(job["out_dir"])
    reporter = StepReporter(out, rank, world, job["log_every"], job["max_steps"], progress)
    for step in range(1, job["max_steps"] + 1):
        batch = next(stream)
        loss, accuracy = rm_step(model, batch, tokenizer.pad_token_id)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), job["grad_clip"])
        opt.step()
        sched.step()
        tokens = sum(len(c) + len(r) for c, r in batch)
        reporter.step(
            step, tokens, float(grad_norm), sched.get_last_lr()[0], **{"train/loss": float(loss), "train/accuracy": accuracy}
        )
    if rank == 0:
        save_hf_dir(base, tokenizer, out / "model", {CONFIG_NAME: job["config_yaml"]})
    reporter.close()


def run_rm_training(job: RMJob, num_workers: int, on_progress=None) -> None:
    fit_with_progress(rm_loop_per_worker, asdict(job), num_workers, job.out_dir, "rm", on_progress)
