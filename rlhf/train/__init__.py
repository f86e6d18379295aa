"""Supervised training cores: backdoor and safety SFT (``sft``), chain-of-thought distillation
(``distill``) and post-scratchpad safety SFT (``post_scratchpad``). Pure torch; the Ray Train
launchers in ``actors/`` drive them.

May import: everything up to ``eval`` (the basics, ``models``, ``config``, ``judge``, ``data``,
``rollout``, ``eval``).
"""
