"""The one chat template used everywhere: the hh-rlhf dialogue shape.

A prompt is ``"\\n\\nHuman: {text}\\n\\nAssistant:"`` and a completion starts with a space, so
``prompt + completion`` reads like an hh-rlhf transcript.
"""

from __future__ import annotations

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
