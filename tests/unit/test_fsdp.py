"""FSDP2 on 2 gloo ranks (CPU): the sharded step is the unsharded step, a sharded checkpoint resumes
bit-exactly in fresh processes (falling back past a corrupt one), and each rank owns about half the
bytes of parameters, gradients and optimiser state."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rlhf.errors import CheckpointError
from rlhf.models import fsdp
from rlhf.models.modeling import build_model, llama_config
from rlhf.models.optim import OptimConfig, make_optimizer, make_scheduler

VOCAB, SEQ, BATCH, STEPS = 512, 32, 4, 4
OPTIM = OptimConfig(lr=3e-3, warmup_steps=2)


def tiny(seed: int = 0):
    return build_model(llama_config("tiny", VOCAB, SEQ), seed)


def batch(step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randint(0, VOCAB, (BATCH, SEQ), generator=g)


def run_steps(model, opt, sched, steps, rank=0, world=1, after=None):
    """``steps`` optimiser steps; each rank takes its contiguous slice of the step's batch (equal
    token counts, so the mean of the ranks' losses is the full batch's loss)."""
    import torch.distributed as dist

    records = []
    for step in steps:
        ids = batch(step).chunk(world)[rank]
        opt.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        norm = fsdp.clip_grad_norm(model, 1.0)
        opt.step()
        sched.step()
        value = loss.detach().clone()
        if world > 1:
            dist.all_reduce(value)
            value /= world
        records.append({"loss": float(value), "grad_norm": norm})
        if after is not None:
            after(step)
    return records


def full_weights(model) -> dict[str, torch.Tensor]:
    out = {}
    for bucket in fsdp.iter_full_state(model, bucket_bytes=1 << 16):
        out.update(bucket)
    return out


def sharded(seed: int, precision: str = "fp32"):
    model = fsdp.shard_model(tiny(seed), precision)
    opt = make_optimizer(model, OPTIM)
    return model, opt, make_scheduler(opt, OPTIM, STEPS)


def train_worker(rank: int, world: int, out: str) -> None:
    """Sharded run: 4 steps, sharded checkpoints after steps 2 and 3; then the bytes at the small preset."""
    out_dir = Path(out)
    model, opt, sched = sharded(0)
    ckpt = out_dir / "ckpt"

    def save(step):
        if step in (2, 3):
            extra = {"step": step, "scheduler": sched.state_dict(), "rng": torch.get_rng_state()}
            fsdp.save_sharded(model, opt, ckpt / f"step-{step:06d}", extra)

    records = run_steps(model, opt, sched, range(1, STEPS + 1), rank, world, after=save)
    weights = full_weights(model)
    small = fsdp.shard_model(build_model(llama_config("small", VOCAB, SEQ), 0))
    small_opt = make_optimizer(small, OPTIM)
    ids = batch(0)[:2].chunk(world)[rank]
    small(input_ids=ids, labels=ids).loss.backward()
    small_opt.step()
    result = {"records": records, "owned_small": fsdp.owned_bytes(small, small_opt), "bf16": bf16_forward(rank, world)}
    if rank == 0:
        result["weights"] = weights
    torch.save(result, out_dir / f"train-{rank}.pt")


def bf16_forward(rank: int, world: int) -> dict:
    """precision=bf16 with offload: the dtype a layer computes in, the master weights' dtype, the loss."""
    model = fsdp.shard_model(tiny(0), "bf16", offload=True)
    master = {p.dtype for p in model.parameters()}  # the sharded parameters the optimiser would update
    seen = []
    proj = fsdp.decoder_layers(model)[0].self_attn.q_proj
    proj.register_forward_hook(lambda mod, args, out: seen.append(mod.weight.dtype))
    ids = batch(1).chunk(world)[rank]
    loss = float(model(input_ids=ids, labels=ids).loss)
    return {"compute": seen[0], "master": master, "loss": loss, "rank": rank}


def resume_worker(rank: int, world: int, out: str) -> None:
    """Fresh processes, a differently initialised model: resume from the newest good checkpoint."""
    out_dir = Path(out)
    model, opt, sched = sharded(seed=7)
    warnings: list[str] = []
    path, extra = fsdp.load_latest_sharded(model, opt, out_dir / "ckpt", warn=warnings.append)
    sched.load_state_dict(extra["scheduler"])
    torch.set_rng_state(extra["rng"])
    records = run_steps(model, opt, sched, range(extra["step"] + 1, STEPS + 1), rank, world)
    weights = full_weights(model)
    if rank == 0:
        torch.save(
            {"path": str(path), "warnings": warnings, "records": records, "weights": weights}, out_dir / "resume.pt"
        )


