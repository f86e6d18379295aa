"""Reward-model training on Ray Train: Bradley-Terry over (chosen, rejected) pairs, DDP (gloo on CPUs, NCCL on GPUs)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from actors.step_reporter import StepReporter
from actors.train_launcher import TrainJob, fit_with_progress, save_trained, setup_worker


@dataclass
class RMJob(TrainJob):
    pairs: list  # [(chosen_ids, rejected_ids), ...]


def rm_loop_per_worker(job: dict) -> None:
    from transformers import AutoModelForSequenceClassification

    from reward.train import pair_batches, rm_train_step
    from rlhf.models.checkpoint import CONFIG_NAME

    progress = job.pop("progress", None)
    rank, world, tokenizer, base, model, opt, sched, placement = setup_worker(job, AutoModelForSequenceClassification)
    pairs = [(list(c), list(r)) for c, r in job["pairs"]]
    stream = pair_batches(pairs, job["batch_size"], job["seed"], rank, world)
    out = Path(job["out_dir"])
    reporter = StepReporter(
        out, rank, world, job["log_every"], job["max_steps"], progress, job.get("tensorboard", True)
    )
    for step in range(1, job["max_steps"] + 1):
        batch = next(stream)
        loss, accuracy, grad_norm = rm_train_step(
            model,
            batch,
            tokenizer.pad_token_id,
            opt,
            sched,
            job["grad_clip"],
            job.get("micro_batch_size"),
            job["batch_size"],
            placement.autocast,
        )
        tokens = sum(len(c) + len(r) for c, r in batch)
        reporter.step(
            step,
            tokens,
            grad_norm,
            sched.get_last_lr()[0],
            **{"train/loss": loss, "train/accuracy": accuracy},
        )
    save_trained(rank, base, tokenizer, out / "model", {CONFIG_NAME: job["config_yaml"]})
    reporter.close()


def run_rm_training(job: RMJob, num_workers: int, on_progress=None) -> None:
    fit_with_progress(rm_loop_per_worker, asdict(job), num_workers, job.out_dir, "rm", on_progress)
