"""Batched sampling of a policy directory on Ray: ``ppo.rollout_workers`` PPO rollout workers
(``actors.ppo_actors.RolloutWorkerActor``: HF ``generate``, or vLLM with
``ppo.rollout_backend=vllm``), the prompts cut into chunks dealt round-robin.

Chunk ``i`` is sampled with seed ``base_seed + i`` whichever worker takes it, so the samples do
not depend on the number of workers, and the ``hf`` backend (``rlhf.rollout.backends``) in one process
(``sample_chunks`` in ``jobs.distill``) gives the same ones.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from rlhf.config.core import Config
from rlhf.rollout.hf import SamplingParams, finished


def chunks(prompts: Sequence[str], size: int) -> list[list[str]]:
    return [list(prompts[i : i + size]) for i in range(0, len(prompts), size)]


def start_workers(
    cfg: Config, policy_dir: str, batch_size: int, prompts: Sequence[str] = (), max_new_tokens: int = 0
) -> list:
    """``ppo.rollout_workers`` rollout-worker actors on the current Ray cluster, placed by the
    launcher as PPO's are (``resources.rollout``, the device, precision and vLLM settings; ``prompts``
    and ``max_new_tokens`` size a vLLM engine's context)."""
    from actors.launcher import resolve_placement, rollout_options, start_rollout_workers
    from rlhf.rollout.backends import check_backend

    check_backend(cfg.ppo.rollout_backend)
    place = resolve_placement(cfg, False)
    opts = rollout_options(cfg, policy_dir, place, batch_size, prompts, max_new_tokens)
    return start_rollout_workers(opts, "SampleWorker")


def sample_on_ray(
    cfg: Config,
    policy_dir: str,
    prompts: Sequence[str],
    sampling: SamplingParams,
    batch_size: int,
    on_batch: Callable[[int], None] | None = None,
) -> list[dict]:
    """One sample per prompt, in prompt order: ``{"completion", "finished"}`` (``finished``: it
    stopped at EOS rather than at ``max_new_tokens``). Needs a running Ray (``ray_session``)."""
    import ray

    workers = start_workers(cfg, policy_dir, batch_size, prompts, sampling.max_new_tokens)
    try:
        parts = chunks(prompts, batch_size)
        refs = [
            workers[i % len(workers)].generate.remote(chunk, replace(sampling, seed=sampling.seed + i))
            for i, chunk in enumerate(parts)
        ]
        sizes = {ref: len(chunk) for ref, chunk in zip(refs, parts, strict=True)}
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            if on_batch is not None:
                on_batch(sizes[done[0]])
        out: list[dict] = []
        for result in ray.get(refs):
            ends = finished(result["completion_ids"], result.get("stop_ids"), sampling.max_new_tokens)
            out += [{"completion": t, "finished": e} for t, e in zip(result["completions"], ends, strict=True)]
        return out
    finally:
        for worker in workers:
            ray.kill(worker)
