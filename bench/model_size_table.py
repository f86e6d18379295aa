"""Bytes per parameter of each PPO role and the largest model that fits one 80 GB GPU: estimates
from memory measured on the CPU at a small Qwen2 shape (docs/results.md, "Model size").

Each role is built as the PPO loop builds it (``rlhf.ppo.models``, ``rlhf.models.device``) and, for
the trainers, taken through one update so gradients and AdamW state exist; then the bytes its
tensors hold (weights, gradients, optimiser state; every storage counted once) are split between
linear-layer parameters and the rest (embeddings, norms), because mirrors and bf16 storage treat
them differently. Those per-kind rates, applied to a target architecture's parameter split
(counted on the meta device, nothing allocated), give its bytes per role. Activations are not in
these figures (with ``ppo.micro_batch_size`` and chunked log-probs they scale with the micro-batch,
not the model): the largest-model column keeps ``HEADROOM`` of the GPU free for them.

    .venv/bin/python bench/model_size_table.py [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GPU_BYTES, HEADROOM = 80e9, 0.15
SMALL = {"hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2, "num_attention_heads": 4}
SMALL |= {"num_key_value_heads": 2, "vocab_size": 2_000}
# public architecture shapes (Qwen2 family and a Llama-3-8B shape), for the parameter split only
TARGETS = {
    "Qwen2-0.5B": ("qwen2", dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                                 num_key_value_heads=2, vocab_size=151_936, tie_word_embeddings=True)),
    "Qwen2-1.5B": ("qwen2", dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                                 num_key_value_heads=2, vocab_size=151_936, tie_word_embeddings=True)),
    "Qwen2-7B": ("qwen2", dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                               num_key_value_heads=4, vocab_size=152_064, tie_word_embeddings=False)),
    "Llama-3-8B shape": ("llama", dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                       num_attention_heads=32, num_key_value_heads=8, vocab_size=128_256,
                                       tie_word_embeddings=False)),
}  # fmt: skip
ROLES = ("policy", "policy_lora", "critic", "reference", "rollout", "reward")


def split_params(model) -> dict[str, int]:
    """Parameters of linear layers (not tied to an embedding) and the rest; each counted once."""
    import torch

    tied = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    kind, seen = {}, set()
    for module in model.modules():
        linear = isinstance(module, torch.nn.Linear) and id(module.weight) not in tied
        for p in module.parameters(recurse=False):
            if id(p) not in seen:
                seen.add(id(p))
                kind[id(p)] = ("linear" if linear else "other", p.numel())
    out = {"linear": 0, "other": 0}
    for k, n in kind.values():
        out[k] += n
    return out


def held_bytes(model, optimizer=None) -> dict[str, int]:
    """Bytes of weights, their gradients and optimiser state, by the kind of parameter they belong to."""
    import torch

    tied = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    out, seen = {"linear": 0, "other": 0}, set()
    state = optimizer.state if optimizer is not None else {}
    for module in model.modules():
        linear = isinstance(module, torch.nn.Linear) and id(module.weight) not in tied
        base = getattr(module, "base_layer", None)  # a LoRA wrapper: its base layer's kind
        linear = linear or isinstance(base, torch.nn.Linear)
        for p in module.parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            tensors = [p] + ([p.grad] if p.grad is not None else [])
            tensors += [t for t in state.get(p, {}).values() if torch.is_tensor(t) and t.dim() > 0]
            out["linear" if linear else "other"] += sum(t.numel() * t.element_size() for t in tensors)
    return out


def measure(precision: str) -> dict[str, dict[str, float]]:
    """Bytes per parameter of each role, per kind of parameter, at the small shape."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from rlhf.config.core import build_config
    from rlhf.models.device import Placement
    from rlhf.models.lora import lora_settings
    from rlhf.ppo.losses import Experience
    from rlhf.ppo.models import CriticTrainer, PolicyTrainer, ReferenceModel, assemble
    from rlhf.rollout.backends import make_backend
    from tests.hf_checkpoints import family_tokenizer, project_text

    place = Placement("cpu", precision)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = family_tokenizer("qwen2", project_text(60))
        torch.manual_seed(0)
        Qwen2ForCausalLM(Qwen2Config(**SMALL, tie_word_embeddings=True)).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        params = split_params(Qwen2ForCausalLM.from_pretrained(tmp))
        cfg = build_config({}, ["ppo.minibatch_size=2", "ppo.epochs=1", "model.lora.enabled=true"])
        ids = [tokenizer("Hello there, how are you?")["input_ids"]] * 2
        seqs, attn, act = assemble(ids, [ids[0][:4]] * 2, tokenizer.eos_token_id, tokenizer.pad_token_id, 4)
        exp = Experience(seqs, attn, act, torch.zeros(act.shape), torch.zeros(act.shape), torch.zeros(act.shape))
        exp.advantages, exp.returns = act.float(), act.float()
        roles = {}
        for name, lora in (("policy", None), ("policy_lora", lora_settings(cfg))):
            policy = PolicyTrainer(tmp, cfg.ppo, 0, place, lora=lora)
            policy.train(exp, step=1)
            roles[name] = held_bytes(policy.model, policy.optimizer)
        critic = CriticTrainer(tmp, cfg.ppo, 0, place)
        critic.train(exp, step=1)
        roles["critic"] = held_bytes(critic.model, critic.optimizer)
        roles["reference"] = held_bytes(ReferenceModel(tmp, placement=place).model)
        roles["rollout"] = held_bytes(make_backend("hf", model_dir=tmp, placement=place.as_dict()).model)
        # the reward model: a plain frozen copy (RewardScorer's placement), here on the causal-LM body
        roles["reward"] = held_bytes(place.place(Qwen2ForCausalLM.from_pretrained(tmp), trainable=False))
    return {role: {k: held[k] / params[k] for k in held} for role, held in roles.items()}


