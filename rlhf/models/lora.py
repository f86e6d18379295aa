"""Optional LoRA adapters (``peft``) on a causal LM, and merging them back into plain weights.

``model.lora.enabled`` wraps the SFT model (each Ray Train worker) and the PPO policy with
adapters: only the adapter weights train, the base stays frozen. Whatever leaves a trainer is a
plain Hugging Face model: ``rlhf.models.checkpoint.save_hf_dir`` saves ``merged_model`` and the PPO
policy publishes ``merged_state_dict``, so rollout workers, the reference, evaluators and the next
stage never see an adapter. peft is imported only when LoRA is on.
"""

from __future__ import annotations

import copy
import sys

ALL_LINEAR = "all-linear"


def lora_settings(cfg) -> dict | None:
    """The ``model.lora`` section as plain data when enabled (it travels to Ray workers), else None."""
    lora = cfg.model.lora
    return lora.model_dump() if lora.enabled else None


def target_modules(model, settings: dict) -> list[str] | str | None:
    """The configured module names; unset: None where peft knows the architecture (its default, e.g.
    ``q_proj``/``v_proj`` for Llama and Qwen2, ``c_attn`` for GPT-2), else every linear layer."""
    if settings.get("target_modules"):
        return list(settings["target_modules"])
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

    return None if getattr(model.config, "model_type", None) in DEFAULTS else ALL_LINEAR


def apply_lora(model, settings: dict):
    """``model`` wrapped in LoRA adapters (rank ``r``, ``alpha``, ``dropout``, ``target_modules``);
    the base weights are frozen, the adapters trainable."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=int(settings["r"]),
        lora_alpha=int(settings["alpha"]),
        lora_dropout=float(settings["dropout"]),
        target_modules=target_modules(model, settings),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def is_lora(model) -> bool:
    """True for a peft-wrapped model (without importing peft when nothing loaded it)."""
    if "peft" not in sys.modules:
        return False
    from peft import PeftModel

    return isinstance(model, PeftModel)


def merged_model(model):
    """A plain HF model: ``model`` itself, or for a LoRA model a copy with the adapters merged in
    (the trained model keeps its adapters)."""
    if not is_lora(model):
        return model
    return copy.deepcopy(model).merge_and_unload()


def merged_state_dict(model) -> dict:
    """CPU copies of the plain model's weights (adapters merged), under the base model's names
    (``iter_merged_state``, collected)."""
    return dict(iter_merged_state(model))


def iter_merged_state(model):
    """``(name, CPU copy)`` of each weight of the plain model (adapters merged), under the base model's
    names, one at a time: a LoRA model is merged layer by layer into the outgoing copies (``base +
    delta`` of each adapted layer, one layer's delta at a time), so the model is never copied whole
    and keeps its adapters, and a caller that forwards each copy (a bucketed weight publish) holds
    only what it has not yet sent."""
    import torch

    if not is_lora(model):
        for k, v in model.state_dict().items():
            yield k, v.detach().to("cpu", copy=True)
        return
    base = model.get_base_model()  # the HF model, its adapted layers wrapped in place
    state = base.state_dict()
    if any("modules_to_save" in k for k in state):  # whole trained copies of modules: peft's own merge
        for k, v in merged_model(model).state_dict().items():
            yield k, v.detach().to("cpu", copy=True)
        return
    adapted = {name: m for name, m in base.named_modules() if hasattr(m, "base_layer") and hasattr(m, "lora_A")}
    for key, value in state.items():
        if ".lora_" in key:
            continue
        with torch.no_grad():
            out = value.detach().to("cpu", copy=True)
            layer = adapted.get(key.removesuffix(".base_layer.weight")) if key.endswith(".base_layer.weight") else None
            for adapter in layer.active_adapters if layer is not None else []:
                if adapter in layer.lora_A:
                    out += layer.get_delta_weight(adapter).to("cpu", out.dtype)
        yield key.replace(".base_layer.", "."), out


def trainable_parameters(model) -> list:
    return [p for p in model.parameters() if p.requires_grad]


def adapter_state(model) -> dict:
    """The adapter weights alone (what a LoRA run's checkpoint needs besides the base)."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}


def load_adapter_state(model, state: dict) -> None:
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(model, state)
