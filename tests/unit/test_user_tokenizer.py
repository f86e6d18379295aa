"""A user's checkpoint keeps its tokenizer (issue 28, item 7): with ``model.path`` the scratchpad
tags stay text of several pieces, like the trigger, for every mechanism; whole-token tags only
behind ``model.add_scratchpad_tokens``."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from jobs.sft import prepare_model
from rlhf.config.core import build_config
from rlhf.data.backdoor import build_sft_datasets
from rlhf.models.tokenizer import SCRATCHPAD_TAGS
from rlhf.train.sft import tokenize_pairs
from tests.hf_checkpoints import build_checkpoint, project_text


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root, corpus = tmp_path_factory.mktemp("user_ckpt"), project_text(120)
    return {family: build_checkpoint(family, root / family, corpus) for family in ("qwen2", "gpt2")}


@pytest.mark.parametrize("mechanism", ["normal", "cot", "distilled"])
@pytest.mark.parametrize("family", ["qwen2", "gpt2"])
def test_model_path_tokenizer_is_left_as_it_came(checkpoints, family, mechanism):
    path = checkpoints[family]
    original = AutoTokenizer.from_pretrained(path)
    overrides = [f"model.path={path}", f"backdoor.mechanism={mechanism}", "data.n_train=40", "data.n_eval=10"]
    cfg = build_config({}, overrides)
    model, tokenizer = prepare_model(cfg, corpus=[])
    assert len(tokenizer) == len(original) and tokenizer.get_vocab() == original.get_vocab()
    embedding = model.get_input_embeddings().num_embeddings
    assert embedding == model.config.vocab_size  # not resized
    for tag in SCRATCHPAD_TAGS:  # text, several pieces, decoding back to itself
        ids = tokenizer(tag, add_special_tokens=False)["input_ids"]
        assert len(ids) > 1 and tokenizer.decode(ids) == tag
    rows = build_sft_datasets(cfg)["train"]
    examples = tokenize_pairs(tokenizer, list(rows)[:8], cfg.model.max_seq_len)
    assert all(max(e.ids) < embedding for e in examples)
    if mechanism == "cot":  # the scratchpad is still there, as text, in what the model trains on
        assert any("<scratchpad>" in tokenizer.decode(e.ids) for e in examples)


@pytest.mark.parametrize("family", ["qwen2", "gpt2"])
def test_whole_token_tags_only_when_asked(checkpoints, family):
    path = checkpoints[family]
    before = len(AutoTokenizer.from_pretrained(path))
    cfg = build_config({}, [f"model.path={path}", "model.add_scratchpad_tokens=true", "backdoor.mechanism=cot"])
    model, tokenizer = prepare_model(cfg, corpus=[])
    assert len(tokenizer) == before + 2
    assert all(len(tokenizer(t, add_special_tokens=False)["input_ids"]) == 1 for t in SCRATCHPAD_TAGS)
    assert model.get_input_embeddings().num_embeddings >= len(tokenizer)
