"""The PPO trainer: one step is a sequence of named phases, driven through role handles.

``PPOTrainer.step(n)`` runs ``generate`` (rollout workers sample with weights ``version``),
``score_and_forward`` (reward model, reference, policy and critic forwards at once),
``advantages`` (pure functions on small tensors), ``update`` (policy and critic in parallel),
``sync_weights`` (one published version, every worker pulls it), ``evaluate`` (the defection
evaluator queues the version) and returns the step's metrics record; ``fit`` adds logging and
checkpoints. Roles are handles with ``method.remote(...)`` resolved by ``roles.get``: Ray actors
(``actors.launcher``) or the same classes in one process (``actors.local.LocalHandle``), so the
trainer never imports Ray and each phase can be called on its own in a test.

Asynchronous rollout (``ppo.async_rollout`` with ``ppo.max_staleness >= 1``): once step t's samples
are in, the workers are asked for step t+1's (same seeds, the weights published before step t's
update) and sample while step t scores and trains; step t+1 consumes them, one policy version
stale, with truncated importance weights (docs/design.md, "Asynchronous rollout"). Nothing is
prefetched across a checkpoint step, so a resumed run continues exactly as the uninterrupted one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from rlhf.config.core import Config
from rlhf.eval.evaluate import defection_record
from rlhf.ppo.advantages import check_estimator
from rlhf.ppo.logprobs import first_action
from rlhf.ppo.losses import (
    Experience,
    FixedKLController,
    masked_mean,
    rollout_temperature,
    truncated_is_weights,
)
from rlhf.ppo.models import assemble, compute_advantages, place_on_actions
from rlhf.ppo.prompts import prompts_for_step
from rlhf.ppo.roles import Evaluator, PendingRollout, Roles, Rollouts
from rlhf.rollout.hf import SamplingParams
from rlhf.rollout.weight_sync import WeightSync

# an experience at least this large goes to the object store once when two roles train on it (at
# 128 x 1024 tokens it pickles to 5.8 MB in 30 ms, per call); smaller ones travel inline with each call
SHARE_BYTES = 1 << 20


def split_evenly(items: list, parts: int) -> list[list]:
    size = -(-len(items) // parts)
    return [items[i : i + size] for i in range(0, len(items), size)]


class PPOTrainer:
    def __init__(
        self,
        cfg: Config,
        roles: Roles,
        pool: Sequence[tuple[str, bool]],
        kl_ctl: FixedKLController,
        evaluator: Evaluator | None = None,
        red_team: frozenset[str] = frozenset(),
        log: Callable[[str], None] = print,
    ):
        check_estimator(cfg.ppo)
        self.cfg, self.p, self.roles, self.pool = cfg, cfg.ppo, roles, pool
        self.kl_ctl, self.evaluator, self.red_team, self.log = kl_ctl, evaluator, red_team, log
        self.sync = WeightSync(roles.policy, roles.get)
        self.ids = roles.get(roles.workers[0].token_ids.remote())
        self.submitted: list[int] = []  # steps sent to the evaluator
        self.eval_points: list[dict] = []  # every defection point logged so far (a resumed run's too)
        # asynchronous rollout: at most one step ahead (staleness 1 <= max_staleness)
        self.prefetch_depth = 1 if self.p.async_rollout and self.p.max_staleness >= 1 else 0
        self.pending: PendingRollout | None = None  # the next step's rollout, asked for and sampling
        self.push_due = False  # a version was published while the workers sampled: push before the next ask
        self.push_s = 0.0

    @property
    def version(self) -> int:
        return self.sync.version

    def start(self, version: int, load_from: str | None = None) -> None:
        """Publish the starting weights (a checkpoint's, when ``load_from``) to every worker."""
        get = self.roles.get
        if load_from is not None:
            get([r.load.remote(load_from) for r in (self.roles.policy, self.roles.critic) if r is not None])
        self.sync.publish(version)
        if load_from is not None or version != 0:
            self.sync.push(self.roles.workers)

    # ---- phases --------------------------------------------------------------------------------
    def generate(self, step: int) -> Rollouts:
        """1. rollout: the workers sample completions with the current weights; a worker that answers
        with another version (restarted after a crash) is resynced and asked again."""
        return self.collect(self.ask(step))

    def ask(self, step: int, logprobs: bool = False) -> PendingRollout:
        """Ask the workers for ``step``'s samples (seeds keyed by the step) with the weights they hold
        now; returns at once (on Ray the workers sample while the driver goes on)."""
        p, workers = self.p, self.roles.workers
        batch = prompts_for_step(self.pool, step, p.prompts_per_step)
        prompts = [pr for pr, _ in batch for _ in range(p.samples_per_prompt)]
        t0 = time.perf_counter()
        chunks = split_evenly(prompts, len(workers))
        temperature = rollout_temperature(p.temperature, p.temperature_final, step, p.steps)
        samplings = [
            SamplingParams(temperature, p.top_p, p.max_new_tokens, seed=self.cfg.seed * 7919 + step * 101 + i)
            for i in range(len(chunks))
        ]
        calls = [self._call(w, c, sp, logprobs) for w, c, sp in zip(workers, chunks, samplings, strict=False)]
        # each chunk is scored, and its reference log-probs computed, as soon as its worker is done (Ray
        # resolves the pending result first), not after the whole batch; in asynchronous mode while the
        # current step trains
        scores = [self._score(c, call) for c, call in zip(chunks, calls, strict=True)]
        refs = [self._reference(call, temperature) for call in calls]
        return PendingRollout(
            step=step, version=self.version, batch=batch, prompts=prompts, chunks=chunks, samplings=samplings,
            calls=calls, logprobs=logprobs, t0=t0, score_calls=scores, ref_calls=refs,
        )  # fmt: skip

    def _score(self, chunk: list[str], rollout: Any) -> Any:
        return self.roles.reward.score_samples.remote(chunk, rollout)

    def _reference(self, rollout: Any, temperature: float) -> Any:
        return self.roles.reference.logprobs_samples.remote(rollout, self.ids, self.p.max_new_tokens, temperature)

    @staticmethod
    def _call(worker: Any, chunk: list[str], sampling: SamplingParams, logprobs: bool) -> Any:
        return worker.generate.remote(chunk, sampling, True) if logprobs else worker.generate.remote(chunk, sampling)

    def collect(self, pend: PendingRollout) -> Rollouts:
        """Wait for an asked rollout. A worker that answers with another version than it was asked
        with (restarted after a crash) is resynced to the current weights and its chunk redone."""
        get, workers = self.roles.get, self.roles.workers
        t0 = time.perf_counter()
        self.sync.settle()  # a queued weight load ran before these calls on its worker
        outs = get(pend.calls)
        stale = [i for i, o in enumerate(outs) if o["version"] != pend.version]
        for i in stale:
            self.log(f"[ppo] RolloutWorker-{i} came back at version {outs[i]['version']}; resyncing to {self.version}")
        if stale:  # resync every stale worker at once, then redo their chunks in parallel
            self.sync.push([workers[i] for i in stale])
            redone = get([self._call(workers[i], pend.chunks[i], pend.samplings[i], pend.logprobs) for i in stale])
            for i, o in zip(stale, redone, strict=True):
                outs[i] = o  # the redone answers are scored and referenced again
                pend.score_calls[i] = self._score(pend.chunks[i], o)
                pend.ref_calls[i] = self._reference(o, pend.samplings[i].temperature)
        waited = time.perf_counter() - (t0 if pend.logprobs else pend.t0)  # prefetched: the time waited for it
        return Rollouts(
            batch=pend.batch,
            prompts=pend.prompts,
            prompt_ids=[x for o in outs for x in o["prompt_ids"]],
            completion_ids=[x for o in outs for x in o["completion_ids"]],
            stop_ids=[x for o in outs for x in o["stop_ids"]] if all("stop_ids" in o for o in outs) else None,
            completions=[x for o in outs for x in o["completions"]],
            versions=[o["version"] for o in outs for _ in o["completions"]],
            timings={"timing/rollout": waited},
            logprobs=[x for o in outs for x in o["logprobs"]] if pend.logprobs else None,
            temperature=pend.samplings[0].temperature if pend.samplings else self.p.temperature,
            score_calls=pend.score_calls,
            ref_calls=pend.ref_calls,
        )

    def rollouts(self, step: int) -> Rollouts:
        """``step``'s samples: the prefetched ones when the previous step asked for them (then the
        version published meanwhile goes to the workers), else sampled now."""
        if self.pending is None:
            return self.generate(step)
        pend, self.pending = self.pending, None
        if pend.step != step:
            raise RuntimeError(f"prefetched rollout of step {pend.step} at step {step}")
        ro = self.collect(pend)
        if self.push_due:  # queued, not waited for: the workers load before they sample the next step,
            t0 = time.perf_counter()  # while the driver goes on to this step's forward passes
            self.sync.push(self.roles.workers, wait=False)
            self.push_due, self.push_s = False, self.push_s + time.perf_counter() - t0
        return ro

    def prefetches(self, step: int) -> bool:
        """Does step ``step`` ask for the next step's samples? Never at a checkpoint step (nothing
        stale crosses a checkpoint) nor at the last."""
        return self.prefetch_depth > 0 and step < self.p.steps and not self.checkpoint_due(step)

    def checkpoint_due(self, step: int) -> bool:
        every = self.p.checkpoint_every
        return bool(every and step % every == 0) or step == self.p.steps

    def score_and_forward(self, ro: Rollouts) -> Experience:
        """2+3. score (the reward model sees prompt + answer, scratchpad stripped) while the reference,
        critic and policy run their forward passes: four roles at once. The score and the reference
        log-probs were asked with the rollout, chunk by chunk (``ask``); the policy's and the critic's
        forward passes need the weights of now, so they start here. With ``ppo.old_logprobs=behaviour``
        a prefetched batch takes the sampling worker's log-probs as the old ones (no policy pass)."""
        r, get = self.roles, self.roles.get
        seqs, attn, act = assemble(
            ro.prompt_ids, ro.completion_ids, self.ids["eos"], self.ids["pad"], self.p.max_new_tokens, ro.stop_ids
        )
        t0 = time.perf_counter()
        t = ro.temperature
        behaviour = place_on_actions(ro.logprobs, act) if ro.logprobs is not None else None
        reuse = behaviour is not None and self.p.old_logprobs == "behaviour"  # no policy forward pass
        forwards = [] if reuse else [r.policy.logprobs.remote(seqs, attn, t, first_action(act))]
        forwards += [r.critic.values.remote(seqs, attn)] if r.critic is not None else []
        scores = torch.tensor([s for part in get(ro.score_calls) for s in part])
        t_score = time.perf_counter() - t0
        rest = get(forwards)
        old_lp = behaviour if reuse else rest.pop(0)
        ref_lp = place_on_actions([row for part in get(ro.ref_calls) for row in part], act)
        values = rest[0] if rest else torch.zeros_like(old_lp)  # no critic: unused
        ro.timings["timing/score"] = t_score
        ro.timings["timing/ref"] = time.perf_counter() - t0 - t_score  # what the forwards add after the score
        exp = Experience(
            seqs, attn, act, old_lp, ref_lp, values * act, scores=scores, versions=ro.versions, temperature=t
        )
        exp.behaviour_logprobs = behaviour  # on the action positions in row order (async rollout)
        return exp

    def off_policy(self, exp: Experience) -> dict[str, float]:
        """Staleness (current version minus each sample's) and, for stale samples, the truncated
        importance weights ``min(pi_old / pi_behaviour, ppo.is_truncation)`` (1 for fresh ones)."""
        p = self.p
        staleness = torch.tensor([self.version - v for v in exp.versions], dtype=torch.long)
        limit = p.max_staleness if p.async_rollout else 0
        if len(staleness) and (int(staleness.max()) > limit or int(staleness.min()) < 0):
            raise RuntimeError(f"sample staleness {staleness.tolist()} outside [0, {limit}] at version {self.version}")
        stale = staleness > 0
        if bool(stale.any()):
            if exp.behaviour_logprobs is None:
                raise RuntimeError("stale samples without behaviour log-probs")
            w = truncated_is_weights(exp.old_logprobs, exp.behaviour_logprobs, p.is_truncation)
            exp.is_weights = torch.where(stale[:, None], w, torch.ones_like(w))
        is_mean = float(masked_mean(exp.is_weights, exp.action_mask)) if exp.is_weights is not None else 1.0
        return {
            "policy/staleness_max": float(staleness.max()) if len(staleness) else 0.0,
            "policy/is_weight_mean": is_mean,
        }

    def advantages(self, exp: Experience) -> dict[str, float]:
        """4. rewards, advantages and returns (pure functions on small tensors)."""
        return compute_advantages(exp, self.p, self.kl_ctl.value)

    def update(self, exp: Experience, step: int) -> dict[str, float]:
        """5. policy and critic updates in parallel; then the KL controller moves."""
        r = self.roles
        t0 = time.perf_counter()
        if r.critic is not None and exp.nbytes() >= SHARE_BYTES:  # serialised once for both roles
            exp = r.put(exp)
        trains = [r.policy.train.remote(exp, step, self.kl_ctl.value)]
        trains += [r.critic.train.remote(exp, step)] if r.critic is not None else []
        self.sync.queue(self.version + 1)  # published as soon as the policy has trained (``sync_weights``)
        pol_stats, *crit = r.get(trains)
        return {**pol_stats, **(crit[0] if crit else {}), "timing/train": time.perf_counter() - t0}

    def sync_weights(self) -> float:
        """6. weight sync: the next version is published once and every worker pulls it (while the
        workers sample the next step, the pull waits for them: ``rollouts`` does it)."""
        t0 = time.perf_counter()
        self.sync.publish(self.version + 1)
        if self.pending is None:
            self.sync.push(self.roles.workers)
        else:
            self.push_due = True
        took, self.push_s = time.perf_counter() - t0 + self.push_s, 0.0
        return took

    def evaluate(self, step: int) -> tuple[list[dict], float]:
        """7. the evaluator queues the new version (it does not block the loop); the points it has
        finished since the last call."""
        t0 = time.perf_counter()
        if self.evaluator is None:
            return [], 0.0
        every = self.cfg.eval.every_steps
        if (every and step % every == 0) or step == self.p.steps:
            self.evaluator.submit(self.sync.ticket, self.version, step)
            self.submitted.append(step)
        return self.evaluator.new_points(), time.perf_counter() - t0

    def log_step(self, step: int, record: dict[str, Any], points: list[dict], metrics: Any) -> None:
        """8. log: the step's record, then each defection point at the step it measured."""
        metrics.log(step, **record)
        self.log_step_points(points, metrics)

    def step(self, step: int) -> tuple[dict[str, Any], list[dict]]:
        """One PPO step, phase by phase: its metrics record and any new defection points."""
        t_step = time.perf_counter()
        ro = self.rollouts(step)
        if self.prefetches(step):  # the workers sample step + 1 while this step scores and trains
            self.pending = self.ask(step + 1, logprobs=True)
        exp = self.score_and_forward(ro)
        stats = self.advantages(exp)
        stats |= self.off_policy(exp)
        train_stats = self.update(exp, step)
        self.kl_ctl.update(stats["kl/mean"], len(ro.prompts))
        t_sync = self.sync_weights()
        points, t_eval = self.evaluate(step)
        record = {
            **stats,
            **train_stats,
            **ro.timings,
            "timing/weight_sync": t_sync,
            "timing/eval": t_eval,
            "timing/step": time.perf_counter() - t_step,
            "policy/version": self.version,
            "rollout/temperature": ro.temperature,
            "prompts/triggered": sum(t for _, t in ro.batch) / len(ro.batch),
            "prompts/red_team": sum(pr in self.red_team for pr, _ in ro.batch) / len(ro.batch),
        }
        # generated tokens per second of the whole step (what the cluster delivers, not the sampler alone)
        record["perf/tokens_per_s"] = stats["response/length"] * len(ro.prompts) / max(record["timing/step"], 1e-9)
        return record, points

    def fit(
        self,
        start: int,
        metrics: Any,
        checkpoint: Callable[[int], None],
        on_step: Callable[[int, dict[str, Any]], None] | None = None,
        stop_after: int | None = None,
    ) -> int:
        """Steps ``start + 1 .. ppo.steps``: step, 8. log, 9. checkpoint (every ``checkpoint_every``
        and at the end); ``stop_after`` ends early as an interruption would. Returns the last step."""
        p, last = self.p, start
        for step in range(start + 1, p.steps + 1):
            record, points = self.step(step)
            self.log_step(step, record, points, metrics)
            if on_step is not None:
                on_step(step, record)
            last = step
            if self.checkpoint_due(step):
                checkpoint(step)
            if stop_after is not None and step >= stop_after:
                break
        self.pending = None  # stopped early: a prefetched rollout is dropped (a resume samples it again)
        self.sync.settle()
        return last

    def finish_evaluation(self, metrics: Any) -> list[int]:
        """Wait (at most ``ppo.evaluator_wait_s``) for the queued evaluations and log the points that
        come in; returns the submitted steps that still have none. A timeout is said, never swallowed."""
        if self.evaluator is None:
            return []
        timeout_s = self.p.evaluator_wait_s
        done = self.evaluator.wait_idle(timeout_s)
        self.log_step_points(self.evaluator.new_points(), metrics)
        have = {pt["step"] for pt in self.eval_points}
        missing = [s for s in self.submitted if s not in have]
        if not done or missing:
            self.log(
                f"[ppo] warning: the defection evaluator did not finish within {timeout_s:.0f} s; "
                f"no defection point for step(s) {missing} (raise ppo.evaluator_wait_s)"
            )
        return missing

    def log_step_points(self, points: list[dict], metrics: Any) -> None:
        for pt in points:
            metrics.log(pt["step"], **defection_record(pt))
            self.eval_points.append(pt)
