"""Where a model runs and in which precision: ``resources.device`` and ``resources.precision``.

One ``Placement`` travels to every stage (Ray Train workers, the PPO roles, rollout, the reward
scorer, the evaluator) as plain data. The precision policy:

- ``fp32``: fp32 weights, fp32 maths (the default; bit-identical to the CPU runs before).
- ``bf16``: models that train (SFT, RM, PPO policy and critic) keep fp32 weights and fp32
  optimiser state and run their forward passes under bf16 autocast (mixed precision).
  Frozen models whose log-probs meet the policy's in PPO's ratio or KL (the reference, the HF
  rollout workers, for sampling and for behaviour log-probs) *mirror* the policy
  (``Placement.place_mirror``): the weights autocast would round to bf16 on every call (linear
  layers not tied to an embedding) are stored in bf16, everything else (embeddings, norms,
  buffers) stays fp32, and they run under the same autocast, so they compute bit for bit what the
  policy computes from the same weights (KL 0 before the first update, behaviour = pi_old).
  Other frozen models (reward model, evaluator, eval/steer/red-team) hold bf16 weights.

Outputs that leave a role (log-probs, values, rewards) come back as fp32 CPU tensors, so what
travels between roles never depends on the device.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from typing import Any

import torch

from rlhf.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16")


def cuda_available() -> bool:
    return torch.cuda.is_available()


def resolve_device(requested: str, visible_gpus: float | None = None) -> str:
    """``auto|cpu|cuda`` -> ``cpu`` or ``cuda``. ``visible_gpus``: the GPUs a cluster offers (None:
    this process's own CUDA devices). Asking for CUDA where there is none is a one-line ``ConfigError``."""
    if requested not in DEVICES:
        raise ConfigError(f"resources.device must be one of {', '.join(DEVICES)}, got {requested!r}")
    have = cuda_available() if visible_gpus is None else visible_gpus > 0
    if requested == "cuda" and not have:
        where = "this machine" if visible_gpus is None else "the Ray cluster"
        raise ConfigError(f"resources.device=cuda but {where} has no CUDA GPU; use resources.device=cpu or auto")
    if requested == "auto":
        return "cuda" if have else "cpu"
    return requested


@dataclass(frozen=True)
class Placement:
    """A resolved device (``cpu``/``cuda``), the precision and gradient checkpointing."""

    device: str = "cpu"
    precision: str = "fp32"
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "cuda"):
            raise ConfigError(f"a placement needs a resolved device (cpu or cuda), got {self.device!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"resources.precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")

    @property
    def bf16(self) -> bool:
        return self.precision == "bf16"

    @property
    def frozen_dtype(self) -> torch.dtype:
        """The weight dtype of a model that never trains."""
        return torch.bfloat16 if self.bf16 else torch.float32

    def autocast(self) -> contextlib.AbstractContextManager:
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device, dtype=torch.bfloat16)

    def place(self, model: torch.nn.Module, trainable: bool) -> torch.nn.Module:
        """Move ``model`` to the device; frozen models take the frozen dtype, trained ones stay fp32
        (with gradient checkpointing when asked and the model supports it)."""
        model = model.to(self.device) if trainable else model.to(self.device, dtype=self.frozen_dtype)
        if trainable and self.gradient_checkpointing and hasattr(model, "gradient_checkpointing_enable"):
            model.gradient_checkpointing_enable()
        return model

    def place_mirror(self, model: torch.nn.Module) -> torch.nn.Module:
        """Move a frozen ``model`` to the device laid out to compute, under ``autocast()``, exactly what
        a trained (fp32) copy of it computes: in bf16, the weights and biases of its linear layers
        (``nn.Linear``, GPT-2's ``Conv1D``) not tied to an embedding become bf16 (the rounding autocast
        applies to them on every call); everything else stays fp32. In fp32 this is ``place``."""
        model = model.to(self.device)
        if not self.bf16:
            return model
        tied = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
        for module in model.modules():
            linear = isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"
            if linear and id(getattr(module, "weight", None)) not in tied:
                for param in module.parameters(recurse=False):
                    param.data = param.data.to(torch.bfloat16)
        return model

    def to(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(self.device, non_blocking=True) if self.device != "cpu" else tensor

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Placement:
        return cls(**data) if data else cls()


def to_host(tensor: torch.Tensor) -> torch.Tensor:
    """What a role returns: fp32 on the CPU (floating tensors), ids unchanged."""
    if tensor.is_floating_point():
        tensor = tensor.float()
    return tensor.cpu()


def placement_for(resources: Any, visible_gpus: float | None = None) -> Placement:
    """The ``Placement`` of a config's ``resources`` section, its device resolved here."""
    return Placement(
        resolve_device(resources.device, visible_gpus), resources.precision, resources.gradient_checkpointing
    )
