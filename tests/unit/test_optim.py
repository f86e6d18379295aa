"""rlhf.models.optim: the optimiser, schedule and training step shared by SFT, safety SFT and the RM.

The helper must reproduce the hand-written loops it replaced bit for bit (same parameter groups,
same schedule, same order of zero_grad / backward / clip / step), and the config sections keep
their keys."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from rlhf.config.core import Config, build_config
from rlhf.models.modeling import build_model, llama_config
from rlhf.models.optim import OptimConfig, make_optimizer, make_scheduler, train_step, warmup_cosine

# ---------------------------------------------------------------- schedule


def test_warmup_cosine_values():
    w, total = 10, 110
    assert warmup_cosine(0, w, total) == pytest.approx(0.1)
    assert warmup_cosine(4, w, total) == pytest.approx(0.5)
    assert warmup_cosine(9, w, total) == pytest.approx(1.0)
    assert warmup_cosine(10, w, total) == pytest.approx(1.0)
    assert warmup_cosine(60, w, total) == pytest.approx(0.55)  # halfway: floor + (1 - floor) / 2
    assert warmup_cosine(35, w, total) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert warmup_cosine(110, w, total) == pytest.approx(0.1)
    assert warmup_cosine(500, w, total) == pytest.approx(0.1)  # clamped after the end
    assert warmup_cosine(0, 0, 100) == pytest.approx(1.0)
    assert warmup_cosine(50, 0, 100, floor=0.0) == pytest.approx(0.5)
    values = [warmup_cosine(s, w, total) for s in range(w, total + 1)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def _tiny():
    return build_model(llama_config("tiny", 512, 64), 0)


def test_make_optimizer_groups_and_schedule():
    model = _tiny()
    cfg = OptimConfig(lr=1e-2, weight_decay=0.05, warmup_steps=4)
    opt = make_optimizer(model, cfg)
    sched = make_scheduler(opt, cfg, 20)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert decay["betas"] == (0.9, 0.95)
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim < 2 for p in no_decay["params"])
    n_unique = len({id(p) for p in model.parameters()})
    assert len(decay["params"]) + len(no_decay["params"]) == n_unique
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.25)
    lrs = []
    for _ in range(20):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[2] == pytest.approx(1e-2)  # step 3 (last warm-up step)
    assert lrs[-1] == pytest.approx(1e-3)  # floor 0.1 at the end
    assert sched.state_dict()["lr_lambdas"] == [None, None]  # plain lambdas: checkpoints carry no schedule


def test_single_group_decays_every_parameter():
    model = _tiny()
    opt = make_optimizer(model, OptimConfig(lr=1e-3, weight_decay=0.1, betas=(0.8, 0.9)), split_decay=False)
    (group,) = opt.param_groups
    assert group["weight_decay"] == 0.1 and group["betas"] == (0.8, 0.9)
    assert len(group["params"]) == len(list(model.parameters()))
    params = [p for p in model.parameters()]
    (group,) = make_optimizer(iter(params), OptimConfig(weight_decay=0.0)).param_groups
    assert len(group["params"]) == len(params) and group["weight_decay"] == 0.0


# ---------------------------------------------------------------- the step, against the old loops


def _batches(n: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 512, (4, 16), generator=g) for _ in range(n)]


def _loss(model, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, labels=ids).loss


def _old_sft_loop(model, data, lr, wd, warmup, total, clip):
    """The hand-written loop of actors/sft_train.py and jobs/sft.py before rlhf.models.optim."""
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95)
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, warmup, total))
    norms = []
    for ids in data:
        loss = _loss(model, ids)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip)))
        opt.step()
        sched.step()
    return norms, opt, sched


def test_train_step_reproduces_the_sft_loop_bit_for_bit():
    old, new = _tiny().train(), _tiny().train()
    data = _batches(6)
    old_norms, old_opt, old_sched = _old_sft_loop(old, data, 3e-3, 0.01, 2, 6, 0.5)
    cfg = OptimConfig(lr=3e-3, weight_decay=0.01, warmup_steps=2, grad_clip=0.5)
    opt = make_optimizer(new, cfg)
    sched = make_scheduler(opt, cfg, 6)
    new_norms = [train_step(new, _loss(new, ids), opt, sched, cfg.grad_clip) for ids in data]
    assert new_norms == old_norms
    for (name, a), b in zip(old.named_parameters(), new.parameters(), strict=True):
        assert torch.equal(a, b), name
    assert sched.get_last_lr() == old_sched.get_last_lr()
    # the optimiser state has the old layout: an old checkpoint's state loads and continues alike
    old_state = old_opt.state_dict()
    assert [{k: v for k, v in g.items() if k != "params"} for g in opt.state_dict()["param_groups"]] == [
        {k: v for k, v in g.items() if k != "params"} for g in old_state["param_groups"]
    ]
    opt.load_state_dict(copy.deepcopy(old_state))


def test_train_step_reproduces_the_local_rm_loop_and_skips_clipping_at_zero():
    old, new = _tiny().train(), _tiny().train()
    data = _batches(4, seed=1)
    old_opt = torch.optim.AdamW(old.parameters(), lr=1e-3, weight_decay=0.0, betas=(0.9, 0.95))
    for ids in data:  # reward/train.py's loop before rlhf.models.optim, max_grad_norm = 0 (no clipping)
        loss = _loss(old, ids)
        old_opt.zero_grad(set_to_none=True)
        loss.backward()
        old_opt.step()
    opt = make_optimizer(new, OptimConfig(lr=1e-3, weight_decay=0.0, warmup_steps=0), split_decay=False)
    norms = [train_step(new, _loss(new, ids), opt, None, 0.0) for ids in data]
    assert norms == [None] * len(data)
    for (name, a), b in zip(old.named_parameters(), new.parameters(), strict=True):
        assert torch.equal(a, b), name


def test_train_step_clips_to_grad_clip():
    model = _tiny().train()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    norm = train_step(model, _loss(model, _batches(1)[0]) * 1000, opt, None, 1e-3)
    assert norm is not None and norm > 1e-3
    after = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None]))
    assert float(after) == pytest.approx(1e-3, rel=1e-3)


# ---------------------------------------------------------------- config sections


def test_sections_are_optim_configs_with_their_keys_and_defaults():
    cfg = Config()
    for section in (cfg.sft, cfg.safety_sft, cfg.rm):
        assert isinstance(section, OptimConfig)
        assert {"lr", "betas", "weight_decay", "warmup_steps", "grad_clip"} <= set(section.model_dump())
    assert (cfg.sft.lr, cfg.sft.weight_decay, cfg.sft.warmup_steps, cfg.sft.grad_clip) == (2e-3, 0.01, 20, 1.0)
    assert (cfg.safety_sft.lr, cfg.safety_sft.warmup_steps, cfg.safety_sft.weight_decay) == (1e-4, 10, 0.01)
    assert (cfg.rm.lr, cfg.rm.weight_decay, cfg.rm.warmup_steps, cfg.rm.grad_clip) == (1e-3, 0.01, 20, 1.0)
    assert cfg.sft.betas == cfg.rm.betas == (0.9, 0.95)


def test_section_overrides_reach_the_optimiser():
    cfg = build_config({}, ["sft.lr=0.02", "sft.weight_decay=0.1", "sft.betas=[0.8, 0.99]", "rm.grad_clip=0.25"])
    opt = make_optimizer(_tiny(), cfg.sft)
    assert opt.param_groups[0]["lr"] == 0.02 and opt.param_groups[0]["weight_decay"] == 0.1
    assert opt.param_groups[0]["betas"] == (0.8, 0.99)
    assert cfg.rm.grad_clip == 0.25
    # a run's config.yaml from before the betas key still loads, with the old betas
    old = Config().model_dump(mode="json")
    del old["sft"]["betas"]
    assert build_config(old).sft.betas == (0.9, 0.95)


@pytest.mark.parametrize("item", ["sft.betas=[1.0, 0.9]", "rm.lr=0", "safety_sft.grad_clip=0", "sft.momentum=0.9"])
def test_bad_optimiser_keys_fail_in_one_line(item):
    from rlhf.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        build_config({}, [item])
    assert "\n" not in str(err.value) and item.split("=")[0] in str(err.value)
