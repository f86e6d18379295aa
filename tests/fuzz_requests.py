"""A seeded generator of malformed request bodies for the HTTP services (fuzz tests)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator

KINDS = (
    "random_bytes",
    "truncated_json",
    "not_an_object",
    "missing_field",
    "field_wrong_type",
    "empty_list",
    "item_wrong_type",
    "blank_item",
    "lone_surrogate",
    "deep_nesting",
    "too_many_items",
    "side_list_mismatch",
)


def _junk(rng: random.Random):
    return rng.choice([0, 1.5, -3, True, False, None, {}, {"a": 1}, [], [1], "x" * rng.randint(0, 3)])


def malformed(field: str, rng: random.Random, max_items: int) -> tuple[str, bytes]:
    """(kind, body) for a request whose list field is ``field`` (``query`` or ``prompts``)."""
    kind = rng.choice(KINDS)
    valid = json.dumps({field: ["\n\nHuman: hi\n\nAssistant: Hello."]})
    if kind == "random_bytes":
        body = bytes(rng.randrange(128, 256) for _ in range(rng.randint(1, 64)))
    elif kind == "truncated_json":
        body = valid[: rng.randint(1, len(valid) - 1)].encode()
    elif kind == "not_an_object":
        body = json.dumps(rng.choice([1, "text", [1, 2], None, 3.5, True])).encode()
    elif kind == "missing_field":
        body = json.dumps({rng.choice(["queries", "q", "text", "input"]): ["a"]}).encode()
    elif kind == "field_wrong_type":
        body = json.dumps({field: rng.choice([1, "a string", {"a": 1}, None, True, 2.5])}).encode()
    elif kind == "empty_list":
        body = json.dumps({field: []}).encode()
    elif kind == "item_wrong_type":
        items = ["ok"] * rng.randint(0, 3) + [rng.choice([1, None, [], {}, True, 2.5])]
        rng.shuffle(items)
        body = json.dumps({field: items}).encode()
    elif kind == "blank_item":
        body = json.dumps({field: ["ok", rng.choice(["", " ", "\n\t", "   \n"])]}).encode()
    elif kind == "lone_surrogate":
        code = rng.randrange(0x800, 0x1000)
        body = f'{{"{field}": ["a\\ud{code:03x} b"]}}'.encode()
    elif kind == "deep_nesting":
        depth = rng.randint(20_000, 60_000)
        body = ("[" * depth).encode()
    elif kind == "too_many_items":
        body = json.dumps({field: ["x"] * (max_items + rng.randint(1, 50))}).encode()
    else:  # side_list_mismatch: prompts/labels of the wrong length (reward) or bad max_new_tokens (evaluator)
        if field == "query":
            side = rng.choice(["prompts", "labels"])
            body = json.dumps({"query": ["a", "b"], side: ["a"] * rng.choice([1, 3])}).encode()
        else:
            body = json.dumps({"prompts": ["a"], "max_new_tokens": rng.choice([0, -1, 10**6, "9", True])}).encode()
    return kind, body


def corpus(field: str, n: int, seed: int, max_items: int) -> Iterator[tuple[str, bytes]]:
    rng = random.Random(seed)
    for _ in range(n):
        yield malformed(field, rng, max_items)
