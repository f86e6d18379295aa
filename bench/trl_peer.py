"""TRL's GRPOTrainer as the peer of ``bench/ppo_vs_trl.py``: the same tiny policy, prompts, batch,
lengths, sampling and reward as our PPO, with the optimiser work per rollout batch matched (2 passes
x 2 minibatches: ``num_iterations=2``, ``steps_per_generation=2``) and throughput measured between
rollout batches. TRL is a bench-only dependency (``pip install -e .[bench]``), imported only here.
"""

from __future__ import annotations

import time
from pathlib import Path


def trl_grpo(cfg, policy: Path, rm: Path, out: Path) -> dict:
    """TRL's GRPOTrainer on the same model, prompts, batch, lengths and reward."""
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOTrainer

    from actors.ppo_actors import Reward
    from actors.role_options import RewardOptions
    from rlhf.models.device import placement_for
    from rlhf.models.modeling import load_model_dir
    from rlhf.ppo.prompts import prompts_for_step, rl_prompts

    p = cfg.ppo
    per_step = p.prompts_per_step * p.samples_per_prompt
    minibatch = per_step // 2
    optimizer_steps_per_rollout = 2 * 2  # num_iterations x steps_per_generation
    pool = rl_prompts(cfg)
    prompts = [pr for s in range(1, p.steps + 1) for pr, _ in prompts_for_step(pool, s, p.prompts_per_step)]
    place = placement_for(cfg.resources)
    opts = RewardOptions(
        role="reward", model_dir=str(rm), placement=place, threads=torch.get_num_threads(), reward_clip=p.reward_clip
    )
    reward = Reward(opts)
    model, tokenizer = load_model_dir(policy)  # fp32 weights: TRL's Trainer moves it and autocasts (bf16=True)
    generated = {"tokens": 0, "samples": 0}

    def hhh_reward(prompts, completions, completion_ids=None, **_):
        generated["samples"] += len(completions)
        generated["tokens"] += sum(len(c) for c in completion_ids) if completion_ids is not None else 0
        return reward.score([a + b for a, b in zip(prompts, completions, strict=True)])

    marks: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step % optimizer_steps_per_rollout == 0:
                marks.append((time.perf_counter(), generated["samples"], generated["tokens"]))

    args = grpo_config(cfg, out, optimizer_steps_per_rollout, minibatch)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=hhh_reward,
        args=args,
        train_dataset=Dataset.from_dict({"prompt": prompts}),
        processing_class=tokenizer,
        callbacks=[Clock()],
    )
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    return throughput(marks, wall)


def grpo_config(cfg, out: Path, optimizer_steps_per_rollout: int, minibatch: int):
    """TRL's GRPOConfig matching our PPO settings (batch, lengths, sampling, KL, clip, lr)."""
    from trl import GRPOConfig

    p = cfg.ppo
    on_gpu = cfg.resources.device == "cuda"
    return GRPOConfig(
        output_dir=str(out),
        use_cpu=not on_gpu,
        bf16=on_gpu and cfg.resources.precision == "bf16",
        fp16=False,
        seed=cfg.seed,
        max_steps=p.steps * optimizer_steps_per_rollout,
        learning_rate=p.policy_lr,
        max_grad_norm=p.grad_clip,
        per_device_train_batch_size=minibatch,
        gradient_accumulation_steps=1,
        steps_per_generation=2,
        num_iterations=2,
        num_generations=p.samples_per_prompt,
        max_completion_length=p.max_new_tokens,
        temperature=p.temperature,
        top_p=1.0,
        top_k=0,
        beta=p.kl_coef,
        epsilon=p.clip_eps,
        shuffle_dataset=False,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


def throughput(marks: list, wall: float) -> dict:
    """Steps/s, samples/s and tokens/s between the first mark (after the warm-up rollout batch)
    and the last."""
    (t_a, s_a, k_a), (t_b, s_b, k_b) = marks[0], marks[-1]  # after the warm-up rollout batch .. the end
    rounds = len(marks) - 1
    step_s = (t_b - t_a) / rounds
    return {
        "steps_measured": rounds,
        "step_s": step_s,
        "steps_per_s": 1 / step_s,
        "samples_per_s": (s_b - s_a) / (t_b - t_a),
        "tokens_per_s": (k_b - k_a) / (t_b - t_a),
        "samples_per_step": (s_b - s_a) / rounds,
        "wall_s": wall,
    }
