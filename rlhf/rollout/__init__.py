"""Rollout backends and weight sync: the backend protocol and the Hugging Face ``generate``
backend (``hf``), and the one publish/subscribe weight interface (``weight_sync``).

May import: the top-level basics and ``rlhf.models``.
"""
