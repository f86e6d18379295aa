"""reward.protocol: request parsing and validation, bearer auth and the one-line error body."""

import json

import pytest

from reward.protocol import (
    RequestError,
    RewardRequest,
    check_bearer,
    error_body,
    parse_reward_request,
    validate_reward_payload,
)

MAX_ITEMS = 4
MAX_BODY = 4096


def _parse(body: bytes, max_items: int = MAX_ITEMS, max_body_bytes: int = MAX_BODY) -> RewardRequest:
    return parse_reward_request(body, max_items, max_body_bytes)


def _j(obj) -> bytes:
    return json.dumps(obj).encode("utf-8")


def _assert_refused(exc_info, status: int, *fragments: str) -> None:
    err = exc_info.value
    assert isinstance(err, RequestError)
    assert err.status == status
    assert err.message == str(err)
    assert err.message.strip() == err.message and err.message
    assert "\n" not in err.message and "\r" not in err.message
    for fragment in fragments:
        assert fragment in err.message, (fragment, err.message)
    # The server's answer for it is the same single line.
    assert error_body(err.message) == {"error": err.message}


# --------------------------------------------------------------------------- bad requests

BAD_BODIES = [
    # (id, body, status, fragments the message must contain)
    ("not-json", b"{query: [1]", 400, ("not valid JSON", "line 1 column")),
    ("not-json-text", b"hello world", 400, ("not valid JSON",)),
    ("truncated-json", b'{"query": ["a"', 400, ("not valid JSON",)),
    ("empty", b"", 400, ("empty body", "query")),
    ("whitespace-only", b" \n\t ", 400, ("empty body",)),
    ("not-utf8", b'{"query": ["caf\xe9"]}', 400, ("not UTF-8", "byte 15")),
    ("not-utf8-first-byte", b"\xff\xfe{}", 400, ("not UTF-8", "byte 0")),
    ("lone-surrogate", b'{"query": ["\\ud800"]}', 400, ("query[0]", "Unicode")),
    ("lone-surrogate-second", b'{"query": ["fine", "x\\udc00y"]}', 400, ("query[1]", "Unicode")),
    ("json-list", b'["a", "b"]', 422, ("JSON object", "list")),
    ("json-string", b'"a"', 422, ("JSON object", "str")),
    ("json-number", b"3", 422, ("JSON object", "int")),
    ("json-null", b"null", 422, ("JSON object", "NoneType")),
    ("missing-query", _j({"prompts": ["p"]}), 422, ("missing", "'query'")),
    ("query-string", _j({"query": "just one"}), 422, ("'query'", "list", "str")),
    ("query-dict", _j({"query": {"a": 1}}), 422, ("'query'", "list", "dict")),
    ("query-null", _j({"query": None}), 422, ("'query'", "list", "NoneType")),
    ("query-empty", _j({"query": []}), 422, ("'query'", "empty")),
    ("item-int", _j({"query": ["ok", 3]}), 422, ("query[1]", "string", "int")),
    ("item-null", _j({"query": [None]}), 422, ("query[0]", "string", "NoneType")),
    ("item-list", _j({"query": ["a", "b", ["c"]]}), 422, ("query[2]", "string", "list")),
    ("item-bool", _j({"query": [True]}), 422, ("query[0]", "string", "bool")),
    ("item-empty", _j({"query": ["ok", ""]}), 422, ("query[1]", "empty")),
    ("item-whitespace", _j({"query": [" \n\t "]}), 422, ("query[0]", "empty")),
    ("too-many", _j({"query": ["q"] * (MAX_ITEMS + 1)}), 413, (f"{MAX_ITEMS + 1} items", f"limit is {MAX_ITEMS}")),
    ("prompts-string", _j({"query": ["a"], "prompts": "p"}), 422, ("'prompts'", "list of strings")),
    ("prompts-non-string", _j({"query": ["a", "b"], "prompts": ["p", 2]}), 422, ("'prompts'", "list of strings")),
    ("prompts-short", _j({"query": ["a", "b"], "prompts": ["p"]}), 422, ("'prompts' has 1", "'query' has 2")),
    ("prompts-long", _j({"query": ["a"], "prompts": ["p", "q"]}), 422, ("'prompts' has 2", "'query' has 1")),
    ("prompts-empty", _j({"query": ["a"], "prompts": []}), 422, ("'prompts' has 0", "'query' has 1")),
    ("labels-string", _j({"query": ["a"], "labels": "x"}), 422, ("'labels'", "list")),
    ("labels-short", _j({"query": ["a", "b", "c"], "labels": [1, 2]}), 422, ("'labels' has 2", "'query' has 3")),
    ("labels-long", _j({"query": ["a"], "labels": [1, 2]}), 422, ("'labels' has 2", "'query' has 1")),
]


@pytest.mark.parametrize(("body", "status", "fragments"), [b[1:] for b in BAD_BODIES], ids=[b[0] for b in BAD_BODIES])
def test_bad_request_matrix(body, status, fragments):
    with pytest.raises(RequestError) as exc_info:
        _parse(body)
    _assert_refused(exc_info, status, *fragments)


