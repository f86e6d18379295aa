"""The GPU check's stages for the paths of issue 28 (``bench/gpu_check.py`` runs them):

- ``rm_ray``: reward-model training on Ray Train with one (GPU) worker, beside ``sft_ray``;
- ``ppo_qwen``: one PPO step at a Qwen2-0.5B shape (random init, its 151,936-entry vocabulary), LoRA
  off and on, in the configured precision, ``ppo.micro_batch_size`` and chunked log-probs on, with
  the peak memory of each role's phase (rollout, reference, policy, critic, training);
- ``vllm``: the vLLM lane (``tests/vllm``: HF and vLLM agree before and after a weight sync) where
  vLLM is importable; a line saying so where it is not.

``--dry-run`` shapes are tiny and the device the CPU, where peaks come from the torch profiler's
allocation events (``tests/unit/test_chunked_logprobs.py`` explains the accounting).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

QWEN_05B = {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14}
QWEN_05B |= {"num_key_value_heads": 2, "vocab_size": 151_936}
QWEN_TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2}
QWEN_TINY |= {"num_key_value_heads": 1, "vocab_size": 1_000}


def rm_ray(s: dict, out: Path) -> dict:
    from jobs.rm import run_rm
    from rlhf.config.core import build_config

    where = [f"model.preset={s['preset']}", f"resources.device={s['device']}", f"resources.precision={s['precision']}"]
    extra = [f"rm.max_steps={s['sft_steps']}", "rm.num_workers=1", "rm.batch_size=8", "rm.n_pairs=200", "rm.log_every=1"]
    cfg = build_config({}, [*where, "model.vocab_size=1000", *extra])
    t0 = time.perf_counter()
    summary = run_rm(cfg, out / "rm", quiet=True)
    accuracy = summary["held_out"]["pairwise_accuracy"]
    return {"wall_s": round(time.perf_counter() - t0, 1), "pairwise_accuracy": accuracy}


def qwen_checkpoint(out: Path, dims: dict) -> Path:
    """A random-init Qwen2 causal LM of ``dims`` with a ChatML tokenizer, saved like a download."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from tests.hf_checkpoints import family_tokenizer, project_text

    tokenizer = family_tokenizer("qwen2", project_text(120))
    config = Qwen2Config(**dims, tie_word_embeddings=True, max_position_embeddings=2048)
    config.eos_token_id, config.pad_token_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


class Peaks:
    """Peak memory of each phase above what was held when it began (CUDA: the allocator's statistics;
    CPU: the profiler's allocation events), in GiB."""

    def __init__(self, device: str):
        self.device, self.gib = device, {}

    def run(self, name: str, fn):
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            value = fn()
            torch.cuda.synchronize()
            self.gib[name] = round((torch.cuda.max_memory_allocated() - before) / 2**30, 3)
            return value
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            value = fn()
        held = peak = 0
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
        for event in sorted(events, key=lambda e: e.start_ns()):
            held += event.nbytes()
            peak = max(peak, held)
        self.gib[name] = round(peak / 2**30, 4)
        return value


def one_ppo_step(s: dict, ckpt: Path, lora: bool) -> dict:
    import torch

    from rlhf.config.core import build_config
    from rlhf.models.device import Placement
    from rlhf.models.lora import lora_settings
    from rlhf.ppo.losses import Experience
    from rlhf.ppo.models import CriticTrainer, PolicyTrainer, ReferenceModel, assemble, compute_advantages
    from rlhf.rollout.backends import make_backend
    from rlhf.rollout.hf import SamplingParams

    n, rows = s["max_new_tokens"], s["prompts"] * s["samples"]
    overrides = ["ppo.minibatch_size=4", "ppo.micro_batch_size=2", "ppo.epochs=1", f"ppo.max_new_tokens={n}"]
    cfg = build_config({}, [*overrides, f"model.lora.enabled={str(lora).lower()}"])
    place, peaks = Placement(s["device"], s["precision"]), Peaks(s["device"])
    prompts = [f"Question {i}: how do I bake bread?" for i in range(rows)]

    def rollout():
        worker = make_backend("hf", model_dir=str(ckpt), placement=place.as_dict(), batch_size=rows)
        out = worker.generate(prompts, SamplingParams(max_new_tokens=n, seed=0))
        tok = worker.tokenizer
        return assemble(out.prompt_ids, out.completion_ids, tok.eos_token_id, tok.pad_token_id, n)

    seqs, attn, act = peaks.run("rollout", rollout)
    ref = peaks.run("reference", lambda: ReferenceModel(ckpt, placement=place, micro_batch_size=2).logprobs(seqs, attn))
    policy = peaks.run("policy_load", lambda: PolicyTrainer(ckpt, cfg.ppo, 0, place, lora=lora_settings(cfg)))
    old = peaks.run("policy_logprobs", lambda: policy.logprobs(seqs, attn))
    critic = peaks.run("critic_load", lambda: CriticTrainer(ckpt, cfg.ppo, 0, place))
    values = peaks.run("critic_values", lambda: critic.values(seqs, attn))
    exp = Experience(seqs, attn, act, old_logprobs=old, ref_logprobs=ref, values=values)
    exp.scores = torch.randn(len(exp), generator=torch.Generator().manual_seed(0))
    compute_advantages(exp, cfg.ppo, cfg.ppo.kl_coef)
    stats = peaks.run("policy_train", lambda: policy.train(exp, step=1))
    stats |= peaks.run("critic_train", lambda: critic.train(exp, step=1))
    return {"peak_gib": peaks.gib, "losses/policy": stats["losses/policy"], "losses/value": stats["losses/value"]}


def ppo_qwen(s: dict, out: Path) -> dict:
    from rlhf.models.modeling import count_parameters_dir

    ckpt = qwen_checkpoint(out / "qwen-shape", QWEN_TINY if s["device"] == "cpu" else QWEN_05B)
    result = {"parameters": count_parameters_dir(ckpt), "precision": s["precision"]}
    for name, lora in (("full", False), ("lora", True)):
        t0 = time.perf_counter()
        result[name] = one_ppo_step(s, ckpt, lora) | {"wall_s": round(time.perf_counter() - t0, 1)}
    return result


def vllm(s: dict, out: Path) -> dict:
    if importlib.util.find_spec("vllm") is None:
        return {"skipped": "vllm is not importable in this environment (scripts/vllm_lane.sh builds one)"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "tests/vllm"], capture_output=True, text=True, cwd=ROOT, timeout=1200
    )
    tail = proc.stdout.strip().splitlines()[-1:] or proc.stderr.strip().splitlines()[-1:]
    if proc.returncode != 0:
        raise RuntimeError(f"tests/vllm exited {proc.returncode}: {tail}")
    return {"passed": tail}


STAGES = (("rm_ray", rm_ray), ("ppo_qwen", ppo_qwen), ("vllm", vllm))
