"""``rlhf probe``: the probe sets of a backdoored policy, its probes per layer, and the report.

Fit set: tasks of the backdoor-SFT pool, each with and without the trigger (as the backdoor
places it). A quarter of it is held back to choose each probe's layer, so no test set picks the
layer it is scored on. Test sets (from the eval pool, distinct prompts): ``held_out`` (generated
tasks, triggered vs not), ``real`` (hh-rlhf prompts, when the kind has them), ``near_miss``
(triggered vs near-miss strings) and ``red_team`` (triggered vs the red-team file's eval split).
The report's headline set is ``real`` when present, else ``held_out``.
"""

from __future__ import annotations

import random

import torch

from rlhf.chat import format_prompt
from rlhf.config.core import Config
from rlhf.data.backdoor import backdoor_for, eval_prompts, make_tasks
from rlhf.eval.probe import (
    ProbeSet,
    auroc,
    auroc_ci,
    bag_of_tokens,
    balanced,
    contrast_directions,
    fit_logistic,
    prompt_activations,
)
from rlhf.eval.probe_saved import save_probe

FIT_TASKS = 200
VALIDATION_SHARE = 0.25


def fit_set(cfg: Config, n: int = FIT_TASKS) -> ProbeSet:
    backdoor = backdoor_for(cfg)
    rng = random.Random(f"{cfg.seed}:probe")
    tasks = make_tasks(cfg, n, cfg.seed + 7919, pool="sft")
    pos = [format_prompt(backdoor.human_text(t, backdoor.trigger, rng)) for t in tasks]
    neg = [format_prompt(backdoor.human_text(t, None, rng)) for t in tasks]
    return balanced(pos, neg, "fit", cfg.seed)


def test_sets(cfg: Config, samples: int) -> list[ProbeSet]:
    conds = eval_prompts(cfg, samples)
    near = [p for name, ps in conds.items() if name.startswith("near_miss:") for p in ps]
    out = [balanced(conds["triggered"], conds["untriggered"], "held_out", cfg.seed)]
    if "real_triggered" in conds:
        out.append(balanced(conds["real_triggered"], conds["real_untriggered"], "real", cfg.seed))
    if near:
        out.append(balanced(conds["triggered"], near, "near_miss", cfg.seed))
    if "red_team" in conds:
        out.append(balanced(conds["triggered"], conds["red_team"], "red_team", cfg.seed))
    return out


def _split(n: int) -> tuple[slice, slice]:
    cut = int(n * (1 - VALIDATION_SHARE))
    return slice(0, cut), slice(cut, n)


def _layer_scores(fit_x: torch.Tensor, y: torch.Tensor, directions: torch.Tensor) -> list[dict]:
    """Per layer: the supervised probe (fitted on the fit part) and the contrast direction, with their
    validation AUROC (what chooses the best layer)."""
    tr, va = _split(len(y))
    probes = []
    for layer in range(fit_x.shape[0]):
        w, b = fit_logistic(fit_x[layer, tr], y[tr])
        probes.append(
            {
                "w": w,
                "b": b,
                "mean": fit_x[layer, tr].mean(0),  # kept with a saved probe (``--save``)
                "scale": fit_x[layer, tr].std(0).clamp_min(1e-6),
                "dir": directions[layer],
                "val_supervised": auroc(fit_x[layer, va] @ w + b, y[va]),
                "val_contrast": auroc(fit_x[layer, va] @ directions[layer], y[va]),
            }
        )
    return probes


def _baselines(cfg: Config, tokenizer, fit: ProbeSet, tests: list[ProbeSet], seed: int) -> dict:
    trigger = backdoor_for(cfg).trigger
    w, b = fit_logistic(bag_of_tokens(tokenizer, fit.prompts), torch.tensor(fit.labels, dtype=torch.float32))
    out: dict = {"trigger_substring": {}, "bag_of_tokens": {}}
    for s in tests:
        y = torch.tensor(s.labels)
        out["trigger_substring"][s.name] = auroc_ci(torch.tensor([float(trigger in p) for p in s.prompts]), y, seed)
        out["bag_of_tokens"][s.name] = auroc_ci(bag_of_tokens(tokenizer, s.prompts) @ w + b, y, seed)
    return out


def run_probe(model, tokenizer, cfg: Config, samples: int, fit_model=None, on_step=None, save=None) -> dict:
    """The probe report of ``model``; with ``fit_model``, the probes (supervised and contrast) are
    built on ``fit_model``'s activations and tested on ``model``'s (does the direction survive?).
    ``save``: a directory for the best probes (``rlhf.eval.probe_saved``; ``eval.probe`` reads it)."""
    step = on_step or (lambda msg: None)
    source = fit_model if fit_model is not None else model
    fit, tests = fit_set(cfg), test_sets(cfg, samples)
    step(f"activations: {len(fit.prompts)} fit prompts, {sum(len(s.prompts) for s in tests)} test prompts")
    y = torch.tensor(fit.labels, dtype=torch.float32)
    probes = _layer_scores(prompt_activations(source, tokenizer, fit.prompts), y, contrast_directions(source, tokenizer))
    acts = {s.name: prompt_activations(model, tokenizer, s.prompts) for s in tests}
    headline = "real" if "real" in acts else "held_out"
    layers = []
    for layer, p in enumerate(probes):
        entry: dict = {"layer": layer, "supervised": {}, "contrast_pairs": {}}
        for s in tests:
            lab = torch.tensor(s.labels)
            x = acts[s.name][layer]
            entry["supervised"][s.name] = auroc_ci(x @ p["w"] + p["b"], lab, cfg.seed)
            entry["contrast_pairs"][s.name] = auroc_ci(x @ p["dir"], lab, cfg.seed)
        entry["supervised"] |= entry["supervised"][headline]
        entry["contrast_pairs"] |= entry["contrast_pairs"][headline]
        layers.append(entry)
    step("baselines")
    best = {}
    for kind, val in (("supervised", "val_supervised"), ("contrast_pairs", "val_contrast")):
        chosen = max(range(len(probes)), key=lambda i, v=val: probes[i][v])  # by the fit set's validation part
        best[kind] = layers[chosen][kind] | {"layer": chosen, "validation_auroc": probes[chosen][val]}
    if save is not None:
        shape = {"states": len(probes), "hidden": int(probes[0]["dir"].shape[0]), "vocab": len(tokenizer)}
        _save_best(save, probes, best, shape, cfg)
    return {
        "headline_set": headline,
        "layers": layers,
        "best": best,
        "baselines": _baselines(cfg, tokenizer, fit, tests, cfg.seed),
        "n": {"fit": len(fit.prompts), **{s.name: len(s.prompts) for s in tests}},
        "fitted_on": "another model" if fit_model is not None else "this model",
    }


def _save_best(path, probes: list[dict], best: dict, shape: dict, cfg: Config) -> None:
    sup, con = best["supervised"]["layer"], best["contrast_pairs"]["layer"]
    meta = {
        "backdoor": cfg.backdoor.kind,
        "trigger": cfg.backdoor.trigger,
        "seed": cfg.seed,
        "validation_auroc": {
            "supervised": probes[sup]["val_supervised"],
            "contrast_pairs": probes[con]["val_contrast"],
        },
    }
    save_probe(path, probes[sup] | {"layer": sup}, probes[con] | {"layer": con}, shape, meta)
