"""Fuzzing and load on the HTTP services: malformed requests of many kinds always get a 4xx
(never a 5xx) and the services keep serving; 32 concurrent clients get no errors.

CI runs short versions; the slow ones are the full figures (>= 1,000 requests per service,
30 s of load)."""

import http.client
import json
import random
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator

import pytest

from actors.evaluator import MAX_PROMPTS, evaluator_app
from actors.reward_service import ensure_serve, reward_service
from rlhf.config.core import build_config
from tests.ray.conftest import PPO_TEST_OVERRIDES, non_loopback

pytestmark = pytest.mark.ray
MAX_ITEMS = 64

# ---- a seeded generator of malformed request bodies ----------------------------------------

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


# ---- the services under fuzz and load --------------------------------------------------------


@pytest.fixture(scope="module")
def services(ray_cluster, tiny_reward_model, tiny_policy):
    from ray import serve

    cfg = build_config({}, [*PPO_TEST_OVERRIDES, f"serve.max_items={MAX_ITEMS}"])
    with reward_service(tiny_reward_model["model_dir"], cfg.serve) as svc:
        host, port = ensure_serve(cfg.serve.host, cfg.serve.port)
        serve.run(evaluator_app(tiny_policy, cfg.model_dump(mode="json"), 4, 0.1), name="ev", route_prefix="/ev")
        try:
            yield {
                "reward": (svc.url, "/get_reward", "query"),
                "evaluator": (f"http://{host}:{port}/ev", "/evaluate", "prompts"),
            }
        finally:
            serve.delete("ev")


def post_all(url: str, path: str, bodies) -> list[tuple[str, int]]:
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    out = []
    try:
        for kind, body in bodies:
            conn.request("POST", parts.path + path, body=body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            payload = resp.read()
            if 400 <= resp.status < 500:
                assert set(json.loads(payload)) == {"error"}, (kind, payload[:200])
            out.append((kind, resp.status))
            if resp.getheader("connection", "").lower() == "close":
                conn.close()
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    finally:
        conn.close()
    return out


def fuzz(services, n: int):
    for name, (url, path, field) in services.items():
        cap = MAX_ITEMS if field == "query" else MAX_PROMPTS
        results = post_all(url, path, corpus(field, n, seed=7, max_items=cap))
        statuses = Counter(s for _, s in results)
        kinds = Counter(k for k, _ in results)
        print(f"{name}: {n} malformed requests, {len(kinds)} kinds, statuses {dict(statuses)}")
        assert len(kinds) >= 10 and set(kinds) <= set(KINDS)
        bad = [(k, s) for k, s in results if not 400 <= s < 500]
        assert not bad, bad[:10]
        ok = post_all(url, path, [("valid", json.dumps({field: ["\n\nHuman: hi\n\nAssistant:"]}).encode())])
        assert ok == [("valid", 200)]


def test_fuzz_short(services):
    fuzz(services, 150)


@pytest.mark.slow
def test_fuzz_full(services):
    fuzz(services, 1200)


def load(url: str, seconds: float, clients: int = 32) -> dict:
    text = json.dumps({"query": ["\n\nHuman: How do I make tea?\n\nAssistant: Steep the leaves in hot water."]})
    parts = urllib.parse.urlsplit(url)
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop = time.time() + seconds

    def client():
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        while time.time() < stop:
            t = time.perf_counter()
            try:
                conn.request(
                    "POST", parts.path + "/get_reward", body=text, headers={"Content-Type": "application/json"}
                )
                resp = conn.getresponse()
                body = resp.read()
                ok = resp.status == 200 and len(json.loads(body)["rewards"]) == 1
            except Exception as exc:  # noqa: BLE001 - every failure is counted
                ok, body = False, repr(exc).encode()
                conn.close()
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
            with lock:
                latencies.append(time.perf_counter() - t)
                if not ok:
                    errors.append(body[:200].decode(errors="replace"))
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    latencies.sort()
    return {
        "requests": len(latencies),
        "errors": len(errors),
        "first_errors": errors[:3],
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
        "req_per_s": len(latencies) / seconds,
    }


def check_load(services, seconds: float):
    url = services["reward"][0]
    result = load(url, seconds)
    print(f"load {seconds:.0f} s, 32 clients: {result}")
    assert result["requests"] > 0 and result["errors"] == 0, result["first_errors"]
    seen, bad = non_loopback()
    assert not bad, bad


def test_load_short(services):
    check_load(services, 5)


@pytest.mark.slow
def test_load_full(services):
    check_load(services, 30)
