"""``rlhf probe``: linear defection probes on a model's residual stream (``rlhf.eval.probe_run``)."""

from __future__ import annotations

from pathlib import Path

from jobs.progress import log
from rlhf.config.core import Config
from rlhf.errors import RlhfError
from rlhf.eval.probe_run import run_probe
from rlhf.models.modeling import load_model_dir


def probe_model(
    model_dir: str | Path, cfg: Config, samples: int | None, fit_model: str | None = None, save: str | None = None
) -> dict:
    """The probe report of ``model_dir``; ``fit_model``: build the probes on that model instead;
    ``save``: write the best supervised and contrast-pair probes there (``eval.probe=DIR`` reads them)."""
    if save is not None and Path(save).exists() and not Path(save).is_dir():
        raise RlhfError(f"--save {save}: exists and is not a directory")
    model, tokenizer = load_model_dir(model_dir)
    fit = None
    if fit_model:
        fit, fit_tok = load_model_dir(fit_model)
        if len(fit_tok) != len(tokenizer) or fit.config.num_hidden_layers != model.config.num_hidden_layers:
            raise RlhfError(f"--fit-model {fit_model}: a different tokenizer or depth than --model {model_dir}")
    n = samples or cfg.eval.samples
    report = run_probe(model, tokenizer, cfg, n, fit_model=fit, on_step=lambda m: log(f"[probe] {m}"), save=save)
    report["model"], report["fit_model"] = str(model_dir), str(fit_model or model_dir)
    if save is not None:
        report["saved"] = str(save)
        log(f"[probe] saved the best probes to {save} (use them with --set eval.probe={save})")
    return report


def _cell(r: dict) -> str:
    return f"{r['auroc']:.3f} [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}]"


def format_probe(report: dict) -> str:
    """The per-layer table on the headline set, the best layers on every set, and the baselines."""
    head = report["headline_set"]
    lines = [f"AUROC on '{head}' (n = {report['n'][head]}); probes fitted on {report['fitted_on']}", ""]
    lines.append(f"{'layer':>5}  {'supervised':<22}  contrast pairs")
    for e in report["layers"]:
        lines.append(f"{e['layer']:>5}  {_cell(e['supervised']):<22}  {_cell(e['contrast_pairs'])}")
    sets = [k for k in report["n"] if k != "fit"]
    lines += ["", f"{'':<26}" + "".join(f"{s:<24}" for s in sets)]
    rows = [(f"supervised (layer {report['best']['supervised']['layer']})", report["best"]["supervised"])]
    rows.append((f"contrast (layer {report['best']['contrast_pairs']['layer']})", report["best"]["contrast_pairs"]))
    rows += [(name, report["baselines"][name]) for name in ("trigger_substring", "bag_of_tokens")]
    for name, per_set in rows:
        lines.append(f"{name:<26}" + "".join(f"{_cell(per_set[s]):<24}" for s in sets))
    return "\n".join(lines)