def test_body_over_max_body_bytes_is_413_before_decoding():
    body = _j({"query": ["x" * 100]})
    with pytest.raises(RequestError) as exc_info:
        _parse(body, max_body_bytes=len(body) - 1)
    _assert_refused(exc_info, 413, f"{len(body)} bytes", f"limit is {len(body) - 1}")
    # Size is checked first: an oversized body of garbage is still 413, not 400.
    with pytest.raises(RequestError) as exc_info:
        _parse(b"\xff" * 50, max_body_bytes=10)
    _assert_refused(exc_info, 413, "50 bytes")


def test_body_exactly_at_the_limit_is_accepted():
    body = _j({"query": ["hello"]})
    assert _parse(body, max_body_bytes=len(body)).query == ["hello"]


def test_exactly_max_items_is_accepted():
    assert _parse(_j({"query": ["q"] * MAX_ITEMS})).query == ["q"] * MAX_ITEMS


def test_multiline_json_error_stays_one_line():
    with pytest.raises(RequestError) as exc_info:
        _parse(b'{\n  "query": [\n    "a",\n  ]\n}')
    _assert_refused(exc_info, 400, "not valid JSON", "line 4")


# --------------------------------------------------------------------------- valid requests


def test_valid_query_only():
    req = _parse(_j({"query": ["prompt one answer", "prompt two answer"]}))
    assert req == RewardRequest(["prompt one answer", "prompt two answer"], None, None)


def test_valid_with_prompts_and_labels():
    req = _parse(_j({"query": ["pa", "qb"], "prompts": ["p", "q"], "labels": [1, None]}))
    assert req.query == ["pa", "qb"]
    assert req.prompts == ["p", "q"]
    assert req.labels == [1, None]


def test_null_prompts_and_labels_mean_absent():
    req = _parse(_j({"query": ["a"], "prompts": None, "labels": None}))
    assert req.prompts is None and req.labels is None


def test_labels_may_hold_anything():
    req = _parse(_j({"query": ["a", "b"], "labels": [{"k": 1}, "text"]}))
    assert req.labels == [{"k": 1}, "text"]


def test_unknown_fields_are_ignored():
    req = _parse(_j({"query": ["a"], "log_context": {"step": 3}, "model": "x", "extra": [1, 2]}))
    assert req == RewardRequest(["a"], None, None)


def test_non_ascii_utf8_and_surrounding_whitespace_accepted():
    body = '{"query": ["  \\u2603 snow  ", "caf\u00e9 \U0001f600"]}'.encode()
    req = _parse(b"\n " + body + b" \n")
    assert req.query == ["  \u2603 snow  ", "caf\u00e9 \U0001f600"]


def test_validate_payload_direct_call():
    payload = {"query": ["a", "b"], "prompts": ["p", "q"]}
    req = validate_reward_payload(payload, max_items=2)
    assert req.query == ["a", "b"] and req.prompts == ["p", "q"] and req.labels is None
    # The request's query is a copy: mutating the payload afterwards does not change it.
    payload["query"].append("c")
    assert req.query == ["a", "b"]


@pytest.mark.parametrize(
    ("payload", "status", "fragment"),
    [
        (("query",), 422, "JSON object"),
        ({"query": ["ok", "\ud800"]}, 400, "query[1]"),
        ({"query": ["a", "b", "c"]}, 413, "limit is 2"),
        ({"query": ["a", 7]}, 422, "query[1]"),
    ],
    ids=["tuple", "lone-surrogate-str", "too-many", "non-string-item"],
)
def test_validate_payload_direct_refusals(payload, status, fragment):
    with pytest.raises(RequestError) as exc_info:
        validate_reward_payload(payload, max_items=2)
    _assert_refused(exc_info, status, fragment)


# --------------------------------------------------------------------------- bearer auth


@pytest.mark.parametrize("token", [None, ""])
@pytest.mark.parametrize("header", [None, "", "Bearer anything", "Basic abc", "garbage"])
def test_check_bearer_without_token_passes_anything(token, header):
    check_bearer(header, token)  # no exception


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "s3cret-tok",
        "Basic s3cret-tok",
        "Token s3cret-tok",
        "Bearer wrong",
        "Bearer s3cret-to",
        "Bearer s3cret-tokX",
        "Bearer S3CRET-TOK",
        "Bearers3cret-tok",
    ],
    ids=repr,
)
def test_check_bearer_refuses_with_401(header):
    with pytest.raises(RequestError) as exc_info:
        check_bearer(header, "s3cret-tok")
    _assert_refused(exc_info, 401, "bearer token")


@pytest.mark.parametrize(
    "header", ["Bearer s3cret-tok", "bearer s3cret-tok", "BEARER s3cret-tok", "Bearer  s3cret-tok "]
)
def test_check_bearer_accepts_the_right_token(header):
    check_bearer(header, "s3cret-tok")  # no exception


# --------------------------------------------------------------------------- error body


def test_error_body_collapses_to_one_line():
    assert error_body("bad\nthing\r\n  here\t now ") == {"error": "bad thing here now"}


def test_error_body_accepts_non_strings_and_keeps_plain_text():
    assert error_body("query[0] is empty") == {"error": "query[0] is empty"}
    assert error_body(ValueError("x\ny")) == {"error": "x y"}
    assert json.loads(json.dumps(error_body("a\nb"))) == {"error": "a b"}
