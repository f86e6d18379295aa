"""What the PPO trainer holds and passes between its phases: the role handles (``Roles``), the
defection evaluator as the trainer sees it, and a step's rollout, asked (``PendingRollout``) and
collected (``Rollouts``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from rlhf.rollout.hf import SamplingParams
from rlhf.rollout.weight_sync import WeightsTicket


@dataclass
class Roles:
    """Handles of the PPO roles; ``critic`` is None with a critic-free advantage estimator."""

    policy: Any
    reference: Any
    critic: Any | None
    reward: Any
    workers: list[Any]
    get: Callable[[Any], Any]
    put: Callable[[Any], Any] = lambda obj: obj  # ``ray.put``: one copy that several calls take by reference
    placement_groups: list[Any] = field(default_factory=list)  # the launcher's, removed with the roles


class Evaluator(Protocol):
    """The defection evaluator as the trainer sees it (``actors.evaluator.EvaluatorClient``)."""

    def submit(self, ticket: WeightsTicket | None, version: int, step: int) -> None: ...

    def new_points(self) -> list[dict]: ...

    def wait_idle(self, timeout_s: float) -> bool: ...

    def curves(self) -> dict: ...


@dataclass(kw_only=True)
class Rollouts:
    """One step's samples: prompts (each repeated ``samples_per_prompt`` times) and token ids."""

    batch: list[tuple[str, bool]]
    prompts: list[str]
    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    completions: list[str]
    versions: list[int]
    timings: dict[str, float] = field(default_factory=dict)
    logprobs: list[list[float]] | None = None  # behaviour log-probs per sample (asynchronous rollout)
    # the EOS id each sample stopped at (None: at max_new_tokens); None when a worker kept no record
    stop_ids: list[int | None] | None = None
    temperature: float = 1.0  # the rollout temperature they were sampled at
    score_calls: list[Any] = field(default_factory=list)  # the Reward role's calls, one per chunk (``ask``)
    ref_calls: list[Any] = field(default_factory=list)  # the Reference role's log-probs, one per chunk


@dataclass(kw_only=True)
class PendingRollout:
    """A rollout asked of the workers and not yet collected: their calls, the version they were
    asked to sample with, and what is needed to redo a chunk."""

    step: int
    version: int
    batch: list[tuple[str, bool]]
    prompts: list[str]
    chunks: list[list[str]]
    samplings: list[SamplingParams]
    calls: list[Any]
    logprobs: bool
    t0: float
    score_calls: list[Any] = field(default_factory=list)
    ref_calls: list[Any] = field(default_factory=list)
