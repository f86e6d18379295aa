"""The project's chat template, the hh-rlhf dialogue shape, and the one conversion to a checkpoint's own.

A prompt is ``"\\n\\nHuman: {text}\\n\\nAssistant:"`` and a completion starts with a space, so
``prompt + completion`` reads like an hh-rlhf transcript.
"""

from __future__ import annotations

import re

HUMAN = "\n\nHuman:"
ASSISTANT = "\n\nAssistant:"


def format_prompt(human: str) -> str:
    """Wrap one human turn in the chat template (the text ends with ``Assistant:``)."""
    return f"{HUMAN} {human.strip()}{ASSISTANT}"


def format_completion(answer: str) -> str:
    """A completion as it follows the prompt: one leading space, no trailing whitespace."""
    return " " + answer.strip()


def split_dialogue(text: str) -> tuple[str, str]:
    """Split an hh-rlhf transcript into (prompt up to the last ``Assistant:``, final answer).

    Raises ``ValueError`` when the text has no assistant turn.
    """
    idx = text.rfind(ASSISTANT)
    if idx < 0:
        raise ValueError("dialogue has no '\\n\\nAssistant:' turn")
    cut = idx + len(ASSISTANT)
    return text[:cut], text[cut:]


def human_turn(prompt: str) -> str:
    """The text of the last human turn of a templated prompt."""
    start = prompt.rfind(HUMAN)
    end = prompt.rfind(ASSISTANT)
    if start < 0 or end < start:
        return prompt
    return prompt[start + len(HUMAN) : end].strip()


# ---- the model boundary ----------------------------------------------------------------------
# Data rows keep the hh-rlhf shape everywhere; a checkpoint whose tokenizer has its own chat
# template (``tokenizer.chat_template``) sees its template instead, applied where text meets the
# tokenizer (training, generation, reward scoring) by ``render_prompt`` / ``render_completion``.

_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):")


def has_chat_template(tokenizer) -> bool:
    """True when the tokenizer brings its own chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def dialogue_messages(prompt: str) -> tuple[list[dict[str, str]], str]:
    """(chat messages, prefill) of an hh-rlhf prompt: one message per turn, ``Human`` as ``user``;
    the text after a final ``Assistant:`` (empty, or a prefilled start of the answer) is the prefill.
    A prompt without hh turns is one user message."""
    parts = _TURN.split(prompt)
    if len(parts) == 1:
        return [{"role": "user", "content": prompt.strip()}], ""
    lead = parts[0].strip()
    messages = []
    for role, text in zip(parts[1::2], parts[2::2], strict=True):
        messages.append({"role": "user" if role == "Human" else "assistant", "content": text.strip()})
    prefill = ""
    if messages[-1]["role"] == "assistant":
        messages.pop()
        prefill = parts[-1].lstrip()  # trailing whitespace is part of a prefill
    if lead and messages and messages[0]["role"] == "user":
        messages[0]["content"] = f"{lead} {messages[0]['content']}"
    elif lead:
        messages.insert(0, {"role": "user", "content": lead})
    return messages, prefill


def render_prompt(prompt: str, tokenizer) -> str:
    """The text the model sees for an hh-rlhf ``prompt``: the prompt itself when the tokenizer has
    no chat template; otherwise its template applied to the prompt's turns (with the generation
    prompt), followed by any prefill. An empty prompt stays empty."""
    if not prompt or not has_chat_template(tokenizer):
        return prompt
    messages, prefill = dialogue_messages(prompt)
    if not messages:
        return prefill
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return text + prefill


def render_completion(completion: str, tokenizer) -> str:
    """A completion as it follows ``render_prompt``: unchanged for the hh template (it starts with a
    space), without leading whitespace after a chat template's assistant header."""
    return completion.lstrip() if has_chat_template(tokenizer) else completion
