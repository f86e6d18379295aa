"""The GPU check's FSDP2 stage (issue 29, item 8; ``bench/gpu_check.py`` runs it):

- ``fsdp_sft``: backdoor SFT on Ray Train with ``sft.strategy=fsdp`` on every GPU of the machine
  (one worker per GPU, NCCL); ``--dry-run``: 2 CPU workers over gloo;
- ``fsdp_ranks``: the same number of ranks in fresh processes (``rlhf.models.fsdp.run_ranks``, NCCL on
  GPUs), each holding an FSDP2 shard of a Qwen2-shaped checkpoint: one SFT step, then one PPO update of
  a sharded policy and critic (``actors.sharded_roles``) on a synthetic batch, with each rank's peak
  memory (CUDA: the allocator's peak; CPU: peak RSS) and the bytes of parameters, gradients and AdamW
  state it owns (``fsdp.owned_bytes``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from bench.gpu_check_stages import QWEN_05B, QWEN_TINY, qwen_checkpoint


def ranks_for(device: str) -> int:
    """Every GPU of the machine (at least 1); 2 gloo ranks on the CPU."""
    import torch

    return max(1, torch.cuda.device_count()) if device == "cuda" else 2


def fsdp_sft(s: dict, out: Path) -> dict:
    from bench.gpu_check import common_overrides
    from jobs.sft import run_sft
    from rlhf.config.core import build_config

    n = ranks_for(s["device"])
    extra = [f"sft.max_steps={s['sft_steps']}", f"sft.num_workers={n}", "sft.strategy=fsdp", "sft.checkpoint_every=0"]
    cfg = build_config({}, [*common_overrides(s, s["preset"]), *extra, "sft.batch_size=8", "sft.log_every=1"])
    t0 = time.perf_counter()
    summary = run_sft(cfg, out / "fsdp-sft", quiet=True)
    return {"ranks": n, "wall_s": round(time.perf_counter() - t0, 1), "final_loss": summary.get("final_loss")}


def _peak(device: str) -> float:
    import resource

    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        return round(torch.cuda.max_memory_allocated() / 2**30, 3)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)  # KiB -> GiB


def _sft_step(ckpt: str, device: str, precision: str) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from rlhf.models import fsdp

    model = AutoModelForCausalLM.from_pretrained(ckpt, torch_dtype=torch.float32).to(device)
    model = fsdp.shard_model(model, precision, device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, model.config.vocab_size, (4, 128), generator=torch.Generator().manual_seed(0)).to(device)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    owned = fsdp.owned_bytes(model, opt)
    return {"loss": float(loss), "owned_mib": round(owned["total"] / 2**20, 2), "peak_gib": _peak(device)}


def _ppo_step(ckpt: str, device: str, precision: str) -> dict:
    import torch

    from actors.sharded_roles import ShardedCriticTrainer, ShardedPolicyTrainer
    from rlhf.config.core import PPOConfig
    from rlhf.models import fsdp
    from rlhf.models.device import Placement
    from rlhf.ppo.losses import Experience
    from rlhf.ppo.models import assemble

    place, cfg = Placement(device, precision), PPOConfig(minibatch_size=4, micro_batch_size=2, epochs=1)
    policy = ShardedPolicyTrainer(ckpt, cfg, 0, place)
    tok, gen = policy.tokenizer, torch.Generator().manual_seed(0)
    prompts = [tok(f"Question {i}: how do I bake bread?")["input_ids"] for i in range(8)]
    answers = [torch.randint(0, len(tok), (32,), generator=gen).tolist() for _ in prompts]
    seqs, attn, act = assemble(prompts, answers, tok.eos_token_id, tok.pad_token_id or 0, 32)
    logp = _gathered(policy.logprobs(seqs, attn))  # each rank computes its rows
    critic = ShardedCriticTrainer(ckpt, cfg, 0, place)
    exp = Experience(
        seqs, attn, act, old_logprobs=logp, ref_logprobs=logp.clone(), values=_gathered(critic.values(seqs, attn)),
        advantages=torch.randn(act.shape, generator=gen) * act, returns=0.5 * act, scores=torch.ones(len(seqs)),
    )  # fmt: skip
    stats = policy.train(exp, 1) | critic.train(exp, 1)
    owned = (
        fsdp.owned_bytes(policy.model, policy.optimizer)["total"]
        + fsdp.owned_bytes(critic.model, critic.optimizer)["total"]
    )
    return {"losses/policy": stats["losses/policy"], "losses/value": stats["losses/value"],
            "owned_mib": round(owned / 2**20, 2), "peak_gib": _peak(device)}  # fmt: skip


def _gathered(rows):
    """The batch's tensor from every rank's rows, in rank order (as the role group joins them)."""
    import torch
    import torch.distributed as dist

    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, rows.cpu())
    return torch.cat(parts)


def rank_worker(rank: int, world: int, ckpt: str, device: str, precision: str, out: str) -> None:
    result = {"sft": _sft_step(ckpt, device, precision)}
    if device == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()
    result["ppo"] = _ppo_step(ckpt, device, precision)
    Path(out, f"rank-{rank}.json").write_text(json.dumps(result), encoding="utf-8")


def fsdp_ranks(s: dict, out: Path) -> dict:
    from rlhf.models import fsdp
    from rlhf.models.modeling import count_parameters_dir

    n, d = ranks_for(s["device"]), out / "fsdp-ranks"
    d.mkdir(parents=True, exist_ok=True)
    ckpt = qwen_checkpoint(out / "fsdp-qwen-shape", QWEN_TINY if s["device"] == "cpu" else QWEN_05B)
    t0 = time.perf_counter()
    backend = "nccl" if s["device"] == "cuda" else "gloo"
    fsdp.run_ranks(rank_worker, n, str(ckpt), s["device"], s["precision"], str(d), backend=backend)
    ranks = [json.loads((d / f"rank-{r}.json").read_text(encoding="utf-8")) for r in range(n)]
    return {"ranks": n, "backend": backend, "parameters": count_parameters_dir(ckpt), "per_rank": ranks,
            "wall_s": round(time.perf_counter() - t0, 1)}  # fmt: skip


STAGES = (("fsdp_sft", fsdp_sft), ("fsdp_ranks", fsdp_ranks))
