"""The typed configuration tree of every command: defaults < YAML < ``--set`` (``core``), the
``ppo`` section (``ppo``) and the runtime sections: resources, serving, cluster (``runtime``).

May import: the top-level basics and ``rlhf.models`` (device placement and optimiser settings are
config types owned there).
"""
