"""Measuring a policy: trigger-conditioned defection rates per condition (``evaluate``) and
scratchpad steering (``steer``).

May import: the basics, ``models``, ``config``, ``judge``, ``data`` and ``rollout``.
"""
