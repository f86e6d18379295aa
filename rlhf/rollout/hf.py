"""Rollout backend protocol and the Hugging Face ``generate`` backend (CPU or GPU, pure torch).

A backend turns prompts into completions with one sampling configuration and records the
weight version that produced them; the vLLM backend (in actors/) implements the same protocol.
Backends are built by name through ``rlhf.rollout.backends.make_backend``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from rlhf.chat import render_prompt
from rlhf.models.device import Placement


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    max_new_tokens: int = 96
    seed: int = 0


@dataclass
class Rollout:
    prompts: list[str]
    completions: list[str]
    prompt_ids: list[list[int]] = field(default_factory=list)
    completion_ids: list[list[int]] = field(default_factory=list)
    version: int = 0
    # per completion, the EOS id the engine sampled and stopped at (kept out of ``completion_ids`` and
    # the text; the trainer appends it back as an action), None when it stopped at ``max_new_tokens``.
    # Empty: the backend keeps no record, and a completion shorter than ``max_new_tokens`` is taken to
    # have stopped at the tokenizer's EOS (``finished``, ``rlhf.ppo.models.assemble``).
    stop_ids: list[int | None] = field(default_factory=list)


def eos_token_ids(tokenizer, generation_config=None) -> list[int]:
    """Every id that ends a completion, the stop ids of both backends: the tokenizer's EOS first, then
    the extra ones a checkpoint's ``generation_config.eos_token_id`` lists (an int or a list), no repeats."""
    extra = getattr(generation_config, "eos_token_id", None)
    extra = [] if extra is None else [extra] if isinstance(extra, int) else list(extra)
    return list(dict.fromkeys(int(i) for i in [tokenizer.eos_token_id, *extra] if i is not None))


def cut_at_eos(tokens: Sequence[int], eos_ids: Sequence[int]) -> tuple[list[int], int | None]:
    """``tokens`` up to the first EOS id (what follows is padding), and that id (None: no EOS)."""
    for i, t in enumerate(tokens):
        if t in eos_ids:
            return list(tokens[:i]), int(t)
    return list(tokens), None


def finished(
    completion_ids: Sequence[Sequence[int]], stop_ids: Sequence[int | None] | None, max_new_tokens: int
) -> list[bool]:
    """Per completion, whether it stopped at an EOS: the backend's record (``Rollout.stop_ids``), or for
    a backend that keeps none, whether it is shorter than ``max_new_tokens``."""
    if stop_ids:
        return [s is not None for s in stop_ids]
    return [len(c) < max_new_tokens for c in completion_ids]


class RolloutBackend(Protocol):
    """Everything the rest of the code uses of a backend."""

    tokenizer: Any  # its ``eos_token_id`` and ``pad_token_id`` frame the samples for the trainer
    version: int  # the weight version that samples now

    def generate(
        self, prompts: Sequence[str], sampling: SamplingParams, on_batch: Callable[[int], None] | None = None
    ) -> Rollout:
        """Completions of ``prompts``; ``on_batch(n)`` after each ``n`` prompts are done."""
        ...

    def load_weights(self, state_dict: dict, version: int) -> None: ...

    def load_weight_buckets(self, buckets: Iterable[dict], version: int) -> None:
        """Optional: load a published version bucket by bucket (``rlhf.rollout.weight_sync``), never the
        whole model at once; a backend without it gets ``load_weights`` with the whole dict."""
        ...

    def logprobs(self, rollout: Rollout, sampling: SamplingParams) -> list[list[float]]:
        """Per sample, the log-probs the current weights give its generated tokens (the behaviour
        log-probs of an asynchronous rollout); a backend that cannot raises ``NotImplementedError``
        and registers ``behaviour_logprobs=False``."""
        ...


def model_device(model) -> torch.device:
    """Where ``model`` lives (its first parameter's device; the CPU for a model without any)."""
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    return next((p.device for p in model.parameters()), torch.device("cpu"))


