"""Fuzzing and load on the HTTP services: malformed requests of many kinds always get a 4xx
(never a 5xx) and the services keep serving; 32 concurrent clients get no errors.

CI runs short versions; the slow ones are the full figures (>= 1,000 requests per service,
30 s of load)."""

import http.client
import json
import threading
import time
import urllib.parse
from collections import Counter

import pytest

from actors.evaluator import MAX_PROMPTS, evaluator_app
from actors.reward_service import ensure_serve, reward_service
from rlhf.config import build_config
from tests.fuzz_requests import KINDS, corpus
from tests.ray.conftest import PPO_TEST_OVERRIDES, non_loopback

pytestmark = pytest.mark.ray
MAX_ITEMS = 64


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
