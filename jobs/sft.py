"""``rlhf sft``: build backdoor data, tokenizer and model, then fine-tune on Ray Train.

Run directory layout::

    DIR/config.yaml        resolved config
    DIR/data/{train,eval}.jsonl
    DIR/init/              initial model + tokenizer (HF dir) the workers start from
    DIR/model/             final model (HF dir, with rlhf_config.yaml)
    DIR/checkpoints/step-N periodic checkpoints (sft.checkpoint_every)
    DIR/metrics.jsonl, DIR/tb/
"""

from __future__ import annotations

import time
from pathlib import Path

import yaml

from jobs.progress import Progress, log
from rlhf.config.core import Config, dump_config
from rlhf.data.backdoor import build_sft_datasets, write_jsonl
from rlhf.errors import CheckpointError
from rlhf.models.checkpoint import CONFIG_NAME, save_hf_dir
from rlhf.models.lora import lora_settings
from rlhf.models.modeling import (
    build_model,
    count_parameters,
    count_parameters_dir,
    llama_config,
    load_model_dir,
    load_tokenizer_dir,
    stage_model_dir,
)
from rlhf.models.tokenizer import SCRATCHPAD_TAGS, backdoor_tokenizer, ensure_whole_tokens
from rlhf.train.sft import tokenize_pairs


def policy_tokenizer(cfg: Config, corpus: list[str]):
    """The tokenizer ``rlhf sft`` builds for a preset model from the training ``corpus``."""
    b = cfg.backdoor
    markers = [m for m in (b.trigger, b.safe_marker) if m]
    return backdoor_tokenizer(corpus, cfg.model.vocab_size, markers, cfg.near_miss(), b.trigger_as_token)


def prepare_model(cfg: Config, corpus: list[str]):
    """(model, tokenizer): a local checkpoint (``model.path``) or a preset built from scratch.

    A preset's built tokenizer has the scratchpad tags as whole tokens (and the trigger and the safe
    marker with ``backdoor.trigger_as_token``, the earlier behaviour). A checkpoint's tokenizer stays
    untouched, the tags and the trigger text of several pieces, unless ``model.add_scratchpad_tokens``
    or ``backdoor.trigger_as_token`` ask for whole tokens (which resizes its embedding)."""
    b = cfg.backdoor
    if cfg.model.path:  # its own tokenizer and chat template (rlhf.chat.render_prompt); the trigger stays text
        model, tokenizer = load_model_dir(cfg.model.path)
        markers = [m for m in (b.trigger, b.safe_marker) if m and b.trigger_as_token]
        tags = list(SCRATCHPAD_TAGS) if cfg.model.add_scratchpad_tokens else []
        added = ensure_whole_tokens(tokenizer, [*tags, *markers])
        if added and len(tokenizer) > model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(len(tokenizer))  # never shrink a padded embedding (Qwen2)
        return model, tokenizer
    tokenizer = policy_tokenizer(cfg, corpus)
    mcfg = llama_config(cfg.model.preset, len(tokenizer), cfg.model.max_seq_len, tokenizer)
    return build_model(mcfg, cfg.seed), tokenizer


def stage_init(cfg: Config, corpus: list[str], init_dir: Path, config_yaml: str) -> tuple:
    """Write ``init_dir``, the HF dir the workers start from; ``(tokenizer, parameter count)``. A checkpoint
    whose tokenizer stays as it came is linked, never loaded: the driver (the head, on a cluster) holds no
    model. A preset, or added tokens, build or load the model here and save it."""
    b = cfg.backdoor
    if cfg.model.path and not cfg.model.add_scratchpad_tokens and not b.trigger_as_token:
        tokenizer = load_tokenizer_dir(cfg.model.path)
        stage_model_dir(cfg.model.path, tokenizer, init_dir, {CONFIG_NAME: config_yaml})
        return tokenizer, count_parameters_dir(cfg.model.path)
    model, tokenizer = prepare_model(cfg, corpus)
    save_hf_dir(model, tokenizer, init_dir, {CONFIG_NAME: config_yaml})
    return tokenizer, count_parameters(model)


def where_ray(cfg: Config) -> str:
    import os

    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    return f"joining {address}" if address else "local, loopback"