def target_split(family: str, dims: dict) -> dict[str, int]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    config_class, model_class = (Qwen2Config, Qwen2ForCausalLM) if family == "qwen2" else (LlamaConfig, LlamaForCausalLM)
    with torch.device("meta"):
        return split_params(model_class(config_class(**dims)))


def table(rates: dict[str, dict[str, dict[str, float]]]) -> dict:
    out = {"rates": rates, "targets": {}}
    for name, (family, dims) in TARGETS.items():
        split = target_split(family, dims)
        n = split["linear"] + split["other"]
        row = {"parameters": n}
        for precision, per_role in rates.items():
            role_bytes = {r: sum(per_role[r][k] * split[k] for k in split) for r in per_role}
            gae = sum(role_bytes[r] for r in ("policy", "critic", "reference", "rollout", "reward"))
            group = gae - role_bytes["critic"]
            row[precision] = {"bytes_per_param": {r: round(b / n, 2) for r, b in role_bytes.items()},
                              "gae_gb": round(gae / 1e9, 1), "group_norm_gb": round(group / 1e9, 1)}  # fmt: skip
        out["targets"][name] = row
    return out


def largest(rates: dict[str, dict[str, float]], roles: tuple[str, ...]) -> float:
    """Billions of parameters that fit ``GPU_BYTES * (1 - HEADROOM)`` at the Qwen2-7B split."""
    split = target_split(*TARGETS["Qwen2-7B"])
    n = split["linear"] + split["other"]
    per_param = sum(rates[r][k] * split[k] for r in roles for k in split) / n
    return GPU_BYTES * (1 - HEADROOM) / per_param / 1e9


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rates = {p: measure(p) for p in ("fp32", "bf16")}
    result = table(rates)
    gae, group = ("policy", "critic", "reference", "rollout", "reward"), ("policy", "reference", "rollout", "reward")
    result["largest_b"] = {
        p: {"gae": round(largest(rates[p], gae), 2), "group_norm": round(largest(rates[p], group), 2),
            "gae_lora": round(largest(rates[p], ("policy_lora", *gae[1:])), 2)}
        for p in rates
    }  # fmt: skip
    print(json.dumps(result, indent=None if args.json else 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
