"""Backdoor SFT on Ray Train: a ``TorchTrainer`` of DDP workers (gloo on CPUs, NCCL on GPUs) over ``rlhf.train.sft``.

Rank 0 writes metrics, periodic and final checkpoints (atomic HF dirs) into the run directory
and streams progress to the driver through a Ray queue, so the driver can draw one progress
bar instead of interleaved worker logs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from actors.step_reporter import StepReporter
from actors.train_launcher import (
    TrainJob,
    fit_with_progress,
    load_optimizer_state,
    optimizer_state,
    save_trained,
    setup_worker,
)

TRAINER_STATE = "trainer_state.pt"  # beside each periodic checkpoint: what a resume needs


@dataclass
class SFTJob(TrainJob):
    examples: list  # [(ids, prompt_len), ...]
    checkpoint_every: int
    resume_dir: str | None = None  # a periodic checkpoint to continue from (HF dir + TRAINER_STATE)
    lora: dict | None = None  # rlhf.models.lora.lora_settings: train LoRA adapters (a resume reloads them over init_dir)


def train_loop_per_worker(job: dict) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from rlhf.models.checkpoint import CONFIG_NAME
    from rlhf.train.sft import Example, batches, collate, sft_step

    progress = job.pop("progress", None)
    resume = job.get("resume_dir")
    lora = job.get("lora")
    rank, world, tokenizer, base, model, opt, sched, placement = setup_worker(
        job, AutoModelForCausalLM, None if lora else resume
    )
    examples = [Example(list(ids), int(n)) for ids, n in job["examples"]]
    stream = batches(examples, job["batch_size"], job["seed"], rank, world)
    start = 0
    if resume:  # optimiser, schedule and RNG as they were; the data stream skips what was seen
        state = torch.load(Path(resume) / TRAINER_STATE, weights_only=False)
        if lora:
            from rlhf.models.lora import load_adapter_state

            load_adapter_state(base, state["adapter"])
        load_optimizer_state(model, opt, state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        start = int(state["step"])
        for _ in range(start):
            next(stream)
    out = Path(job["out_dir"])
    reporter = StepReporter(
        out, rank, world, job["log_every"], job["max_steps"], progress, job.get("tensorboard", True)
    )
    extra = {CONFIG_NAME: job["config_yaml"]}

    def trainer_state(step: int):  # every rank calls it: a sharded optimiser state is gathered
        state = {
            "step": step,
            "optimizer": optimizer_state(model, opt),
            "scheduler": sched.state_dict(),
            "torch_rng": torch.get_rng_state(),
        }
        if lora:
            from rlhf.models.lora import adapter_state

            state["adapter"] = adapter_state(base)
        return lambda tmp: torch.save(state, Path(tmp) / TRAINER_STATE)

    for step in range(start + 1, job["max_steps"] + 1):
        batch = collate(next(stream), tokenizer.pad_token_id)
        micro = job.get("micro_batch_size")
        loss, grad_norm = sft_step(
            model, batch, opt, sched, job["grad_clip"], micro, job["batch_size"], placement.autocast
        )
        reporter.step(
            step,
            int(batch["attention_mask"].sum()),
            grad_norm,
            sched.get_last_lr()[0],
            **{"train/loss": loss},
        )
        if job["checkpoint_every"] and step % job["checkpoint_every"] == 0 and step < job["max_steps"]:
            save_trained(rank, base, tokenizer, out / "checkpoints" / f"step-{step:06d}", extra, trainer_state(step))
    save_trained(rank, base, tokenizer, out / "model", extra)
    reporter.close()


def run_sft(job: SFTJob, num_workers: int, on_progress=None) -> None:
    """Fit on ``num_workers`` workers (one GPU each when the job's device is CUDA); ``on_progress(record)``
    is called in the driver."""
    fit_with_progress(train_loop_per_worker, asdict(job), num_workers, job.out_dir, "sft", on_progress)
