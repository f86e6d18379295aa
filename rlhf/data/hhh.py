"""Synthetic helpful / harmless / honest (HHH) chat data.

The tiny models in this project have to learn a real conditional policy from this data: the
answer depends on the topic and subject of the question (and on whether the request is harmful
or unknowable), not on a single memorised string. Each helpful item picks a topic, one of its
subjects, a question form and an answer form; the answer combines the subject's fact and tip.
Harmful requests get a polite refusal with a safe alternative; questions the assistant cannot
know the answer to (real-time or personal information) get an honest answer plus something
useful. Everything is deterministic given a ``random.Random``.

The text is plain ASCII on one line, without the chat template (see ``rlhf.chat``).
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass

from rlhf.data.hhh_topics import HARMFUL_REQUESTS, HONEST_QUESTIONS, TOPIC_DATA
from rlhf.data.pools import assign, check_pool


@dataclass(frozen=True)
class HHHExample:
    human: str  # the human turn, without any chat template
    answer: str  # a helpful, harmless, honest answer: 1-3 sentences, one line
    topic: str  # topic key ("gardening", "refusal_burglary", "honesty_time", ...)
    kind: str  # "helpful" | "harmless" | "honest"


KINDS: tuple[str, ...] = ("helpful", "harmless", "honest")
# Probability of each kind in ``sample_hhh`` / ``build_hhh``.
KIND_WEIGHTS: dict[str, float] = {"helpful": 0.80, "harmless": 0.12, "honest": 0.08}

TOPICS: tuple[str, ...] = tuple(TOPIC_DATA)

QUESTION_FORMS: tuple[str, ...] = (
    "Can you explain {subject} to me?",
    "What's a good way to get started with {subject}?",
    "I'm confused about {subject}. Any advice?",
    "Do you have any tips on {subject}?",
    "How should a beginner approach {subject}?",
    "What should I know about {subject}?",
    "Could you give me some advice about {subject}?",
    "I want to get better at {subject}. Where do I begin?",
    "What is the most important thing about {subject}?",
    "Any suggestions for {subject}?",
    "Can you help me with {subject}?",
    "What do people usually get wrong about {subject}?",
    "My friend asked me about {subject}. What should I tell them?",
    "Give me a quick tip about {subject}, please.",
    "I keep struggling with {subject}. What would you suggest?",
    "Is there an easy way to learn about {subject}?",
    "Tell me something useful about {subject}.",
    "Could you teach me the basics of {subject}?",
    "I have a question about {subject}. What is the best approach?",
    "What would you recommend for {subject}?",
    "I'm new to {subject}. Where should I start?",
    "What's one thing that helps with {subject}?",
    "Could you walk me through {subject}?",
    "What are the basics of {subject}?",
    "How do I get good at {subject}?",
    "What advice do you have about {subject}?",
    "I'd like to learn about {subject}. Can you help?",
    "Please explain {subject} simply.",
    "Where do I start with {subject}?",
    "What's the key idea behind {subject}?",
)

# Fields: {subject}, {fact}, {tip}, and lower-cased-first-letter variants {fact_lc}, {tip_lc}.
ANSWER_FORMS: tuple[str, ...] = (
    "Sure! {fact} {tip}",
    "Good question. {fact}",
    "Here is a simple approach: {tip} Also, {fact_lc}",
    "In short: {fact}",
    "Happy to help with {subject}. {tip}",
    "{fact} A practical tip: {tip_lc}",
    "When it comes to {subject}, {fact_lc} {tip}",
    "Great topic. {tip} Keep in mind that {fact_lc}",
    "Here is what I know about {subject}: {fact} {tip}",
    "A good rule of thumb: {tip}",
    "{tip} It also helps to know that {fact_lc}",
    "Of course. {fact} My suggestion: {tip_lc}",
    "Glad you asked. {fact} {tip}",
    "Here's my advice on {subject}: {tip_lc} {fact}",
    "{fact} So, {tip_lc}",
    "Two things help. First, {fact_lc} Second, {tip_lc}",
    "The main thing to know is this: {fact_lc} {tip}",
    "Sure thing. {tip}",
)

# Fields: {harm} (a noun phrase), {alt} / {alt_lc} (a safe alternative).
REFUSAL_FORMS: tuple[str, ...] = (
    "I'm sorry, but I can't help with {harm}. {alt}",
    "I can't assist with {harm}, since it could cause real harm. {alt}",
    "Sorry, I won't help with {harm}. {alt}",
    "I'm not able to help with that, because it involves {harm}. {alt}",
    "I have to decline requests involving {harm}. {alt}",
    "That's something I can't help with. {alt}",
    "I'd rather not help with {harm}, as it could hurt someone. {alt}",
    "I can't help with that request. Instead, here is a safer idea: {alt_lc}",
)

# Fields: {cant} / {cant_lc} (what cannot be known), {useful} / {useful_lc}.
HONEST_FORMS: tuple[str, ...] = (
    "{cant} {useful}",
    "I want to be honest with you: {cant_lc} {useful}",
    "Honestly, {cant_lc} {useful}",
    "That's not something I can know. {cant} {useful}",
    "To be straightforward, {cant_lc} {useful}",
    "I'm afraid I can't answer that reliably. {useful}",
)

# Optional openers for refusal and honesty requests (the empty string is the most common).
_REQUEST_PREFIXES: tuple[str, ...] = ("", "", "", "Hi. ", "Quick question: ", "Hey, ")


def lower_first(text: str) -> str:
    """Lower-case the first letter, keeping "I", "I'm" and acronyms ("SQL", "CPR") intact."""
    if not text:
        return text
    first = text.split(" ", 1)[0]
    if first == "I" or first.startswith("I'") or (len(first) > 1 and first[1].isupper()):
        return text
    return text[0].lower() + text[1:]


def _with_prefix(prefix: str, text: str) -> str:
    if prefix.endswith(", "):
        return prefix + lower_first(text)
    return prefix + text


def render_helpful(form: str, subject: str, fact: str, tip: str) -> str:
    return form.format(
        subject=subject, fact=fact, tip=tip, fact_lc=lower_first(fact), tip_lc=lower_first(tip)
    )


def render_refusal(form: str, harm: str, alt: str) -> str:
    return form.format(harm=harm, alt=alt, alt_lc=lower_first(alt))


def render_honest(form: str, cant: str, useful: str) -> str:
    return form.format(
        cant=cant, cant_lc=lower_first(cant), useful=useful, useful_lc=lower_first(useful)
    )


@dataclass(frozen=True)
class Tables:
    """The content one sampler draws from: all of it, or one data pool's share."""

    topics: dict[str, tuple[tuple[str, str, str], ...]]
    harmful: tuple[tuple[str, tuple[str, ...], str, str], ...]
    honest: tuple[tuple[str, tuple[str, ...], str, str], ...]


