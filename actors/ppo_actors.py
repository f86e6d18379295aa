"""PPO roles as Ray actors: thin wrappers over the pure objects of ``rlhf.ppo.models``.

``Policy``, ``Reference``, ``Critic``, ``Reward`` and N ``RolloutWorker`` actors; the driver
(``rlhf/ppo/trainer.py``) holds no model weights. Weight sync goes through one interface
(``rlhf/rollout/weight_sync.py``): ``Policy.publish(version)`` puts each version once and returns a
``WeightsTicket``; every worker (and the defection evaluator) pulls it with ``load_weights(ticket)``.

Each role is a plain class (``Policy`` ...) made an actor with ``ray.remote`` (``PolicyActor`` ...);
the plain classes also run in one process (``actors.local``), the peer that measures Ray's overhead.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import ray
import torch

from actors.role_options import CriticOptions, PolicyOptions, ReferenceOptions, RewardOptions, RolloutOptions
from actors.weight_transport import default_transport
from rlhf.config.core import PPOConfig
from rlhf.malloc import tune_malloc
from rlhf.ppo.losses import Experience
from rlhf.rollout.weight_sync import WeightsTicket, publish_buckets, pull, pull_buckets


def _threads(n: int) -> None:
    tune_malloc()
    torch.set_num_threads(n)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


class Policy:
    def __init__(self, opts: PolicyOptions):
        from rlhf.ppo.models import PolicyTrainer

        ppo = PPOConfig.model_validate(opts.ppo)
        _threads(opts.threads)
        self.trainer = PolicyTrainer(opts.model_dir, ppo, opts.seed, opts.placement, lora=opts.lora)
        self.opts = opts
        saved = Path(opts.model_dir) / "rlhf_config.yaml"  # the backdoor config travels with the policy
        self.config_yaml = saved.read_text(encoding="utf-8") if saved.is_file() else None

    def logprobs(
        self, sequences: torch.Tensor, attention_mask: torch.Tensor, temperature: float | None = None, first: int = 0
    ) -> torch.Tensor:
        return self.trainer.logprobs(sequences, attention_mask, temperature, first)

    def train(self, exp: Experience, step: int, kl_coef: float) -> dict[str, float]:
        self.trainer.kl_coef = kl_coef
        t0 = time.perf_counter()
        stats = self.trainer.train(exp, step)
        return stats | {"timing/policy_train": time.perf_counter() - t0}

    def publish(self, version: int) -> WeightsTicket:
        """Put the current weights once, bucket by bucket (``resources.weight_bucket_mb``; object store
        on Ray, the buckets themselves in one process): one bucket's copy exists here at a time."""
        buckets = self.trainer.weight_buckets(self.opts.weight_bucket_mb << 20)
        return publish_buckets(buckets, version, default_transport())

    def save(self, directory: str) -> None:
        from rlhf.models.checkpoint import CONFIG_NAME, save_hf_dir

        d = Path(directory)
        extra = {CONFIG_NAME: self.config_yaml} if self.config_yaml else None
        save_hf_dir(self.trainer.model, self.trainer.tokenizer, d / "policy", extra)
        atomic_torch_save(self.trainer.state(), d / "policy_optim.pt")

    def load(self, directory: str) -> None:
        from rlhf.models.modeling import load_model_dir

        d = Path(directory)
        model, _ = load_model_dir(d / "policy")
        state = torch.load(d / "policy_optim.pt", weights_only=False)
        self.trainer.load_state(model.state_dict(), state)


class Reference:
    def __init__(self, opts: ReferenceOptions):
        from rlhf.ppo.models import ReferenceModel

        _threads(opts.threads)
        self.model = ReferenceModel(opts.model_dir, opts.temperature, opts.placement, opts.micro_batch_size)

    def logprobs(
        self, sequences: torch.Tensor, attention_mask: torch.Tensor, temperature: float | None = None, first: int = 0
    ) -> torch.Tensor:
        return self.model.logprobs(sequences, attention_mask, temperature, first)

    def logprobs_samples(
        self, rollout: dict[str, Any], ids: dict[str, int], max_new_tokens: int, temperature: float
    ) -> list[list[float]]:
        """Log-probs of one rollout worker's answers (``RolloutWorker.generate``'s dict) on their
        generated tokens: the trainer passes the worker's pending result, so this starts when that
        chunk is done (the reference is frozen: any time after sampling gives the same values)."""
        return self.model.action_logprobs(
            rollout["prompt_ids"], rollout["completion_ids"], ids, max_new_tokens, temperature, rollout.get("stop_ids")
        )


