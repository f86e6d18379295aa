"""reward.client.RewardClient against a real tiny HTTP server on 127.0.0.1 (no Ray, no model)."""

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from reward.client import RewardClient, RewardServiceError
from rlhf.errors import RlhfError

HOST = "127.0.0.1"


class _Handler(BaseHTTPRequestHandler):
    """Records every request, then answers with the next scripted reply (or echoes rewards)."""

    protocol_version = "HTTP/1.1"

    def _serve(self):
        server = self.server
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        with server.lock:
            server.requests.append(
                {
                    "method": self.command,
                    "path": self.path,
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                    "body": json.loads(raw) if raw else None,
                }
            )
            reply = server.script.pop(0) if server.script else None
        if reply is None:
            reply = _echo(self.command, self.path, raw)
        status, body, delay = reply
        if delay:
            server.stop.wait(delay)
            if server.stop.is_set():
                return
        data = body if isinstance(body, bytes) else json.dumps(body).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client gave up (timeout) and closed the socket
            pass
        if server.drop_idle:  # close silently after answering, as an idle keep-alive timeout does
            self.close_connection = True

    def setup(self):
        super().setup()
        with self.server.lock:
            self.server.connections += 1

    do_GET = _serve
    do_POST = _serve

    def log_message(self, format, *args):  # keep test output quiet
        pass


def _echo(method, path, raw):
    if method == "GET" and path == "/health":
        return 200, {"status": "ok"}, 0
    if method == "POST" and path == "/get_reward":
        query = json.loads(raw)["query"]
        rewards = [float(len(q)) for q in query]
        return 200, {"rewards": rewards, "scores": [r * 10 for r in rewards]}, 0
    return 404, {"error": f"no route {method} {path}"}, 0


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__((HOST, 0), _Handler)
        self.requests: list[dict] = []
        self.script: list[tuple[int, object, float]] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.connections = 0
        self.drop_idle = False

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.server_address[1]}"

    def handle_error(self, request, client_address):  # sockets the client already closed
        pass


@pytest.fixture
def server(request):
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()

    def _finish():
        srv.stop.set()
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)

    request.addfinalizer(_finish)
    return srv


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    monkeypatch.delenv("RLHF_REWARD_TOKEN", raising=False)
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def delays():
    return []


def _client(url, delays, **kw):
    kw.setdefault("timeout_s", 5.0)
    kw.setdefault("backoff_s", 0.25)
    return RewardClient(url, sleep=lambda s: delays.append(s), **kw)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------- construction


@pytest.mark.parametrize(
    ("url", "base"),
    [
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
        ("http://127.0.0.1:8000/", "http://127.0.0.1:8000"),
        ("http://127.0.0.1:8000/get_reward", "http://127.0.0.1:8000"),
        ("http://127.0.0.1:8000/get_reward/", "http://127.0.0.1:8000"),
        ("http://127.0.0.1:8000/health", "http://127.0.0.1:8000"),
        ("http://127.0.0.1:8000/health/", "http://127.0.0.1:8000"),
        ("https://127.0.0.1:8443/api/get_reward", "https://127.0.0.1:8443/api"),
        ("http://127.0.0.1:8000/api/", "http://127.0.0.1:8000/api"),
    ],
)
def test_url_normalisation(url, base):
    assert RewardClient(url).base_url == base


@pytest.mark.parametrize("url", ["127.0.0.1:8000", "ftp://127.0.0.1/x", "file:///etc/passwd", "", "localhost"])
def test_non_http_url_raises(url):
    with pytest.raises(RewardServiceError) as exc_info:
        RewardClient(url)
    assert isinstance(exc_info.value, RlhfError)
    assert "http://" in str(exc_info.value) and "\n" not in str(exc_info.value)


@pytest.mark.parametrize("kw", [{"retries": -1}, {"timeout_s": 0}, {"chunk_size": 0}])
def test_bad_settings_raise_value_error(kw):
    with pytest.raises(ValueError):
        RewardClient("http://127.0.0.1:1", **kw)


