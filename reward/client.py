"""A small client for the reward service (or any server speaking OpenRLHF's remote-RM protocol).

Standard library only. Connection failures, timeouts and 429/502/503/504 answers are retried
with exponential backoff; any other 4xx is the caller's mistake and raises at once with the
server's one-line message.

Connections are kept alive (HTTP/1.1, one per calling thread): a new TCP connection per request
cost the client and the Serve proxy about a fifth of their CPU per request in
``bench/reward_serve.py``. A kept connection the server has closed in the meantime is reopened
once at no cost to ``retries``. The client connects directly (HTTP proxy environment variables
are not read).
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any

from rlhf.errors import RlhfError

RETRY_STATUS = frozenset({429, 502, 503, 504})


class RewardServiceError(RlhfError):
    """The service refused the request or stayed unreachable after the retries."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class RewardClient:
    """``RewardClient("http://127.0.0.1:8000").get_rewards([...])``.

    ``token`` defaults to the environment variable ``token_env`` (``RLHF_REWARD_TOKEN``).
    ``chunk_size`` splits long lists into several requests (keep it <= the server's ``max_items``).
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        timeout_s: float = 30.0,
        retries: int = 3,
        backoff_s: float = 0.5,
        chunk_size: int = 256,
        token_env: str = "RLHF_REWARD_TOKEN",
        sleep: Callable[[float], None] = time.sleep,
    ):
        if not url.lower().startswith(("http://", "https://")):
            raise RewardServiceError(f"reward service URL must start with http:// or https://, got {url!r}")
        if retries < 0 or timeout_s <= 0 or chunk_size < 1:
            raise ValueError("need retries >= 0, timeout_s > 0 and chunk_size >= 1")
        base = url.rstrip("/")
        for suffix in ("/get_reward", "/health"):
            base = base.removesuffix(suffix)
        self.base_url = base
        parts = urllib.parse.urlsplit(base)
        self._https = parts.scheme.lower() == "https"
        self._netloc = parts.netloc
        self._prefix = parts.path.rstrip("/")
        self._local = threading.local()  # this thread's kept-alive connection
        self.token = token if token is not None else os.environ.get(token_env) or None
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.chunk_size = chunk_size
        self._sleep = sleep

    def _connection(self, fresh: bool = False) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is not None and fresh:
            conn.close()
            conn = None
        if conn is None:
            kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            conn = kind(self._netloc, timeout=self.timeout_s)
            self._local.conn = conn
        return conn

    def close(self) -> None:
        """Close this thread's kept-alive connection (the next request opens a new one)."""
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            conn.close()

    def _exchange(self, method: str, path: str, data: bytes | None, headers: dict) -> tuple[int, bytes]:
        """One request on this thread's connection: (status, body). A kept connection the server
        closed while idle fails before any answer; that case is resent once on a new connection."""
        for fresh in (False, True):
            conn = self._connection(fresh)
            reused = conn.sock is not None
            try:
                conn.request(method, self._prefix + path, body=data, headers=headers)
                resp = conn.getresponse()
                body = resp.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.close()
                if reused and not fresh:
                    continue
                raise
            except BaseException:
                self.close()  # a timed-out or broken exchange leaves the connection unusable
                raise
            if resp.will_close:
                self.close()
            return resp.status, body
        raise AssertionError("unreachable")

    def _request(self, method: str, path: str, payload: Any = None) -> Any:
        data = None if payload is None else json.dumps(payload).encode("utf-8")
        headers = {"Content-Type": "application/json"} if data is not None else {}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                self._sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                status, body = self._exchange(method, path, data, headers)
            except http.client.InvalidURL as err:
                raise RewardServiceError(f"bad reward service URL {self.base_url!r}: {err}") from None
            except (http.client.HTTPException, OSError) as err:
                last = str(err) or type(err).__name__
                continue
            if status >= 400:
                message = _error_message(body, status)
                if status not in RETRY_STATUS:
                    raise RewardServiceError(f"{method} {path}: HTTP {status}: {message}", status)
                last = f"HTTP {status}: {message}"
                continue
            try:
                return json.loads(body.decode("utf-8"))
            except ValueError as err:  # a 200 whose body is not JSON
                raise RewardServiceError(f"{method} {path}: answer is not JSON ({err})") from None
        raise RewardServiceError(f"{method} {self.base_url}{path} failed after {self.retries + 1} attempts: {last}")

    def health(self) -> dict:
        return self._request("GET", "/health")

    def score(self, queries: Sequence[str], prompts: Sequence[str] | None = None) -> dict[str, list[float]]:
        """``{"rewards": [...], "scores": [...]}`` for full prompt+answer texts, in order."""
        out: dict[str, list[float]] = {"rewards": [], "scores": []}
        for start in range(0, len(queries), self.chunk_size):
            payload: dict[str, Any] = {"query": list(queries[start : start + self.chunk_size])}
            if prompts is not None:
                payload["prompts"] = list(prompts[start : start + self.chunk_size])
            answer = self._request("POST", "/get_reward", payload)
            n = len(payload["query"])
            rewards = answer.get("rewards") if isinstance(answer, dict) else None
            scores = answer.get("scores", rewards) if isinstance(answer, dict) else None
            if not (_numbers(rewards, n) and _numbers(scores, n)):
                raise RewardServiceError("reward service answered without one numeric reward and score per query")
            out["rewards"] += [float(r) for r in rewards]
            out["scores"] += [float(s) for s in scores]
        return out

    def get_rewards(self, queries: Sequence[str], prompts: Sequence[str] | None = None) -> list[float]:
        return self.score(queries, prompts)["rewards"]


def _numbers(values: Any, n: int) -> bool:
    return (
        isinstance(values, list)
        and len(values) == n
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    )


def _error_message(body: bytes, status: int) -> str:
    try:
        answer = json.loads(body.decode("utf-8"))
        return str(answer.get("error", answer))
    except Exception:  # noqa: BLE001 - any unreadable error body
        return http.client.responses.get(status, "error")