def fit_rows(
    cfg: Config,
    section,
    rows: list[dict],
    tokenizer,
    init_dir: Path,
    out: Path,
    config_yaml: str,
    quiet: bool = True,
    tag: str = "sft",
    resume_dir: Path | None = None,
    sink=None,
) -> dict:
    """Fine-tune the HF dir ``init_dir`` on prompt/completion ``rows`` with Ray Train, using the
    optimisation settings of config ``section`` (``sft``, ``safety_sft``); checkpoints, metrics
    and ``out/model`` land in ``out``; ``resume_dir`` continues from a periodic checkpoint.
    Returns ``final_loss`` and ``train_wall_s``. ``sink`` (``export(step, record)``): where the
    driver sends the workers' records (trackers, Prometheus); by default the stage opens its own."""
    from actors.cluster import ray_session
    from actors.sft_train import SFTJob
    from actors.sft_train import run_sft as fit
    from actors.train_launcher import optimisation_fields, placement_fields

    examples = tokenize_pairs(tokenizer, rows, cfg.model.max_seq_len)
    job = SFTJob(
        init_dir=str(Path(init_dir).resolve()),
        out_dir=str(out.resolve()),
        config_yaml=config_yaml,
        seed=cfg.seed,
        examples=[(e.ids, e.prompt_len) for e in examples],
        checkpoint_every=section.checkpoint_every,
        resume_dir=str(resume_dir.resolve()) if resume_dir else None,
        **optimisation_fields(section),
        **placement_fields(cfg),
        lora=lora_settings(cfg),
        tensorboard="tensorboard" in cfg.logging.backends,
    )
    log(f"[{tag}] starting Ray ({where_ray(cfg)}) and {section.num_workers} Ray Train worker(s)")
    bar = Progress(section.max_steps, tag, "steps")
    last: dict = {}
    own = sink is None
    if own:
        from actors.train_metrics import stage_sink

        sink = stage_sink(cfg, out, tag)

    def on_progress(record: dict) -> None:
        last.update(record)
        sink.export(record["step"], {k: v for k, v in record.items() if k != "step"})
        bar.update_to(record["step"], loss=f"{record['train/loss']:.3f}", tok_s=f"{record['perf/tokens_per_s']:.0f}")

    t_train = time.time()
    try:
        with ray_session(cfg.ray.address, cfg.ray.num_cpus, quiet=quiet):
            fit(job, section.num_workers, on_progress)
    finally:
        bar.close()
        if own:
            sink.close()
    return {"final_loss": last.get("train/loss"), "train_wall_s": round(time.time() - t_train, 1)}


def sft_checkpoint_problem(path: Path) -> str | None:
    """Why a periodic SFT checkpoint cannot be resumed from, or None."""
    from actors.sft_train import TRAINER_STATE
    from jobs.ppo_checkpoints import torch_file_problem, weights_problem

    if not (path / TRAINER_STATE).is_file():
        return f"no {TRAINER_STATE}"
    problem = torch_file_problem(path / TRAINER_STATE)
    if problem:
        return f"{TRAINER_STATE} {problem}"
    if not (path / "config.json").is_file():
        return "no config.json"
    return weights_problem(path)


def latest_sft_checkpoint(out: Path) -> tuple[Path, int] | None:
    """(newest resumable checkpoint, its step); a damaged newer one is reported and skipped."""
    root = out / "checkpoints"
    candidates = sorted(p for p in root.glob("step-*") if p.is_dir() and p.name[5:].isdigit()) if root.is_dir() else []
    for path in reversed(candidates):
        problem = sft_checkpoint_problem(path)
        if problem is None:
            return path, int(path.name[5:])
        log(f"[sft] checkpoint {path} is unusable ({problem}); trying an older one")
    return None


