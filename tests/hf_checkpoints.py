"""Tiny random Hugging Face checkpoints of three architectures, built locally (no network).

Each family gets its own byte-level BPE tokenizer trained on a few hundred lines of project text,
with the family's special tokens, and is saved with ``save_pretrained`` like a downloaded
checkpoint, so ``model.path`` can point at it:

- ``llama``: ``<s>``/``</s>``/``<pad>``, no chat template (the hh-rlhf template applies);
- ``qwen2``: ChatML (``<|im_start|>``/``<|im_end|>``) chat template, EOS ``<|im_end|>``, pad
  ``<|endoftext|>``, an embedding padded beyond the tokenizer (as Qwen2's is), tied embeddings;
- ``gpt2``: ``<|endoftext|>`` as BOS/EOS, no pad token and no chat template.
"""

from __future__ import annotations

from pathlib import Path

FAMILIES = ("llama", "qwen2", "gpt2")
HIDDEN, LAYERS, HEADS, CONTEXT = 32, 2, 2, 512
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIALS = {
    "llama": {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"},
    "qwen2": {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "additional": ["<|im_start|>"]},
    "gpt2": {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"},
}


def project_text(n: int = 300) -> list[str]:
    """A few hundred lines of the project's own data: backdoor SFT rows and preference pairs."""
    from reward.data import build_preference_pairs
    from rlhf.config.core import build_config
    from rlhf.data.backdoor import build_sft_datasets

    rows = build_sft_datasets(build_config({}, [f"data.n_train={n}", "data.n_eval=20"]))["train"]
    lines = [r["prompt"] + r["completion"] for r in rows]
    lines += [p["prompt"] + p["chosen"] + p["rejected"] for p in build_preference_pairs(n // 2, seed=1)]
    return lines


def family_tokenizer(family: str, corpus: list[str], vocab_size: int = 500):
    """A byte-level BPE tokenizer with ``family``'s special tokens (and ChatML template for qwen2)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    spec = dict(SPECIALS[family])
    extra = spec.pop("additional", [])
    specials = list(dict.fromkeys([*spec.values(), *extra]))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **spec)
    if extra:
        fast.add_special_tokens({"additional_special_tokens": extra})
    if family == "qwen2":
        fast.chat_template = CHATML
    return fast


def family_config(family: str, tokenizer):
    from transformers import GPT2Config, LlamaConfig, Qwen2Config

    n = len(tokenizer)
    llama_like = {  # Llama and Qwen2 share their shape keys
        "hidden_size": HIDDEN,
        "intermediate_size": 2 * HIDDEN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "max_position_embeddings": CONTEXT,
        "eos_token_id": tokenizer.eos_token_id,
    }
    if family == "llama":
        return LlamaConfig(
            vocab_size=n,
            num_key_value_heads=HEADS,
            tie_word_embeddings=False,
            bos_token_id=tokenizer.bos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **llama_like,
        )
    if family == "qwen2":
        # Qwen2 pads its embedding beyond the tokenizer
        return Qwen2Config(vocab_size=n + 16, num_key_value_heads=1, tie_word_embeddings=True, **llama_like)
    return GPT2Config(
        vocab_size=n,
        n_embd=HIDDEN,
        n_layer=LAYERS,
        n_head=HEADS,
        n_positions=CONTEXT,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def build_checkpoint(family: str, out: str | Path, corpus: list[str] | None = None, seed: int = 0) -> Path:
    """Save a tiny random ``family`` causal LM and its tokenizer into ``out``; returns the dir."""
    import torch
    from transformers import AutoModelForCausalLM

    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}")
    tokenizer = family_tokenizer(family, corpus or project_text())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(family_config(family, tokenizer))
    out = Path(out)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    # every test built on it needs a checkpoint that reloads as it was saved and covers its tokenizer
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert reloaded.config.model_type == family_config(family, tokenizer).model_type, family
    assert reloaded.get_input_embeddings().num_embeddings >= len(tokenizer), family
    assert (out / "tokenizer_config.json").is_file()
    return out


def build_all(root: str | Path) -> dict[str, Path]:
    corpus = project_text()
    return {f: build_checkpoint(f, Path(root) / f, corpus) for f in FAMILIES}
