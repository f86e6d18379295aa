"""Models and what they are made of: presets and HF checkpoint loading (``modeling``), the
clean BPE tokenizer (``tokenizer``), LoRA adapters (``lora``), atomic checkpoints (``checkpoint``),
device and precision placement (``device``) and the one optimiser (``optim``).

May import: the top-level basics of ``rlhf`` (``errors``, ``chat``, ``stats``, ``metrics``,
``malloc``, ``kinds``). Nothing else in ``rlhf`` sits below it.
"""
