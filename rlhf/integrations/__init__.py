"""Bridges to other trainers: defection tracking from inside their training loops (``trl``:
``DefectionCallback`` for any ``transformers.Trainer``).

May import: every other subpackage of ``rlhf`` (it is the top layer; nothing in ``rlhf/`` imports
it), ``transformers``. Never Ray: the callback evaluates in the trainer's own process.
"""