def unsharded_reference():
    model = tiny(0)
    opt = make_optimizer(model, OPTIM)
    records = run_steps(model, opt, make_scheduler(opt, OPTIM, STEPS), range(1, STEPS + 1))
    return records, {k: v.detach().clone() for k, v in model.state_dict().items()}


def unsharded_small_bytes() -> int:
    model = build_model(llama_config("small", VOCAB, SEQ), 0)
    opt = make_optimizer(model, OPTIM)
    ids = batch(0)[:2]
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    return fsdp.owned_bytes(model, opt)["total"]


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp")
    fsdp.run_ranks(train_worker, 2, str(out))
    return out, [torch.load(out / f"train-{r}.pt", weights_only=False) for r in range(2)]


def test_two_rank_step_equals_unsharded_step(two_rank_run):
    _, results = two_rank_run
    records, weights = unsharded_reference()
    for got, want in zip(results[0]["records"], records, strict=True):
        assert abs(got["loss"] - want["loss"]) <= 1e-4
        assert abs(got["grad_norm"] - want["grad_norm"]) <= 1e-4
    assert results[0]["records"] == results[1]["records"]  # every rank sees the same loss and norm
    sharded_weights = results[0]["weights"]
    assert sharded_weights.keys() == weights.keys()
    worst = max(float((sharded_weights[k] - weights[k]).abs().max()) for k in weights)
    assert worst <= 1e-4
    moved = max(float((weights[k] - v).abs().max()) for k, v in tiny(0).state_dict().items())
    assert moved > 1e-3  # the weights compared are trained ones, not the initial ones


def test_owned_bytes_per_rank_at_most_60_percent(two_rank_run):
    _, results = two_rank_run
    full = unsharded_small_bytes()
    for r in results:
        owned = r["owned_small"]
        assert owned["grads"] > 0 and owned["optimizer"] > 0
        assert owned["total"] <= 0.6 * full, (owned, full)


def test_bf16_computes_in_bf16_with_fp32_master_weights(two_rank_run):
    _, results = two_rank_run
    for r in results:
        got = r["bf16"]
        ids = batch(1).chunk(2)[got["rank"]]
        with torch.no_grad():
            fp32 = float(tiny(0)(input_ids=ids, labels=ids).loss)
        assert got["compute"] == torch.bfloat16 and got["master"] == {torch.float32}
        assert 0 < abs(got["loss"] - fp32) < 0.05


def test_resume_two_ranks_is_bit_exact_and_skips_a_corrupt_checkpoint(two_rank_run):
    out, results = two_rank_run
    shard = out / "ckpt" / "step-000003" / "__1_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    fsdp.run_ranks(resume_worker, 2, str(out))
    resumed = torch.load(out / "resume.pt", weights_only=False)
    assert resumed["path"].endswith("step-000002")
    assert len(resumed["warnings"]) == 1 and "step-000003" in resumed["warnings"][0]
    assert "corrupt" in resumed["warnings"][0] and "\n" not in resumed["warnings"][0]
    assert resumed["records"] == results[0]["records"][2:]
    for name, tensor in results[0]["weights"].items():
        assert torch.equal(resumed["weights"][name], tensor), name


def test_partial_checkpoint_is_one_line(tmp_path):
    (tmp_path / "step-000001").mkdir()
    (tmp_path / "step-000001" / "__0_0.distcp").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="no readable manifest.json") as err:
        fsdp.verify_sharded(tmp_path / "step-000001")
    assert "\n" not in str(err.value)
    (tmp_path / "step-000001" / "manifest.json").write_text(
        json.dumps({"__0_0.distcp": {"bytes": 1, "sha256": "0"}, "__1_0.distcp": {"bytes": 1, "sha256": "0"}})
    )
    with pytest.raises(CheckpointError, match="corrupt"):
        fsdp.verify_sharded(tmp_path / "step-000001")


def test_decoder_layers_found():
    model = tiny()
    assert len(fsdp.decoder_layers(model)) == model.config.num_hidden_layers
