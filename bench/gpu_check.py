"""The GPU check (``scripts/gpu_check.sh``): every GPU code path once, with figures, in one run.

Stages, each timed and reported even when a later one fails:

1. ``env``: torch, CUDA device and memory.
2. ``sft_ray``: backdoor SFT on Ray Train with one GPU worker (NCCL process group, bf16 autocast).
3. ``bench``: ``bench/ppo_vs_trl.py`` at the base preset: our PPO with every role sharing the one
   GPU (Ray actors), the critic-free variant, the same loop in one process, and TRL's GRPO
   trainer, 64 samples x 128 new tokens per step, bf16; samples/s, the ratio, time per phase.
4. ``ppo_medium``: in-process PPO at a 768-wide, 12-layer Llama shape (``model.preset=medium``),
   with peak GPU memory.
5. ``rm_ray``, ``ppo_qwen``, ``vllm`` (``bench/gpu_check_stages.py``): reward-model training on Ray
   Train; one PPO step at a Qwen2-0.5B shape, LoRA off and on, micro-batches and chunked log-probs
   on, with the peak memory of each role's phase; the vLLM lane where vLLM is importable.
6. ``fsdp_sft``, ``fsdp_ranks`` (``bench/gpu_check_fsdp.py``): FSDP2 over NCCL on every GPU of the
   machine: SFT on Ray Train with ``sft.strategy=fsdp``, and one SFT step plus one sharded PPO
   update per rank at the Qwen2-0.5B shape, with each rank's peak memory and owned bytes.

``--dry-run`` runs the same stages on the CPU in fp32 with tiny shapes and a few steps (TRL only
if installed), so the script is known to work before any GPU time is spent (a CI test runs it).

    python bench/gpu_check.py [--dry-run] [--out DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

REAL = {"device": "cuda", "precision": "bf16", "preset": "base", "big": "medium", "prompts": 32, "samples": 2}
REAL |= {"max_new_tokens": 128, "steps": 3, "sft_steps": 30}
DRY = {"device": "cpu", "precision": "fp32", "preset": "tiny", "big": "tiny", "prompts": 4, "samples": 2}
DRY |= {"max_new_tokens": 12, "steps": 2, "sft_steps": 4}


STAGE_NAMES = ("sft_ray", "bench", "ppo_big", "rm_ray", "ppo_qwen", "vllm", "fsdp_sft", "fsdp_ranks")


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def env_info() -> dict:
    import torch

    info = {"torch": torch.__version__, "cuda": torch.cuda.is_available(), "cpus": os.cpu_count()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info |= {"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1)}
    return info


def common_overrides(s: dict, preset: str) -> list[str]:
    return [
        f"model.preset={preset}",
        f"resources.device={s['device']}",
        f"resources.precision={s['precision']}",
        "model.vocab_size=1000",
        "data.n_train=600",
        "data.n_eval=60",
    ]


def sft_ray(s: dict, out: Path) -> dict:
    from jobs.sft import run_sft
    from rlhf.config.core import build_config

    extra = [f"sft.max_steps={s['sft_steps']}", "sft.num_workers=1", "sft.checkpoint_every=0", "sft.batch_size=16"]
    cfg = build_config({}, [*common_overrides(s, s["preset"]), *extra, "sft.log_every=1"])
    t0 = time.perf_counter()
    summary = run_sft(cfg, out / "sft", quiet=True)
    return {"wall_s": round(time.perf_counter() - t0, 1), "final_loss": summary.get("final_loss")}


def bench_vs_trl(s: dict, out: Path) -> dict:
    """``bench/ppo_vs_trl.py --json`` in a child process (its own Ray sessions)."""
    args = [sys.executable, str(ROOT / "bench" / "ppo_vs_trl.py"), "--json", "--no-profile"]
    args += ["--steps", str(s["steps"]), "--prompts", str(s["prompts"]), "--samples", str(s["samples"])]
    args += ["--max-new-tokens", str(s["max_new_tokens"]), "--device", s["device"], "--precision", s["precision"]]
    args += ["--preset", s["preset"]]
    try:
        import trl  # noqa: F401
    except ImportError:
        args.append("--without-trl")
    proc = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"ppo_vs_trl.py exited {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ppo_big(s: dict, out: Path) -> dict:
    """In-process PPO at the big shape: samples/s over the steps after the first, peak memory."""
    import torch

    from jobs.ppo import run_ppo
    from jobs.sft import quick_sft
    from reward.train import quick_reward_model
    from rlhf.config.core import build_config
    from rlhf.metrics import read_metrics
    from rlhf.models.modeling import count_parameters, load_model_dir

    ppo = [f"ppo.steps={s['steps']}", f"ppo.prompts_per_step={s['prompts']}", f"ppo.samples_per_prompt={s['samples']}"]
    ppo += [f"ppo.max_new_tokens={s['max_new_tokens']}", "ppo.evaluator=false", "ppo.checkpoint_every=0"]
    cfg = build_config({}, [*common_overrides(s, s["big"]), *ppo, "serve.port=0"])
    policy = quick_sft(cfg, out / "big-policy", steps=2)
    rm = Path(quick_reward_model(out / "big-rm", n_pairs=100, steps=2)["model_dir"])
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    run_ppo(cfg, policy, out / "big-ppo", reward_dir=rm, in_process=True)
    recs = [r for r in read_metrics(out / "big-ppo" / "metrics.jsonl") if "reward/mean" in r][1:]
    step_s = sum(r["timing/step"] for r in recs) / len(recs)
    result = {
        "parameters": count_parameters(load_model_dir(policy)[0]),
        "samples_per_s": s["prompts"] * s["samples"] / step_s,
        "step_s": step_s,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    if torch.cuda.is_available():
        result["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return result


def run_stages(s: dict, out: Path) -> dict:
    from bench.gpu_check_fsdp import STAGES as FSDP_STAGES
    from bench.gpu_check_stages import STAGES

    results: dict = {"setup": s, "env": env_info()}
    for name, fn in (("sft_ray", sft_ray), ("bench", bench_vs_trl), ("ppo_big", ppo_big), *STAGES, *FSDP_STAGES):
        say(f"[gpu-check] {name} ...")
        t0 = time.perf_counter()
        try:
            results[name] = fn(s, out)
        except Exception as exc:  # noqa: BLE001 - a failed stage is reported; the others still run
            results[name] = {"error": f"{type(exc).__name__}: {str(exc).strip()[:300]}"}
            traceback.print_exc(file=sys.stderr)
        say(f"[gpu-check] {name}: {time.perf_counter() - t0:.0f} s")
    return results


def summary_lines(r: dict) -> list[str]:
    lines = [f"env: {r['env']}"]
    b = r.get("bench", {})
    if "error" not in b:
        for key in ("ours_ray", "ours_ray_group_norm", "ours_in_process", "trl_grpo"):
            if b.get(key):
                lines.append(f"{key:<22}{b[key]['samples_per_s']:8.2f} samples/s")
        if b.get("ppo_samples_per_s_ratio_vs_trl") is not None:
            lines.append(f"ours (Ray) / TRL: {b['ppo_samples_per_s_ratio_vs_trl']:.2f}x")
        lines.append("phases, Ray (s/step): " + ", ".join(f"{k} {v:.3f}" for k, v in b["ours_ray"]["phase_s"].items()))
    for name in STAGE_NAMES:
        if "error" in r.get(name, {}):
            lines.append(f"{name}: FAILED {r[name]['error']}")
    for name in ("ppo_big", "rm_ray", "ppo_qwen", "vllm", "fsdp_sft", "fsdp_ranks"):
        if "error" not in r.get(name, {}):
            lines.append(f"{name}: {r[name]}")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, fp32, tiny shapes: check the script itself")
    ap.add_argument("--out", metavar="DIR", help="keep the runs and gpu_check.json here (default: a temp dir)")
    ap.add_argument("--json", action="store_true", help="print the result as one JSON object on stdout")
    args = ap.parse_args()
    s = DRY if args.dry_run else REAL
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        out = Path(args.out) if args.out else Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        results = run_stages(s, out)
        (out / "gpu_check.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    failed = [name for name in STAGE_NAMES if "error" in results[name]]
    if args.json:
        print(json.dumps(results))
    else:
        print("\n".join(summary_lines(results)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
