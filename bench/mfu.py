"""Model FLOPs utilisation of our training step on this CPU.

Measures the fp32 matmul peak with torch (square matmuls, all threads), then times a training
step (forward + backward + AdamW) of each preset's model on ``batch x seq`` tokens and reports
MFU = (6 * parameters * tokens / step time) / peak. Numbers are of this machine only.

    python bench/mfu.py [--presets tiny small base] [--batch 8] [--seq 256] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rlhf.malloc import tune_malloc  # noqa: E402
from rlhf.models.modeling import PRESETS, build_model, count_parameters, llama_config  # noqa: E402


def matmul_peak(sizes: tuple[int, ...] = (512, 1024, 2048), seconds: float = 1.5) -> float:
    """The best fp32 FLOP/s over square matmuls of a few sizes (one size alone can sit below
    the peak and flatter the MFU of a model whose GEMMs are larger)."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            torch.mm(a, b)
            reps += 1
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t0))
    return best


class _Tok:  # the few tokenizer fields llama_config reads
    pad_token_id, bos_token_id, eos_token_id = 0, 1, 2


def train_step_flops(preset: str, batch: int, seq: int, steps: int = 3, vocab: int = 2048) -> dict:
    model = build_model(llama_config(preset, vocab, max(seq, 64), _Tok()), seed=0)
    params = count_parameters(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(3, vocab, (batch, seq))

    def step():
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    dt = (time.perf_counter() - t0) / steps
    return {"parameters": params, "tokens": batch * seq, "step_s": dt, "flops_per_s": 6 * params * batch * seq / dt}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    tune_malloc()  # the allocator setting our processes run with, for every system measured here
    peak = matmul_peak()
    rows = {}
    for preset in args.presets:
        r = train_step_flops(preset, args.batch, args.seq)
        r["mfu"] = r["flops_per_s"] / peak
        rows[preset] = r
    out = {"threads": torch.get_num_threads(), "matmul_peak_gflops": peak / 1e9, "presets": rows}
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"fp32 matmul peak ({out['threads']} threads): {peak / 1e9:.1f} GFLOP/s")
    print(f"{'preset':<7} {'params':>12} {'tokens':>7} {'step s':>8} {'GFLOP/s':>8} {'MFU':>6}")
    for preset, r in rows.items():
        print(
            f"{preset:<7} {r['parameters']:>12,} {r['tokens']:>7} {r['step_s']:>8.3f} "
            f"{r['flops_per_s'] / 1e9:>8.1f} {100 * r['mfu']:>5.1f}%"
        )
    print("goal: MFU >= 25 % at the base preset")
    return 0


if __name__ == "__main__":
    sys.exit(main())
