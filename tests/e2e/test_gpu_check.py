"""``scripts/gpu_check.sh --dry-run``: the whole GPU check on the CPU with tiny shapes, so the
script is known to work before any GPU time is spent."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_dry_run_runs_every_stage(tmp_path):
    proc = subprocess.run(
        [str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run", "--out", str(tmp_path), "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["setup"]["device"] == "cpu" and result["setup"]["preset"] == "tiny"
    for stage in ("sft_ray", "bench", "ppo_big"):
        assert "error" not in result[stage], result[stage]
    assert result["sft_ray"]["final_loss"] > 0
    bench = result["bench"]
    assert bench["setup"]["device"] == "cpu" and bench["setup"]["precision"] == "fp32"
    for system in ("ours_ray", "ours_ray_group_norm", "ours_in_process"):
        assert bench[system]["samples_per_s"] > 0 and set(bench[system]["phase_s"]) >= {"rollout", "train"}
    assert bench["trl_grpo"]["samples_per_s"] > 0  # TRL's GRPO on the same model (trl is a dev dependency)
    assert bench["ppo_samples_per_s_ratio_vs_trl"] > 0 and bench["setup"]["trl"]
    assert result["ppo_big"]["samples_per_s"] > 0 and result["ppo_big"]["parameters"] > 0
    assert (tmp_path / "sft" / "model" / "config.json").is_file()
    for stage in ("rm_ray", "ppo_qwen", "vllm"):  # issue 28's stages
        assert "error" not in result[stage], result[stage]
    assert 0.0 <= result["rm_ray"]["pairwise_accuracy"] <= 1.0
    roles = {"rollout", "reference", "policy_load", "policy_logprobs", "critic_load", "critic_values", "policy_train"}
    for variant in ("full", "lora"):
        peaks = result["ppo_qwen"][variant]["peak_gib"]
        assert roles <= set(peaks) and all(v > 0 for v in peaks.values()), peaks
    assert result["ppo_qwen"]["lora"]["peak_gib"]["policy_train"] < result["ppo_qwen"]["full"]["peak_gib"]["policy_train"]
    assert "skipped" in result["vllm"] or result["vllm"]["passed"]
    # issue 29's stage: FSDP2 SFT on Ray Train and a sharded SFT + PPO step on 2 gloo ranks, per-rank memory
    for stage in ("fsdp_sft", "fsdp_ranks"):
        assert "error" not in result[stage], result[stage]
    assert result["fsdp_sft"]["ranks"] == 2 and result["fsdp_sft"]["final_loss"] > 0
    ranks = result["fsdp_ranks"]["per_rank"]
    assert result["fsdp_ranks"]["backend"] == "gloo" and len(ranks) == 2
    for rank in ranks:
        assert rank["sft"]["owned_mib"] > 0 and rank["sft"]["peak_gib"] > 0
        assert rank["ppo"]["owned_mib"] > 0 and abs(rank["ppo"]["losses/policy"]) < 1e3
