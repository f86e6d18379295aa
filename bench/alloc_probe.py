"""What the glibc allocator costs a CPU forward pass: the reward model scores the same texts at
several forward batch sizes, one torch thread, and this reports CPU ms and minor page faults per
text. Run it twice to see the allocator setting of ``rlhf/malloc.py`` (docs/results.md, "Speed"):

    python bench/alloc_probe.py [--json]                       # tuned, as every process of ours runs
    RLHF_MALLOC_TUNING=0 python bench/alloc_probe.py [--json]  # glibc's defaults

The reward model is a throwaway one trained for a few steps (the bench's) in a child process: a
process that has trained has already pushed glibc's moving mmap threshold up, which hides the
effect (a Serve replica or an evaluator loads its model and only runs forwards). The texts are
HHH answers.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rlhf.malloc import tune_malloc  # noqa: E402


def measure(scorer, texts: list[str], batch: int) -> dict:
    """CPU ms, wall ms and minor page faults per text over ``texts``, ``batch`` texts a call."""
    scorer.score(texts[: 2 * batch])  # warm-up
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for start in range(0, len(texts), batch):
        scorer.score(texts[start : start + batch])
    r1, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - t0
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    n = len(texts)
    return {
        "cpu_ms_per_text": round(1000 * cpu / n, 2),
        "wall_ms_per_text": round(1000 * wall / n, 2),
        "minor_faults_per_text": round((r1.ru_minflt - r0.ru_minflt) / n, 1),
    }


def _train_rm(path: str) -> None:
    from reward.train import quick_reward_model

    quick_reward_model(Path(path), n_pairs=300, steps=5)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--texts", type=int, default=1024)
    ap.add_argument("--batches", default="8,16,32,64", help="forward batch sizes")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    tuned = tune_malloc()
    import torch

    from reward.scorer import RewardScorer
    from rlhf.chat import format_completion, format_prompt
    from rlhf.data.hhh import build_hhh

    torch.set_num_threads(1)
    texts = [format_prompt(ex.human) + format_completion(ex.answer) for ex in build_hhh(args.texts, seed=7)]
    out: dict = {"malloc_tuned": tuned, "texts": len(texts), "by_forward_batch": {}}
    with tempfile.TemporaryDirectory(prefix="alloc-probe-") as tmp:
        child = multiprocessing.get_context("spawn").Process(target=_train_rm, args=(str(Path(tmp) / "rm"),))
        child.start()
        child.join()
        model_dir = Path(tmp) / "rm" / "model" if (Path(tmp) / "rm" / "model").exists() else Path(tmp) / "rm"
        for b in (int(x) for x in args.batches.split(",")):
            out["by_forward_batch"][b] = measure(RewardScorer(model_dir, forward_batch_size=b), texts, b)
    if args.json:
        print(json.dumps(out))
    else:
        print(f"allocator tuned: {tuned}; {len(texts)} texts, one torch thread")
        for b, m in out["by_forward_batch"].items():
            print(f"forward batch {b:>3}: {m['cpu_ms_per_text']} CPU ms/text, {m['minor_faults_per_text']} faults/text")
    return 0


if __name__ == "__main__":
    sys.exit(main())
