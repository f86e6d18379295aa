"""Bytes of parameters, gradients and AdamW state each rank OWNS (from its local shards, not RSS),
and each rank's peak RSS, after one training step of a preset policy: unsharded on 1 rank, FSDP2
(``rlhf.models.fsdp``) on N gloo ranks on this machine's CPU.

    python bench/fsdp_memory.py --preset small --ranks 1 2

Prints one markdown row per rank and the sharded ranks' owned bytes as a share of the unsharded run.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlhf.models import fsdp  # noqa: E402
from rlhf.models.modeling import build_model, count_parameters, llama_config  # noqa: E402
from rlhf.models.optim import OptimConfig, make_optimizer  # noqa: E402

VOCAB, SEQ, ROWS = 2048, 64, 4


def step_worker(rank: int, world: int, preset: str, out: str) -> None:
    """One AdamW step on ``ROWS`` rows (split over the ranks), then the owned bytes and peak RSS."""
    model = build_model(llama_config(preset, VOCAB, SEQ), 0)
    params = count_parameters(model)
    if world > 1:
        model = fsdp.shard_model(model)
    opt = make_optimizer(model, OptimConfig())
    ids = torch.randint(0, VOCAB, (ROWS, SEQ), generator=torch.Generator().manual_seed(0)).chunk(world)[rank]
    model(input_ids=ids, labels=ids).loss.backward()
    fsdp.clip_grad_norm(model, 1.0)
    opt.step()
    owned = fsdp.owned_bytes(model, opt)
    owned["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    owned["parameters"] = params
    torch.save(owned, Path(out) / f"{world}-{rank}.pt")


def mib(n: int) -> str:
    return f"{n / 2**20:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    print(
        "| ranks | rank | params MiB | grads MiB | AdamW state MiB | owned MiB | owned / unsharded | bytes/param | peak RSS MiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    base = None
    with tempfile.TemporaryDirectory() as out:
        for world in sorted(args.ranks):
            fsdp.run_ranks(step_worker, world, args.preset, out)
            for rank in range(world):
                r = torch.load(Path(out) / f"{world}-{rank}.pt")
                base = base or (r["total"] if world == 1 else None)
                share = f"{r['total'] / base:.1%}" if base else "-"
                print(
                    f"| {world} | {rank} | {mib(r['params'])} | {mib(r['grads'])} | {mib(r['optimizer'])} | "
                    f"{mib(r['total'])} | {share} | {r['total'] / r['parameters']:.2f} | {mib(r['peak_rss'])} |"
                )
    print(f"\n{args.preset}: {r['parameters']:,} parameters (tied embeddings once)")


if __name__ == "__main__":
    main()
