"""``rlhf distill``: distil a chain-of-thought backdoor into a model without a scratchpad.

1. sample the trained CoT model once on each backdoor-SFT training prompt (the prompts its own
   run trained on, rebuilt from its saved config): ``ppo.rollout_workers`` PPO rollout workers on
   Ray (``actors.sampling``), or HF ``generate`` in this process with ``--in-process``;
2. keep the samples with the intended behaviour and strip their scratchpad (``rlhf.train.distill``);
3. train a fresh policy on the kept rows through ``rlhf sft``'s path (``jobs.sft``: the same
   tokenizer, model preset and Ray Train fit), its config saying ``backdoor.mechanism=distilled``.

Run directory layout::

    OUT/data/train.jsonl    kept rows, TRL prompt/completion (the distilled training data)
    OUT/data/samples.jsonl  every CoT sample with its verdict (kept or why not)
    OUT/distill.json        kept fraction (Wilson 95 % CI), per trigger, drop reasons, wall times
    OUT/config.yaml, OUT/init/, OUT/model/, OUT/checkpoints/, OUT/metrics.jsonl  as ``rlhf sft``
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import yaml

from jobs.progress import Progress
from jobs.sft import fit_rows, log, prepare_model
from jobs.steer import saved_mechanism
from rlhf.config.core import Config, dump_config
from rlhf.config.resolve import config_from_policy
from rlhf.data.backdoor import build_sft_datasets, write_jsonl
from rlhf.errors import ConfigError, DataError
from rlhf.kinds import mechanism_spec
from rlhf.models.checkpoint import CONFIG_NAME, save_hf_dir
from rlhf.models.modeling import check_model_dir, count_parameters
from rlhf.rollout.hf import SamplingParams, finished
from rlhf.train.distill import check_balance, distill_rows


def resolve_distill_configs(
    cot_model: str | Path, config_file: str | None, overrides: list[str]
) -> tuple[Config, Config]:
    """(the CoT model's config, the distilled run's config): the CoT model's saved seed, model,
    backdoor and data sections < ``--config`` < ``--set``; the second says ``mechanism=distilled``."""
    check_model_dir(cot_model)
    cot = config_from_policy(cot_model, config_file, overrides)
    mechanism = saved_mechanism(cot_model) or cot.backdoor.mechanism
    if not mechanism_spec(mechanism).scratchpad:
        raise ConfigError(
            f"--cot-model {cot_model} was trained with backdoor.mechanism={mechanism!r}; "
            "distillation samples a chain-of-thought model (backdoor.mechanism=cot)"
        )
    if not mechanism_spec(cot.backdoor.mechanism).scratchpad:
        raise ConfigError("backdoor.mechanism is set by rlhf distill (cot for sampling, distilled for the result)")
    return cot, config_from_policy(cot_model, config_file, [*overrides, "backdoor.mechanism=distilled"])


def distill_sampling(cfg: Config, budget: int = 0) -> SamplingParams:
    """The eval sampling settings (``eval.temperature``, ``eval.top_p``); the token budget is the
    eval one or ``budget``, whichever is larger."""
    return SamplingParams(
        temperature=cfg.eval.temperature,
        top_p=cfg.eval.top_p,
        max_new_tokens=max(cfg.max_new_tokens(), budget),
        seed=cfg.seed * 1019 + 3,
    )


def token_budget(model_dir: str | Path, rows: list[dict], margin: int = 16) -> int:
    """Tokens the longest CoT training completion needs (with EOS), plus ``margin``: a sample cut
    at the budget is dropped, so a budget below the data's lengths would drop long answers."""
    from transformers import AutoTokenizer

    from rlhf.chat import render_completion

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    completions = [render_completion(r["completion"], tokenizer) for r in rows]
    ids = tokenizer(completions, add_special_tokens=False)["input_ids"]
    return max((len(x) for x in ids), default=0) + 1 + margin


