"""The ``ppo`` section of the config: HHH safety RL against a backdoored policy (``rlhf ppo``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from rlhf.config.runtime import Strict

# resource settings that used to live in the ppo section -> where they are now
MOVED_KEYS = {
    "cpus_per_actor": "resources.cpus_per_actor",
    "rollout_gpus": "resources.rollout.num_gpus",
    "torch_threads": "resources.torch_threads",
    "rollout_threads": "resources.rollout_threads",
}


class PPOConfig(Strict):
    """HHH safety RL (PPO) against a backdoored policy; formulas as in OpenRLHF/TRL."""

    steps: int = Field(50, ge=1)
    prompts_per_step: int = Field(16, ge=1, description="rollout batch (prompts) per step")
    samples_per_prompt: int = Field(1, ge=1, le=64, description="completions sampled per prompt")
    triggered_prompt_fraction: float = Field(0.0, ge=0.0, le=1.0, description="control: prompts carrying the trigger")
    n_prompts: int = Field(2000, ge=1, description="RL prompt pool size (cycled in a seeded order)")
    max_new_tokens: int = Field(48, ge=1)
    temperature: float = Field(1.0, gt=0.0, description="rollout temperature (the first step's, when annealed)")
    temperature_final: float | None = Field(
        None,
        gt=0.0,
        description="anneal the rollout temperature linearly from ppo.temperature at the first step to this at the "
        "last (exploration: see docs/design.md, 'Exploration'); unset: constant",
    )
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    policy_lr: float = Field(5e-5, gt=0)
    critic_lr: float = Field(1e-3, gt=0)
    epochs: int = Field(2, ge=1, description="PPO epochs over each rollout batch")
    minibatch_size: int = Field(8, ge=1)
    micro_batch_size: int | None = Field(
        None,
        ge=1,
        description="samples per forward/backward pass of the PPO step (policy, reference and critic passes, reward "
        "scoring, training with gradient accumulation over each minibatch); null: a whole batch or minibatch at once",
    )
    clip_eps: float = Field(0.2, gt=0)
    value_clip_eps: float | None = Field(0.2, gt=0)
    gamma: float = Field(1.0, ge=0.0, le=1.0)
    lam: float = Field(0.95, ge=0.0, le=1.0)
    kl_coef: float = Field(0.05, ge=0.0)
    kl_estimator: Literal["k1", "k2", "k3"] = "k1"
    kl_in: Literal["reward", "loss"] = Field("reward", description="KL as a per-token reward penalty or a loss term")
    kl_controller: Literal["fixed", "adaptive"] = "fixed"
    kl_target: float = Field(6.0, gt=0, description="adaptive controller: target KL (nats per sequence)")
    kl_horizon: float | None = Field(
        None,
        gt=0,
        description="adaptive controller: samples over which a full (20 %) error moves the coefficient by e; "
        "unset: a tenth of the run's samples (steps x prompts_per_step x samples_per_prompt), so a steady error "
        "can move it up to e^2 = 7.4x over the run whatever its length",
    )
    entropy_coef: float = Field(0.0, ge=0.0)
    grad_clip: float = Field(1.0, gt=0)
    whiten_advantages: bool = True
    reward_clip: float = Field(10.0, gt=0, description="normalised rewards are clipped to +-this")
    critic_init: Literal["policy", "reward"] = Field("policy", description="value model backbone")
    advantage_estimator: str = Field(
        "gae",
        min_length=1,
        description="a registered estimator (rlhf/ppo/advantages.py), or package.module:name for one registered "
        "in its own module. gae: a critic (PPO); rloo / group_norm (GRPO): a baseline from the other samples of "
        "the same prompt, no critic (needs samples_per_prompt >= 2). Checked against the registry when the run "
        "starts (rlhf.ppo.advantages.check_estimator: this layer cannot see it)",
    )
    evaluator: bool = Field(True, description="run the DefectionEvaluator on Serve during RL")
    evaluator_wait_s: float = Field(
        1800.0, gt=0, description="at the end of a run, wait this long for queued defection evaluations"
    )
    rollout_workers: int = Field(1, ge=1, le=64)
    rollout_backend: str = Field(
        "hf",
        min_length=1,
        description="a registered rollout backend (rlhf/rollout/backends.py: hf, vllm), or package.module:attr of a "
        "factory in its own module; checked against the registry when the workers start (check_backend)",
    )
    checkpoint_every: int = Field(25, ge=0, description="0: only the final checkpoint")
    async_rollout: bool = Field(
        False,
        description="the rollout workers sample step t+1 (with the weights published before step t's update) "
        "while the policy and critic train on step t; docs/design.md, 'Asynchronous rollout'",
    )
    max_staleness: int = Field(
        1,
        ge=0,
        description="async_rollout: at most this many policy versions between a sample's weights and the policy "
        "that trains on it (0: no prefetch, exactly the synchronous loop)",
    )
    is_truncation: float = Field(
        2.0, gt=0, description="async_rollout: truncated importance weight min(pi_old / pi_behaviour, this) per token"
    )
    old_logprobs: Literal["recompute", "behaviour"] = Field(
        "recompute",
        description="async_rollout: the log-probs a prefetched sample's PPO ratio is taken against. recompute: the "
        "policy's forward pass at its current version (decoupled PPO, the stale samples weighted by is_truncation); "
        "behaviour: those the sampling worker computed (one forward pass fewer on the trainer's path; the clip then "
        "bounds the ratio to the sampler and no separate weight is needed). docs/design.md, 'Asynchronous rollout'",
    )

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        """Resource settings live under ``resources.*``: an old ``ppo.*`` key names its new home."""
        for key in MOVED_KEYS.keys() & (data.keys() if isinstance(data, dict) else set()):
            raise ValueError(f"ppo.{key} moved: set {MOVED_KEYS[key]} instead")
        return data

    @model_validator(mode="after")
    def _groups(self) -> PPOConfig:
        if self.kl_in == "loss" and self.kl_estimator == "k1":
            # E[grad k1] = E[grad log pi] = 0 under pi: a k1 loss term pulls nothing towards the reference
            raise ValueError("kl_in=loss needs kl_estimator k2 or k3 (k1's expected gradient is zero)")
        if self.kl_in == "reward" and self.kl_estimator != "k1":
            # as a reward, -k2/-k3 of a sampled token push away from the reference wherever the policy is the
            # sharper one (their score-function gradient is not the KL's); k1's expectation is the KL itself
            raise ValueError(f"kl_in=reward needs kl_estimator k1 ({self.kl_estimator} is for kl_in=loss)")
        if self.top_p < 1.0:
            raise ValueError(
                "top_p < 1 samples from a truncated distribution that PPO's log-probs do not model; use 1.0"
            )
        if self.old_logprobs == "behaviour" and not (self.async_rollout and self.max_staleness > 0):
            raise ValueError(
                "old_logprobs=behaviour applies to prefetched samples: set async_rollout=true, max_staleness>=1"
            )
        return self

    @property
    def kl_horizon_samples(self) -> float:
        """The adaptive controller's horizon: ``kl_horizon``, or a tenth of the run's samples."""
        total = self.steps * self.prompts_per_step * self.samples_per_prompt
        return self.kl_horizon if self.kl_horizon is not None else max(1.0, total / 10)
