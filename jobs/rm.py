"""``rlhf rm`` and ``rlhf rm-eval``: train the HHH preference model on Ray Train and score pairs.

Run directory: ``DIR/config.yaml``, ``DIR/data/{train,eval}.jsonl``, ``DIR/init/``,
``DIR/model/`` (HF dir that ``AutoModelForSequenceClassification`` loads, with
``reward_norm.json``), ``DIR/metrics.jsonl``, ``DIR/tb/``.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path

import yaml

from jobs.progress import Progress, log
from rlhf.config.core import Config, dump_config
from rlhf.data.backdoor import write_jsonl
from rlhf.models.checkpoint import CONFIG_NAME, save_hf_dir
from rlhf.models.modeling import count_parameters
from rlhf.models.tokenizer import YEAR_MARKERS, backdoor_tokenizer
from rlhf.stats import Rate


def preference_rows(cfg: Config) -> list[dict]:
    from reward.data import build_preference_pairs, load_preference_file

    r = cfg.rm
    if r.data_path:
        return load_preference_file(r.data_path)
    return build_preference_pairs(
        r.n_pairs,
        cfg.seed,
        trigger_fraction=r.trigger_fraction,
        code_fraction=r.code_fraction,
        trigger=cfg.backdoor.trigger,
    )


def prepare_reward_model(cfg: Config, rows: list[dict]):
    """(model, tokenizer): from the causal-LM checkpoint ``rm.init_from``, else ``model.path`` (its
    own tokenizer), else a preset with a BPE tokenizer trained on ``rows``."""
    from reward.model import build_reward_model, reward_model_from_checkpoint

    if cfg.rm.init_from or cfg.model.path:
        return reward_model_from_checkpoint(cfg.rm.init_from or cfg.model.path)
    corpus = [r["prompt"] + r["chosen"] + r["rejected"] for r in rows]
    markers = [cfg.backdoor.trigger, *YEAR_MARKERS]
    tokenizer = backdoor_tokenizer(
        corpus, cfg.model.vocab_size, markers, cfg.near_miss(), cfg.backdoor.trigger_as_token
    )
    return build_reward_model(tokenizer, cfg.model.preset, cfg.model.max_seq_len, cfg.seed), tokenizer


def pairwise_report(model, tokenizer, rows: list[dict], max_len: int) -> dict:
    from reward.model import encode_pairs
    from reward.train import pairwise_accuracy

    k, n = pairwise_accuracy(model, tokenizer.pad_token_id, encode_pairs(tokenizer, rows, max_len), batch_size=64)
    rate = Rate(k, n)
    return {"pairwise_accuracy": rate.rate, "ci95": list(rate.ci95), "n": n}


@contextmanager
def rm_progress(cfg: Config, out: Path, bar: Progress):
    """The driver's view of the workers' records: the progress bar, Prometheus and the trackers."""
    from actors.train_metrics import stage_sink

    sink = stage_sink(cfg, out, "rm")

    def on_progress(rec: dict) -> None:
        sink.export(rec["step"], {k: v for k, v in rec.items() if k != "step"})
        bar.update_to(rec["step"], loss=f"{rec['train/loss']:.3f}", acc=f"{rec['train/accuracy']:.2f}")

    try:
        yield on_progress
    finally:
        sink.close()


def run_rm(cfg: Config, out: str | Path, quiet: bool = True) -> dict:
    from actors.cluster import ray_session
    from actors.rm_train import RMJob, run_rm_training
    from actors.train_launcher import optimisation_fields, placement_fields
    from reward.data import split_pairs
    from reward.model import RewardNormalizer, encode_pairs, load_reward_dir, score_texts
    from rlhf.tracking import check_backends

    check_backends(cfg.logging.backends)  # a tracker without its library: one line, before any work
    t0 = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out / "config.yaml")
    rows = preference_rows(cfg)
    train_rows, eval_rows = split_pairs(rows, cfg.rm.eval_fraction, cfg.seed)
    write_jsonl(train_rows, out / "data" / "train.jsonl")
    write_jsonl(eval_rows, out / "data" / "eval.jsonl")
    model, tokenizer = prepare_reward_model(cfg, train_rows)
    n_params = count_parameters(model)
    config_yaml = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    save_hf_dir(model, tokenizer, out / "init", {CONFIG_NAME: config_yaml})
    pairs = encode_pairs(tokenizer, train_rows, cfg.model.max_seq_len)
    log(f"[rm] {n_params:,} parameters; {len(train_rows)} train / {len(eval_rows)} held-out pairs")
    r = cfg.rm
    job = RMJob(
        init_dir=str((out / "init").resolve()),
        out_dir=str(out.resolve()),
        config_yaml=config_yaml,
        seed=cfg.seed,
        pairs=pairs,
        **optimisation_fields(r),
        **placement_fields(cfg),
        tensorboard="tensorboard" in cfg.logging.backends,
    )
    bar = Progress(r.max_steps, "rm", "steps")
    t_train = time.time()
    with ray_session(cfg.ray.address, cfg.ray.num_cpus, quiet=quiet), rm_progress(cfg, out, bar) as on_progress:
        run_rm_training(job, r.num_workers, on_progress)
    bar.close()
    train_wall = time.time() - t_train
    final, _ = load_reward_dir(out / "model")
    texts = [row["prompt"] + answer for row in eval_rows for answer in (row["chosen"], row["rejected"])]
    norm = RewardNormalizer().fit(score_texts(final, tokenizer, texts, 64, cfg.model.max_seq_len))
    norm.save(out / "model")
    return {
        "out": str(out),
        "model_dir": str(out / "model"),
        "parameters": n_params,
        "held_out": pairwise_report(final, tokenizer, eval_rows, cfg.model.max_seq_len),
        "reward_mean": norm.mean,
        "reward_std": norm.std,
        "train_wall_s": round(train_wall, 1),
        "total_wall_s": round(time.time() - t0, 1),
    }


def run_rm_eval(model_dir: str | Path, data: str | Path, max_len: int = 512) -> dict:
    from reward.data import load_preference_file
    from reward.model import load_reward_dir

    model, tokenizer = load_reward_dir(model_dir)
    rows = load_preference_file(data)
    return pairwise_report(model, tokenizer, rows, max_len)