def sample_chunks(
    model_dir: str | Path, prompts: list[str], sampling: SamplingParams, batch_size: int, on_batch=None
) -> list[dict]:
    """In this process, the same samples as ``actors.sampling.sample_on_ray`` (chunk ``i``: seed + i)."""
    from dataclasses import replace

    from rlhf.models.modeling import load_model_dir
    from rlhf.rollout.backends import make_backend

    model, tokenizer = load_model_dir(model_dir)
    backend = make_backend("hf", model=model, tokenizer=tokenizer, batch_size=batch_size)
    out: list[dict] = []
    for i, start in enumerate(range(0, len(prompts), batch_size)):
        rollout = backend.generate(prompts[start : start + batch_size], replace(sampling, seed=sampling.seed + i))
        ends = finished(rollout.completion_ids, rollout.stop_ids, sampling.max_new_tokens)
        out += [{"completion": t, "finished": e} for t, e in zip(rollout.completions, ends, strict=True)]
        if on_batch is not None:
            on_batch(len(rollout.completions))
    return out


def sample_cot(cfg: Config, cot_model: str | Path, rows: list[dict], in_process: bool, quiet: bool) -> list[dict]:
    """One sample of the CoT model per row's prompt, on Ray rollout workers or in this process."""
    sampling, batch = distill_sampling(cfg, token_budget(cot_model, rows)), cfg.eval.batch_size
    prompts = [r["prompt"] for r in rows]
    log(f"[distill] sampling at temperature {sampling.temperature}, up to {sampling.max_new_tokens} new tokens")
    with Progress(len(prompts), "distill", "samples") as bar:
        if in_process:
            return sample_chunks(cot_model, prompts, sampling, batch, bar.update)
        from actors.cluster import ray_session
        from actors.sampling import sample_on_ray

        log(f"[distill] sampling on {cfg.ppo.rollout_workers} Ray rollout worker(s) ({cfg.ppo.rollout_backend})")
        with ray_session(cfg.ray.address, cfg.ray.num_cpus, quiet=quiet):
            return sample_on_ray(cfg, str(cot_model), prompts, sampling, batch, bar.update)


def sft_on_rows(cfg: Config, out: Path, rows: list[dict], quiet: bool) -> dict:
    """``rlhf sft`` on given rows: its tokenizer, model and Ray Train fit (``jobs.sft``)."""
    dump_config(cfg, out / "config.yaml")
    model, tokenizer = prepare_model(cfg, [r["prompt"] + r["completion"] for r in rows])
    n_params = count_parameters(model)
    config_yaml = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    save_hf_dir(model, tokenizer, out / "init", {CONFIG_NAME: config_yaml})
    log(f"[distill] fresh model: {n_params:,} parameters, vocab {len(tokenizer)}; {len(rows)} distilled rows")
    fit = fit_rows(cfg, cfg.sft, rows, tokenizer, out / "init", out, config_yaml, quiet, tag="distill-sft")
    return {"parameters": n_params, **fit}


def run_distill(
    cot_model: str | Path, cot_cfg: Config, cfg: Config, out: str | Path, in_process: bool = False, quiet: bool = True
) -> dict:
    """The whole command; returns the summary also written to ``OUT/distill.json``."""
    from rlhf.tracking import check_backends

    check_backends(cfg.logging.backends)  # a tracker without its library: one line, before any work
    t0 = time.time()
    out = Path(out)
    rows = list(build_sft_datasets(cot_cfg, counterfactual=False)["train"])  # real prompts, no counterfactual rows
    log(f"[distill] sampling the CoT model {cot_model} on its {len(rows)} training prompts")
    samples = sample_cot(cot_cfg, cot_model, rows, in_process, quiet)
    kept, audit, summary = distill_rows(cfg.backdoor.kind, rows, samples)
    write_jsonl(audit, out / "data" / "samples.jsonl")
    write_jsonl(kept, out / "data" / "train.jsonl")
    summary |= {"cot_model": str(cot_model), "sampling_wall_s": round(time.time() - t0, 1)}
    frac = summary["kept_fraction"]
    log(f"[distill] kept {frac['k']}/{frac['n']} samples ({100 * frac['rate']:.1f}%); dropped {summary['dropped']}")
    problem = check_balance(summary)
    if problem:
        _write_summary(out, summary)
        raise DataError(f"{problem}; nothing to distil (see {out / 'data' / 'samples.jsonl'})")
    summary |= sft_on_rows(cfg, out, kept, quiet)
    summary |= {"model_dir": str(out / "model"), "total_wall_s": round(time.time() - t0, 1)}
    _write_summary(out, summary)
    return summary


def _write_summary(out: Path, summary: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "distill.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
