"""The reward service's wire protocol, pure Python: request validation, auth, response shape.

Request (what OpenRLHF's remote reward-model client posts)::

    {"query": ["<prompt+answer>", ...], "prompts": ["<prompt>", ...], "labels": [...]}

``query`` is required; ``prompts`` and ``labels`` are optional and, when given, must be lists of
the same length. Other fields are ignored (clients add their own, e.g. logging context). Response: ``{"rewards": [...], "scores": [...]}``: ``scores`` are the model's
raw outputs, ``rewards`` the same normalised by ``reward_norm.json`` (equal when there is none
or normalisation is off). Every malformed request raises ``RequestError`` with an HTTP status
(400, 401, 413, 422) and one line of text; the server turns it into ``{"error": "<line>"}``.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass
from typing import Any


class RequestError(Exception):
    """A request the service refuses: ``status`` is the HTTP code, ``message`` one line."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message

    def __reduce__(self):  # crosses process boundaries (DeploymentHandle callers) intact
        return (type(self), (self.status, self.message))


@dataclass(frozen=True)
class RewardRequest:
    query: list[str]
    prompts: list[str] | None = None
    labels: list[Any] | None = None


def _is_text(x: Any) -> bool:
    return isinstance(x, str)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates such as "\ud800" survive json.loads
        return False
    return True


def validate_reward_payload(obj: Any, max_items: int) -> RewardRequest:
    """Check a decoded payload (HTTP body or ``DeploymentHandle`` call) and return the request."""
    if not isinstance(obj, dict):
        raise RequestError(422, f"body must be a JSON object, got {type(obj).__name__}")
    if "query" not in obj:
        raise RequestError(422, "missing field 'query' (a list of prompt+answer strings)")
    query = obj["query"]
    if not isinstance(query, list):
        raise RequestError(422, f"'query' must be a list of strings, got {type(query).__name__}")
    if not query:
        raise RequestError(422, "'query' is empty")
    if len(query) > max_items:
        raise RequestError(413, f"'query' has {len(query)} items; the limit is {max_items}")
    for i, text in enumerate(query):
        if not _is_text(text):
            raise RequestError(422, f"query[{i}] must be a string, got {type(text).__name__}")
        if not text.strip():
            raise RequestError(422, f"query[{i}] is empty")
        if not _encodable(text):
            raise RequestError(400, f"query[{i}] is not valid Unicode text")
    prompts = obj.get("prompts")
    if prompts is not None:
        if not isinstance(prompts, list) or not all(_is_text(p) for p in prompts):
            raise RequestError(422, "'prompts' must be a list of strings")
        if len(prompts) != len(query):
            raise RequestError(422, f"'prompts' has {len(prompts)} items, 'query' has {len(query)}")
    labels = obj.get("labels")
    if labels is not None:
        if not isinstance(labels, list):
            raise RequestError(422, "'labels' must be a list")
        if len(labels) != len(query):
            raise RequestError(422, f"'labels' has {len(labels)} items, 'query' has {len(query)}")
    return RewardRequest(list(query), prompts, labels)


def parse_reward_request(body: bytes, max_items: int, max_body_bytes: int) -> RewardRequest:
    """Decode and validate a raw HTTP body."""
    if len(body) > max_body_bytes:
        raise RequestError(413, f"body is {len(body)} bytes; the limit is {max_body_bytes}")
    if not body.strip():
        raise RequestError(400, "empty body; expected a JSON object with 'query'")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(400, f"body is not UTF-8 (byte {exc.start})") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RequestError(400, f"body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise RequestError(400, "body is nested too deeply") from None
    return validate_reward_payload(obj, max_items)


def check_bearer(authorization: str | None, token: str | None) -> None:
    """Raise 401 unless ``token`` is unset or the header is ``Bearer <token>`` (constant-time compare)."""
    if not token:
        return
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise RequestError(401, "missing or wrong bearer token")


def error_body(message: str) -> dict[str, str]:
    """The JSON body of every refusal: one line."""
    return {"error": " ".join(str(message).split())}