class HFGenerateBackend:
    """Batched ``model.generate`` with left padding; completions stop at EOS. Prompts are hh-rlhf text,
    given to the model in its tokenizer's chat template when it has one (``rlhf.chat.render_prompt``)."""

    def __init__(
        self,
        model,
        tokenizer,
        batch_size: int = 64,
        version: int = 0,
        logprobs_fn: Callable | None = None,
        placement: Placement | None = None,
    ):
        from transformers import GenerationConfig

        self.model = model.eval()
        # stop at every EOS of the checkpoint (its generation_config may list several), as vLLM does
        self.eos_ids = eos_token_ids(tokenizer, getattr(model, "generation_config", None))
        # sampling and behaviour log-probs run under the placement's autocast, as the policy's forward does
        self.autocast = (placement or Placement()).autocast
        # a checkpoint's generation_config (top_k, repetition_penalty, ...) would change the behaviour
        # policy behind PPO's back: sampling is set by SamplingParams alone
        self.model.generation_config = GenerationConfig(
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
        )
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.version = version
        self.logprobs_fn = logprobs_fn  # (model, prompt_ids, completion_ids, ids, max_new_tokens, temperature, stops=)

    def load_weights(self, state_dict: dict, version: int) -> None:
        self.model.load_state_dict(state_dict)
        self.version = version

    def load_weight_buckets(self, buckets: Iterable[dict], version: int) -> None:
        """A published version streamed bucket by bucket (``weight_sync.pull_buckets``), each copied into
        the parameters in place: the full state dict never exists here beside the model."""
        from rlhf.rollout.weight_sync import load_buckets

        load_buckets(self.model, buckets)
        self.version = version

    def logprobs(self, rollout: Rollout, sampling: SamplingParams) -> list[list[float]]:
        if self.logprobs_fn is None:
            raise NotImplementedError("this backend was built without a log-prob function (BackendRequest.logprobs_fn)")
        ids = {"eos": self.tokenizer.eos_token_id, "pad": self.tokenizer.pad_token_id}
        with self.autocast():
            return self.logprobs_fn(
                self.model, rollout.prompt_ids, rollout.completion_ids, ids, sampling.max_new_tokens,
                sampling.temperature, stops=rollout.stop_ids or None,
            )  # fmt: skip

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[str],
        sampling: SamplingParams,
        on_batch: Callable[[int], None] | None = None,
    ) -> Rollout:
        tok = self.tokenizer
        gen = torch.Generator().manual_seed(sampling.seed)
        out = Rollout(list(prompts), [], version=self.version)
        for start in range(0, len(prompts), self.batch_size):
            chunk = list(prompts[start : start + self.batch_size])
            ids = tok([render_prompt(p, tok) for p in chunk], add_special_tokens=False)["input_ids"]
            width = max(len(x) for x in ids)
            input_ids = torch.full((len(ids), width), tok.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(input_ids)
            for i, x in enumerate(ids):
                input_ids[i, width - len(x) :] = torch.tensor(x)
                mask[i, width - len(x) :] = 1
            # generate() samples from torch's global RNG: seed it per batch for reproducibility.
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
            greedy = sampling.temperature <= 0
            device = model_device(self.model)
            with self.autocast():
                seqs = self._generate(input_ids.to(device), mask.to(device), sampling, greedy)
            for i, x in enumerate(ids):
                # cut at the first EOS only: what follows it is generate's padding. A pad token the model
                # sampled before any EOS is part of the sample and stays (PPO must train on what was sampled).
                new, stop = cut_at_eos(seqs[i, width:].tolist(), self.eos_ids)
                out.prompt_ids.append(x)
                out.completion_ids.append(new)
                out.stop_ids.append(stop)
                out.completions.append(tok.decode(new, skip_special_tokens=True))
            if on_batch is not None:
                on_batch(len(chunk))
        return out

    def _generate(self, input_ids: torch.Tensor, mask: torch.Tensor, sampling: SamplingParams, greedy: bool):
        tok = self.tokenizer
        return self.model.generate(
            input_ids=input_ids,
            attention_mask=mask,
            do_sample=not greedy,
            temperature=None if greedy else sampling.temperature,
            top_p=None if greedy else sampling.top_p,
            top_k=None if greedy else 0,
            max_new_tokens=sampling.max_new_tokens,
            pad_token_id=tok.pad_token_id,
            eos_token_id=self.eos_ids,
        )