class Critic:
    def __init__(self, opts: CriticOptions):
        """``opts.model_dir``: the value model's backbone (the policy's, or the reward model's)."""
        from rlhf.ppo.models import CriticTrainer

        ppo = PPOConfig.model_validate(opts.ppo)
        _threads(opts.threads)
        self.trainer = CriticTrainer(opts.model_dir, ppo, opts.seed, opts.placement)

    def values(self, sequences: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.trainer.values(sequences, attention_mask)

    def train(self, exp: Experience, step: int) -> dict[str, float]:
        t0 = time.perf_counter()
        stats = self.trainer.train(exp, step)
        return stats | {"timing/critic_train": time.perf_counter() - t0}

    def save(self, directory: str) -> None:
        atomic_torch_save(self.trainer.state(), Path(directory) / "critic.pt")

    def load(self, directory: str) -> None:
        self.trainer.load_state(torch.load(Path(directory) / "critic.pt", weights_only=False))


class Reward:
    """The HHH reward: an in-process reward model, or the reward service through its client."""

    def __init__(self, opts: RewardOptions):
        _threads(opts.threads)
        self.clip = opts.reward_clip
        if opts.reward_url:
            from reward.client import RewardClient

            self.client = RewardClient(opts.reward_url)
            self.client.health()
            self.scorer = None
        else:
            from reward.scorer import RewardScorer

            self.scorer = RewardScorer(
                opts.model_dir,
                forward_batch_size=opts.micro_batch_size,
                strip_scratchpad=True,
                normalize=True,
                placement=opts.placement,
            )
            self.client = None

    def score(self, texts: list[str]) -> list[float]:
        """Normalised rewards (scratchpad stripped before scoring), clipped to +-reward_clip."""
        rewards = self.client.get_rewards(texts) if self.client else self.scorer.score(texts)[0]
        return [max(-self.clip, min(self.clip, float(r))) for r in rewards]

    def score_samples(self, prompts: list[str], rollout: dict[str, Any]) -> list[float]:
        """``score`` of one rollout worker's answer (``RolloutWorker.generate``'s dict) to ``prompts``:
        the trainer passes the worker's pending result, so scoring starts when that chunk is done."""
        return self.score([p + c for p, c in zip(prompts, rollout["completions"], strict=True)])


class RolloutWorker:
    """Generates completions with the policy weights of a known version (HF ``generate`` or vLLM)."""

    def __init__(self, opts: RolloutOptions):
        from rlhf.ppo.models import completion_logprobs
        from rlhf.rollout.backends import make_backend

        _threads(opts.threads)
        self.backend = make_backend(
            opts.backend,
            model_dir=opts.model_dir,
            placement=opts.placement.as_dict(),
            batch_size=opts.batch_size,
            engine=opts.engine,
            logprobs_fn=completion_logprobs,
        )
        self.tokenizer = self.backend.tokenizer

    def token_ids(self) -> dict[str, int]:
        return {"eos": self.tokenizer.eos_token_id, "pad": self.tokenizer.pad_token_id}

    def generate(self, prompts: list[str], sampling, logprobs: bool = False) -> dict[str, Any]:
        """Completions of ``prompts``; ``logprobs`` (asynchronous rollout): also each sample's behaviour
        log-probs, computed here by the weights that sampled it, before any newer version is loaded."""
        t0 = time.perf_counter()
        out = self.backend.generate(prompts, sampling)
        result = {
            "prompt_ids": out.prompt_ids,
            "completion_ids": out.completion_ids,
            "completions": out.completions,
            "version": out.version,
        }
        if len(out.stop_ids) == len(out.completion_ids):  # the EOS each stopped at, if recorded (Rollout.stop_ids)
            result["stop_ids"] = out.stop_ids
        if logprobs:
            result["logprobs"] = self.backend.logprobs(out, sampling)
        return result | {"seconds": time.perf_counter() - t0}

    def load_weights(self, ticket: WeightsTicket) -> float:
        """Stream the ticket's buckets into the backend (``load_weight_buckets``); a backend without it
        (a third-party one) gets the whole dict."""
        t0 = time.perf_counter()
        if hasattr(self.backend, "load_weight_buckets"):
            self.backend.load_weight_buckets(pull_buckets(ticket), ticket.version)
        else:
            self.backend.load_weights(pull(ticket), ticket.version)
        return time.perf_counter() - t0

    def version(self) -> int:
        return self.backend.version


PolicyActor = ray.remote(Policy)
ReferenceActor = ray.remote(Reference)
CriticActor = ray.remote(Critic)
RewardActor = ray.remote(Reward)
RolloutWorkerActor = ray.remote(RolloutWorker)
