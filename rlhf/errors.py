"""Typed errors raised at the boundaries (config, data, checkpoints, requests).

The CLI turns any ``RlhfError`` into one line on stderr and exit code 2; the services turn
them into 4xx answers. Messages are single lines that name the key or path at fault.
"""

from __future__ import annotations


class RlhfError(Exception):
    """Base class: a user-facing failure with a one-line message."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class ConfigError(RlhfError):
    """An unknown key, a wrong type or an unreadable config file."""


class DataError(RlhfError):
    """A missing, unreadable or malformed data file or line."""


class CheckpointError(RlhfError):
    """A model directory that is missing, not a Hugging Face checkpoint, or corrupt."""
