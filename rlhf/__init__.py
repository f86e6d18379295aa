"""The pure core of the project: Python and torch only, never Ray or vLLM.

Subpackages by concern, lowest first (each imports only the ones before it; the order is checked
by ``tests/unit/test_import_graph.py``): ``models`` (presets, tokenizer, LoRA, device,
checkpoints, optimiser) -> ``config`` (the typed config tree) -> ``judge`` (defection detectors)
-> ``data`` (backdoor, HHH, red-team and safety datasets; the backdoor kinds) -> ``rollout``
(sampling backends, weight sync) -> ``eval`` (defection rates, steering) -> ``train`` (SFT,
distillation) and ``ppo`` (PPO math, trainer) -> ``sweep`` (the persistence sweep).

The modules left at the top are the basics every layer may use: ``errors``, ``chat``,
``stats``, ``metrics``, ``malloc`` and ``kinds`` (the backdoor-kind registry).
"""
