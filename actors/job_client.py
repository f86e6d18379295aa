"""Ray's Jobs API (``ray.job_submission``), for ``rlhf submit``, ``rlhf jobs`` and ``rlhf cluster``.

jobs/submit.py holds the commands and their messages; everything that touches Ray is here: the
client, Ray's authentication error (turned into ``TokenRefused``), the client's view of the
server's Ray version and the ``.gitignore``-style matcher Ray itself applies to ``excludes``.
Ray is imported inside the functions: the ``rlhf`` CLI starts without it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


class TokenRefused(Exception):
    """The Jobs API refused the token (Ray's ``AuthenticationError``); the message is Ray's."""


def _refused(exc: BaseException) -> TokenRefused:
    return TokenRefused(str(exc).strip() or type(exc).__name__)


def open_client(url: str, headers: dict[str, str]):
    """A ``JobSubmissionClient`` for the dashboard at ``url``. Raises ``TokenRefused``, or
    ``ConnectionError``/``OSError``/``RuntimeError`` (Ray's own) when nobody answers."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(url, headers=headers)
    except AuthenticationError as exc:
        raise _refused(exc) from exc


def call(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` for a client method; Ray's ``AuthenticationError`` becomes ``TokenRefused``,
    every other error (``RuntimeError`` for a 404, ``ConnectionError``...) passes unchanged."""
    from ray.exceptions import AuthenticationError

    try:
        return fn(*args)
    except AuthenticationError as exc:
        raise _refused(exc) from exc


def server_ray_version(client) -> str | None:
    """The Ray version the Jobs API server reported when the client connected."""
    return getattr(client, "_server_ray_version", None)


def working_dir_size(path: Path, excludes: list[str], limit: int) -> int:
    """Bytes that would be uploaded (files not matched by ``excludes``, with Ray's own matcher);
    stops counting past ``limit``."""
    from ray._private.thirdparty.pathspec import PathSpec

    spec = PathSpec.from_lines("gitwildmatch", excludes)
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        rel = Path(dirpath).relative_to(path)
        dirnames[:] = [d for d in dirnames if not spec.match_file(f"{(rel / d).as_posix()}/")]
        for name in filenames:
            f = Path(dirpath) / name
            if spec.match_file((rel / name).as_posix()) or f.is_symlink():
                continue
            try:
                total += f.stat().st_size
            except OSError:
                continue
            if total > limit:
                return total
    return total
