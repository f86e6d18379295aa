"""Start-up failures of the GPU path, reproduced on the CPU (issue 28): each test fakes the part of
the GPU world it needs and checks that the code path gets through."""

from __future__ import annotations

import torch


class _Recorder(torch.nn.Linear):
    """A tiny model whose ``.to`` only records where it was sent (no CUDA here)."""

    moved_to: list = []

    @classmethod
    def from_pretrained(cls, path, **kwargs):
        cls.moved_to = []
        return cls(2, 2)

    def to(self, *args, **kwargs):
        type(self).moved_to.append(args[0] if args else kwargs.get("device"))
        return self


def test_ray_train_worker_on_cuda_0_gets_a_cuda_placement(tokenizer, tmp_path, monkeypatch):
    """Ray Train's ``get_device()`` answers ``cuda:0``; the worker's placement must resolve (to plain
    ``cuda`` with that GPU current), not reject ``"cuda:0"`` at start."""
    import ray.train
    import ray.train.torch

    from actors.train_launcher import setup_worker

    tokenizer.save_pretrained(tmp_path / "init")
    current = []

    class Ctx:
        def get_world_rank(self):
            return 0

        def get_world_size(self):
            return 1

    monkeypatch.setattr(ray.train, "get_context", lambda: Ctx())
    monkeypatch.setattr(ray.train.torch, "get_device", lambda: torch.device("cuda", 0))
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    job = dict(init_dir=str(tmp_path / "init"), seed=0, threads_per_worker=1, device="cuda", precision="bf16")
    job |= dict(gradient_checkpointing=False, lr=1e-3, betas=(0.9, 0.95), weight_decay=0.0, warmup_steps=0)
    job |= dict(max_steps=2, grad_clip=1.0)
    threads = torch.get_num_threads()
    try:
        *_, placement = setup_worker(job, _Recorder)
    finally:
        torch.set_num_threads(threads)
    assert placement.device == "cuda" and placement.precision == "bf16"
    assert _Recorder.moved_to == [torch.device("cuda", 0)]  # the model went to the worker's GPU
    assert current == [torch.device("cuda", 0)]  # and "cuda" now means that GPU