def test_token_sources(monkeypatch):
    assert RewardClient("http://127.0.0.1:1").token is None
    monkeypatch.setenv("RLHF_REWARD_TOKEN", "from-env")
    assert RewardClient("http://127.0.0.1:1").token == "from-env"
    assert RewardClient("http://127.0.0.1:1", token="explicit").token == "explicit"
    monkeypatch.setenv("OTHER_TOKEN", "other")
    assert RewardClient("http://127.0.0.1:1", token_env="OTHER_TOKEN").token == "other"
    monkeypatch.setenv("RLHF_REWARD_TOKEN", "")
    assert RewardClient("http://127.0.0.1:1").token is None


# --------------------------------------------------------------------------- requests


def test_get_rewards_posts_query_without_auth_header(server, delays):
    client = _client(server.url + "/get_reward", delays)
    assert client.get_rewards(["a", "bbb"]) == [1.0, 3.0]
    assert len(server.requests) == 1
    req = server.requests[0]
    assert req["method"] == "POST" and req["path"] == "/get_reward"
    assert req["body"] == {"query": ["a", "bbb"]}
    assert req["headers"]["content-type"] == "application/json"
    assert "authorization" not in req["headers"]
    assert delays == []


def test_get_rewards_sends_prompts_when_given(server, delays):
    client = _client(server.url, delays)
    assert client.get_rewards(["pa", "qbb"], prompts=["p", "q"]) == [2.0, 3.0]
    assert server.requests[0]["body"] == {"query": ["pa", "qbb"], "prompts": ["p", "q"]}


def test_explicit_token_sends_bearer_header(server, delays):
    _client(server.url, delays, token="s3cret").get_rewards(["x"])
    assert server.requests[0]["headers"]["authorization"] == "Bearer s3cret"


def test_token_from_env_sends_bearer_header(server, delays, monkeypatch):
    monkeypatch.setenv("RLHF_REWARD_TOKEN", "env-tok")
    _client(server.url, delays).get_rewards(["x"])
    assert server.requests[0]["headers"]["authorization"] == "Bearer env-tok"


def test_explicit_token_wins_over_env(server, delays, monkeypatch):
    monkeypatch.setenv("RLHF_REWARD_TOKEN", "env-tok")
    _client(server.url, delays, token="explicit").get_rewards(["x"])
    assert server.requests[0]["headers"]["authorization"] == "Bearer explicit"


def test_score_returns_rewards_and_scores(server, delays):
    out = _client(server.url, delays).score(["ab", "c"])
    assert out == {"rewards": [2.0, 1.0], "scores": [20.0, 10.0]}


def test_scores_default_to_rewards_when_absent(server, delays):
    server.script.append((200, {"rewards": [0.5, -1]}, 0))
    assert _client(server.url, delays).score(["a", "b"]) == {"rewards": [0.5, -1.0], "scores": [0.5, -1.0]}


def test_health_gets_health(server, delays):
    assert _client(server.url + "/health/", delays).health() == {"status": "ok"}
    req = server.requests[0]
    assert req["method"] == "GET" and req["path"] == "/health" and req["body"] is None
    assert "content-type" not in req["headers"]


def test_chunking_splits_requests_and_keeps_order(server, delays):
    queries = ["a", "bb", "ccc", "dddd", "eeeee"]
    prompts = ["p1", "p2", "p3", "p4", "p5"]
    client = _client(server.url, delays, chunk_size=2)
    assert client.get_rewards(queries, prompts=prompts) == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert [r["body"] for r in server.requests] == [
        {"query": ["a", "bb"], "prompts": ["p1", "p2"]},
        {"query": ["ccc", "dddd"], "prompts": ["p3", "p4"]},
        {"query": ["eeeee"], "prompts": ["p5"]},
    ]