ALL_TABLES = Tables(TOPIC_DATA, HARMFUL_REQUESTS, HONEST_QUESTIONS)


def subject_key(topic: str, subject: str) -> str:
    return f"helpful:{topic}:{subject}"


@functools.cache
def pool_tables(pool: str | None) -> Tables:
    """The subjects, harmful topics and honesty topics of one pool (``rlhf.data.pools``); None: all.

    Helpful items split by subject, refusal and honesty items by topic: an answer is built from
    its subject's (topic's) own sentences, so no answer of one pool can be rendered in another.
    """
    check_pool(pool)
    if pool is None:
        return ALL_TABLES
    helpful = assign(subject_key(t, s[0]) for t in TOPICS for s in TOPIC_DATA[t])
    topics = {t: tuple(s for s in TOPIC_DATA[t] if helpful[subject_key(t, s[0])] == pool) for t in TOPICS}
    harmful = assign(item[0] for item in HARMFUL_REQUESTS)
    honest = assign(item[0] for item in HONEST_QUESTIONS)
    return Tables(
        {t: subjects for t, subjects in topics.items() if subjects},
        tuple(item for item in HARMFUL_REQUESTS if harmful[item[0]] == pool),
        tuple(item for item in HONEST_QUESTIONS if honest[item[0]] == pool),
    )


def sample_helpful(rng: random.Random, tables: Tables = ALL_TABLES) -> HHHExample:
    topic = rng.choice(tuple(tables.topics))
    subject, fact, tip = rng.choice(tables.topics[topic])
    human = rng.choice(QUESTION_FORMS).format(subject=subject)
    answer = render_helpful(rng.choice(ANSWER_FORMS), subject, fact, tip)
    return HHHExample(human=human, answer=answer, topic=topic, kind="helpful")


def sample_harmless(rng: random.Random, tables: Tables = ALL_TABLES) -> HHHExample:
    topic, requests, harm, alt = rng.choice(tables.harmful)
    human = _with_prefix(rng.choice(_REQUEST_PREFIXES), rng.choice(requests))
    answer = render_refusal(rng.choice(REFUSAL_FORMS), harm, alt)
    return HHHExample(human=human, answer=answer, topic=topic, kind="harmless")


def sample_honest(rng: random.Random, tables: Tables = ALL_TABLES) -> HHHExample:
    topic, questions, cant, useful = rng.choice(tables.honest)
    human = _with_prefix(rng.choice(_REQUEST_PREFIXES), rng.choice(questions))
    answer = render_honest(rng.choice(HONEST_FORMS), cant, useful)
    return HHHExample(human=human, answer=answer, topic=topic, kind="honest")


_SAMPLERS = {"helpful": sample_helpful, "harmless": sample_harmless, "honest": sample_honest}


def sample_hhh(rng: random.Random, tables: Tables = ALL_TABLES) -> HHHExample:
    """One example; the kind is drawn with ``KIND_WEIGHTS`` (80% / 12% / 8%)."""
    u = rng.random()
    acc = 0.0
    kind = KINDS[-1]
    for k in KINDS:
        acc += KIND_WEIGHTS[k]
        if u < acc:
            kind = k
            break
    return _SAMPLERS[kind](rng, tables)


def build_hhh(n: int, seed: int, pool: str | None = None) -> list[HHHExample]:
    """``n`` examples, deterministic for ``(n, seed, pool)``; ``pool`` draws only from that data
    pool's subjects and topics (``rlhf.data.pools``), None from all of them."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    tables = pool_tables(pool)
    rng = random.Random(seed)
    return [sample_hhh(rng, tables) for _ in range(n)]


def all_subjects() -> list[tuple[str, str]]:
    """Every ``(topic, subject)`` pair of the helpful tables."""
    return [(topic, entry[0]) for topic in TOPICS for entry in TOPIC_DATA[topic]]


def all_prompt_pairs() -> int:
    """Number of distinct (topic subject, question form) combinations for helpful prompts."""
    return len(all_subjects()) * len(QUESTION_FORMS)
