"""PPO safety training: the math (``losses``), chunked log-probs and entropies (``logprobs``),
advantage estimators (``advantages``), the pure
objects behind the role actors (``models``), the RL prompt pool (``prompts``), role handles
(``roles``) and the phase-driven trainer (``trainer``). It knows roles only through handles; the
Ray actors live in ``actors/``.

May import: everything up to ``eval`` (not ``train`` or ``sweep``).
"""