def test_empty_query_list_sends_nothing(server, delays):
    assert _client(server.url, delays).get_rewards([]) == []
    assert server.requests == []


# --------------------------------------------------------------------------- retries and failures


def test_503_twice_then_200_succeeds_after_backoff(server, delays):
    server.script += [(503, {"error": "warming up"}, 0), (503, {"error": "warming up"}, 0)]
    client = _client(server.url, delays, retries=3, backoff_s=0.25)
    assert client.get_rewards(["ab"]) == [2.0]
    assert len(server.requests) == 3
    assert delays == [0.25, 0.5]


@pytest.mark.parametrize("status", [429, 502, 504])
def test_other_retryable_statuses(server, delays, status):
    server.script.append((status, {"error": "busy"}, 0))
    assert _client(server.url, delays, retries=1).get_rewards(["x"]) == [1.0]
    assert len(server.requests) == 2 and delays == [0.25]


def test_422_raises_immediately_with_server_message(server, delays):
    server.script.append((422, {"error": "query[0] is empty"}, 0))
    client = _client(server.url, delays, retries=3)
    with pytest.raises(RewardServiceError) as exc_info:
        client.get_rewards(["x"])
    err = exc_info.value
    assert err.status == 422
    assert "query[0] is empty" in str(err) and "422" in str(err)
    assert len(server.requests) == 1
    assert delays == []


@pytest.mark.parametrize("status", [400, 401, 404, 413, 500])
def test_non_retryable_statuses_raise_at_once(server, delays, status):
    server.script.append((status, {"error": f"refused {status}"}, 0))
    with pytest.raises(RewardServiceError) as exc_info:
        _client(server.url, delays, retries=3).get_rewards(["x"])
    assert exc_info.value.status == status and f"refused {status}" in str(exc_info.value)
    assert len(server.requests) == 1 and delays == []


def test_error_body_that_is_not_json_still_gives_a_message(server, delays):
    server.script.append((400, b"<html>bad</html>", 0))
    with pytest.raises(RewardServiceError) as exc_info:
        _client(server.url, delays).get_rewards(["x"])
    assert exc_info.value.status == 400 and "HTTP 400" in str(exc_info.value)


def test_retries_exhausted(server, delays):
    server.script += [(503, {"error": "overloaded"}, 0)] * 3
    client = _client(server.url, delays, retries=2, backoff_s=0.1)
    with pytest.raises(RewardServiceError) as exc_info:
        client.get_rewards(["x"])
    msg = str(exc_info.value)
    assert "after 3 attempts" in msg and "HTTP 503" in msg and "overloaded" in msg
    assert server.url in msg
    assert exc_info.value.status is None
    assert len(server.requests) == 3
    assert delays == [0.1, 0.2]


def test_retries_zero_means_one_attempt(server, delays):
    server.script.append((503, {"error": "overloaded"}, 0))
    with pytest.raises(RewardServiceError, match="after 1 attempts"):
        _client(server.url, delays, retries=0).get_rewards(["x"])
    assert len(server.requests) == 1 and delays == []


def test_connection_refused_is_retried_then_fails(delays):
    port = _free_port()  # bound and closed again: nothing listens there now
    client = _client(f"http://{HOST}:{port}", delays, retries=2, backoff_s=0.01, timeout_s=2.0)
    with pytest.raises(RewardServiceError) as exc_info:
        client.get_rewards(["x"])
    msg = str(exc_info.value)
    assert "after 3 attempts" in msg and "refused" in msg.lower()
    assert delays == [0.01, 0.02]  # retries + 1 attempts, with a backoff before each retry


def test_wrong_number_of_rewards_raises(server, delays):
    server.script.append((200, {"rewards": [1.0]}, 0))
    with pytest.raises(RewardServiceError, match="one numeric reward and score per query"):
        _client(server.url, delays).get_rewards(["a", "b"])
    assert len(server.requests) == 1 and delays == []


