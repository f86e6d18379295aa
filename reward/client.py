"""A small client for the reward service (or any server speaking OpenRLHF's remote-RM protocol).

Standard library only. Connection failures, timeouts and 429/502/503/504 answers are retried
with exponential backoff; any other 4xx is the caller's mistake and raises at once with the
server's one-line message.
"""

from __future__ import annotations

import http.client
import json
import os
import time
import urllib.error
import urllib.request
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
        self.token = token if token is not None else os.environ.get(token_env) or None
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.chunk_size = chunk_size
        self._sleep = sleep

    def _request(self, method: str, path: str, payload: Any = None) -> Any:
        data = None if payload is None else json.dumps(payload).encode("utf-8")
        headers = {"Content-Type": "application/json"} if data is not None else {}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                self._sleep(self.backoff_s * 2 ** (attempt - 1))
            req = urllib.request.Request(self.base_url + path, data=data, headers=headers, method=method)
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:  # noqa: S310 - http(s) checked above
                    return json.loads(resp.read().decode("utf-8"))
            except urllib.error.HTTPError as err:
                message = _error_message(err)
                if err.code not in RETRY_STATUS:
                    raise RewardServiceError(f"{method} {path}: HTTP {err.code}: {message}", err.code) from None
                last = f"HTTP {err.code}: {message}"
            except http.client.InvalidURL as err:
                raise RewardServiceError(f"bad reward service URL {self.base_url!r}: {err}") from None
            except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
                last = str(getattr(err, "reason", err)) or type(err).__name__
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


def _error_message(err: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(err.read().decode("utf-8"))
        return str(body.get("error", body))
    except Exception:  # noqa: BLE001 - any unreadable error body
        return err.reason if isinstance(err.reason, str) else "error"