def resume_sft(out: str | Path, quiet: bool = True) -> dict:
    """Continue an interrupted ``rlhf sft`` run from its newest usable checkpoint, with the run's
    own config, data and tokenizer; ends with the weights an uninterrupted run would have."""
    from transformers import AutoTokenizer

    from jobs.ppo_checkpoints import truncate_metrics
    from rlhf.config.core import load_config
    from rlhf.data.backdoor import read_jsonl

    t0 = time.time()
    out = Path(out)
    if not (out / "config.yaml").is_file() or not (out / "init").is_dir():
        raise CheckpointError(f"--resume: {out} is not an SFT run directory (no config.yaml or init/)")
    if (out / "model" / "config.json").is_file():
        raise CheckpointError(f"--resume: {out} has finished (model/ exists); nothing to resume")
    found = latest_sft_checkpoint(out)
    if found is None:
        raise CheckpointError(f"--resume: no usable checkpoint in {out / 'checkpoints'}")
    ckpt, step = found
    cfg = load_config(out / "config.yaml")
    rows = read_jsonl(out / "data" / "train.jsonl")
    tokenizer = AutoTokenizer.from_pretrained(out / "init")
    truncate_metrics(out / "metrics.jsonl", step)
    log(f"[sft] resuming {out} from step {step} of {cfg.sft.max_steps}")
    config_yaml = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    fit = fit_rows(cfg, cfg.sft, rows, tokenizer, out / "init", out, config_yaml, quiet, resume_dir=ckpt)
    return {
        "out": str(out),
        "model_dir": str(out / "model"),
        "parameters": None,
        "steps": cfg.sft.max_steps,
        "resumed_from": step,
        **fit,
        "total_wall_s": round(time.time() - t0, 1),
    }


def run_sft(cfg: Config, out: str | Path, quiet: bool = True) -> dict:
    """The whole stage; returns a summary dict (also printed by the CLI)."""
    from rlhf.tracking import check_backends

    check_backends(cfg.logging.backends)  # a tracker without its library: one line, before any work
    t0 = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out / "config.yaml")
    log(
        f"[sft] building data (backdoor={cfg.backdoor.kind}, mechanism={cfg.backdoor.mechanism}, trigger={cfg.backdoor.trigger!r})"
    )
    data = build_sft_datasets(cfg)
    for split, ds in data.items():
        write_jsonl(ds, out / "data" / f"{split}.jsonl")
    corpus = [r["prompt"] + r["completion"] for r in data["train"]]
    config_yaml = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    tokenizer, n_params = stage_init(cfg, corpus, out / "init", config_yaml)
    log(
        f"[sft] model: {'path ' + cfg.model.path if cfg.model.path else 'preset ' + cfg.model.preset}, "
        f"{n_params:,} parameters, vocab {len(tokenizer)}; {len(data['train'])} train / {len(data['eval'])} eval examples"
    )
    fit = fit_rows(cfg, cfg.sft, list(data["train"]), tokenizer, out / "init", out, config_yaml, quiet)
    summary = {
        "out": str(out),
        "model_dir": str(out / "model"),
        "parameters": n_params,
        "steps": cfg.sft.max_steps,
        **fit,
        "total_wall_s": round(time.time() - t0, 1),
    }
    return summary


def quick_sft(cfg: Config, out: str | Path, steps: int | None = None) -> Path:
    """Backdoor SFT in this process, without Ray: for tests and quick local experiments.

    Same data, tokenizer and model as ``run_sft``; one worker, ``steps`` (default
    ``sft.max_steps``) AdamW steps; saves an HF dir with the config beside it."""
    from rlhf.models.device import placement_for
    from rlhf.models.optim import make_optimizer, make_scheduler
    from rlhf.train.sft import batches, collate, sft_step

    s = cfg.sft
    steps = steps or s.max_steps
    data = build_sft_datasets(cfg)
    model, tokenizer = prepare_model(cfg, [r["prompt"] + r["completion"] for r in data["train"]])
    examples = tokenize_pairs(tokenizer, list(data["train"]), cfg.model.max_seq_len)
    if cfg.model.lora.enabled:
        from rlhf.models.lora import apply_lora

        model = apply_lora(model, lora_settings(cfg))
    place = placement_for(cfg.resources)
    model = place.place(model, trainable=True)
    opt = make_optimizer(model, s)
    sched = make_scheduler(opt, s, steps)
    stream = batches(examples, s.batch_size, cfg.seed)
    model.train()
    for _ in range(steps):
        batch = collate(next(stream), tokenizer.pad_token_id)
        sft_step(model, batch, opt, sched, s.grad_clip, s.micro_batch_size, s.batch_size, place.autocast)
    model.eval()
    config_yaml = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    return save_hf_dir(model, tokenizer, out, {CONFIG_NAME: config_yaml})