@pytest.mark.parametrize("body", [{"scores": [1.0]}, {"rewards": 1.0}, [1.0]], ids=["no-rewards", "scalar", "list"])
def test_answer_without_a_rewards_list_raises(server, delays, body):
    server.script.append((200, body, 0))
    with pytest.raises(RewardServiceError, match="one numeric reward and score per query"):
        _client(server.url, delays).get_rewards(["a"])


def test_200_that_is_not_json_raises_without_retry(server, delays):
    server.script.append((200, b"not json", 0))
    with pytest.raises(RewardServiceError, match="not JSON"):
        _client(server.url, delays, retries=3).get_rewards(["a"])
    assert len(server.requests) == 1 and delays == []


def test_read_timeout_is_retried_then_fails(server, delays):
    server.script += [(200, {"rewards": [1.0]}, 10.0)] * 2  # released early by the fixture's finalizer
    client = _client(server.url, delays, retries=1, backoff_s=0.01, timeout_s=0.2)
    with pytest.raises(RewardServiceError) as exc_info:
        client.get_rewards(["x"])
    msg = str(exc_info.value)
    assert "after 2 attempts" in msg and "timed out" in msg
    assert len(server.requests) == 2
    assert delays == [0.01]


def test_timeout_then_success(server, delays):
    server.script.append((200, {"rewards": [9.0]}, 10.0))
    client = _client(server.url, delays, retries=2, backoff_s=0.01, timeout_s=0.2)
    assert client.get_rewards(["abc"]) == [3.0]  # second attempt hits the echo
    assert len(server.requests) == 2 and delays == [0.01]


@pytest.mark.parametrize(
    "body",
    [{"rewards": [1.0], "scores": [1.0, 2.0]}, {"rewards": [None]}, {"rewards": [True]}, {"rewards": ["1"]}],
    ids=["scores-length", "null", "bool", "string"],
)
def test_answer_with_misaligned_or_non_numeric_values_raises(server, delays, body):
    server.script.append((200, body, 0))
    with pytest.raises(RewardServiceError, match="numeric reward and score"):
        _client(server.url, delays).get_rewards(["a"])


def test_malformed_port_is_a_one_line_client_error():
    with pytest.raises(RewardServiceError, match="bad reward service URL"):
        RewardClient("http://127.0.0.1:abc", retries=0).get_rewards(["a"])


def test_scheme_check_ignores_case():
    assert RewardClient("HTTP://127.0.0.1:9/get_reward").base_url == "HTTP://127.0.0.1:9"


# --------------------------------------------------------------------------- keep-alive


def test_requests_from_one_thread_share_one_connection(server, delays):
    client = _client(server.url, delays)
    for _ in range(5):
        assert client.get_rewards(["ab"]) == [2.0]
    assert client.health() == {"status": "ok"}
    assert server.connections == 1 and len(server.requests) == 6


def test_each_thread_has_its_own_connection(server, delays):
    client = _client(server.url, delays)
    threads = [threading.Thread(target=lambda: [client.get_rewards(["a"]) for _ in range(3)]) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(server.requests) == 9 and server.connections == 3


def test_connection_closed_by_the_server_is_reopened_without_a_retry(server, delays):
    server.drop_idle = True
    client = _client(server.url, delays, retries=0)
    assert [client.get_rewards(["abc"]) for _ in range(3)] == [[3.0]] * 3
    assert delays == [] and len(server.requests) == 3 and server.connections == 3


def test_close_then_reconnect(server, delays):
    client = _client(server.url, delays)
    client.get_rewards(["a"])
    client.close()
    client.get_rewards(["a"])
    assert server.connections == 2


def test_base_path_prefix_is_kept(server, delays):
    with pytest.raises(RewardServiceError, match="HTTP 404"):
        _client(server.url + "/api", delays, retries=0).get_rewards(["a"])
    assert server.requests[-1]["path"] == "/api/get_reward"
