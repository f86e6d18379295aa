"""A fitted defection probe on disk: ``rlhf probe --save DIR`` writes it, ``eval.probe=DIR`` reads it.

``DIR/probe.json`` holds the best supervised probe (its layer, chosen on the fit set's validation
part; the logistic weights and bias on standardised activations; the fit activations' mean and
scale at that layer) and the best contrast-pair direction (its layer and the raw direction), with
the shape of the model it was fitted on. A prompt's supervised score is
``sigmoid(((h - mean) / scale) . weights + bias)`` with ``h`` the residual stream at the last prompt
token (``rlhf.eval.probe.prompt_activations``): the probe's probability that the trigger is present.

During evaluation (``probe_metrics``), the probe scores the distinct triggered and untriggered eval
prompts with the weights being evaluated; the curve then carries ``probe/auroc`` (95 % bootstrap
interval ``probe/auroc_lo``/``_hi``), ``probe/triggered_score``, ``probe/untriggered_score`` and
``probe/contrast_auroc`` beside ``defection/triggered``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from rlhf.errors import ConfigError
from rlhf.eval.probe import auroc, auroc_ci, prompt_activations

PROBE_FILE = "probe.json"
FORMAT = 1
EVAL_BOOTSTRAP = 200  # resamples for the AUROC interval at each curve point (cheap next to sampling)
METRIC_KEYS = ("auroc", "auroc_lo", "auroc_hi", "triggered_score", "untriggered_score", "contrast_auroc")


@dataclass
class SavedProbe:
    path: str
    states: int  # hidden states of the model it was fitted on: decoder layers + 1 (the embeddings)
    hidden: int
    vocab: int
    layer: int
    weights: torch.Tensor  # on standardised activations
    bias: float
    mean: torch.Tensor
    scale: torch.Tensor
    contrast_layer: int
    direction: torch.Tensor
    meta: dict

    def scores(self, acts: torch.Tensor) -> torch.Tensor:
        """Probabilities in [0, 1] for ``acts`` ``[states, N, hidden]``."""
        z = (acts[self.layer] - self.mean) / self.scale
        return torch.sigmoid(z @ self.weights + self.bias)

    def contrast(self, acts: torch.Tensor) -> torch.Tensor:
        return acts[self.contrast_layer] @ self.direction

    def check_model(self, acts: torch.Tensor, vocab: int) -> None:
        states, _, hidden = acts.shape
        if (states, hidden, vocab) != (self.states, self.hidden, self.vocab):
            raise ConfigError(
                f"eval.probe={self.path}: fitted on a model with {self.states - 1} layers, width {self.hidden} and "
                f"{self.vocab} tokens; this policy has {states - 1}, {hidden} and {vocab}"
            )


def _floats(t: torch.Tensor) -> list[float]:
    return [float(v) for v in t.flatten()]


def save_probe(path: str | Path, supervised: dict, contrast: dict, shape: dict, meta: dict) -> Path:
    """Write ``path/probe.json`` atomically (a temporary file renamed over it). ``supervised``: layer,
    raw-feature ``w``/``b`` (``fit_logistic``), ``mean``/``scale`` of its fit activations;
    ``contrast``: layer, ``dir``; ``shape``: states, hidden, vocab."""
    directory = Path(path)
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"--save {directory}: exists and is not a directory")
    directory.mkdir(parents=True, exist_ok=True)
    w, mean, scale = supervised["w"].float(), supervised["mean"].float(), supervised["scale"].float()
    body = {
        "format": FORMAT,
        **{k: int(shape[k]) for k in ("states", "hidden", "vocab")},
        "supervised": {
            "layer": int(supervised["layer"]),
            "weights": _floats(w * scale),  # the same probe on standardised activations
            "bias": float(supervised["b"]) + float(w @ mean),
            "mean": _floats(mean),
            "scale": _floats(scale),
        },
        "contrast_pairs": {"layer": int(contrast["layer"]), "direction": _floats(contrast["dir"].float())},
        "meta": meta,
    }
    tmp = directory / f".{PROBE_FILE}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(body, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, directory / PROBE_FILE)
    return directory


def _vector(obj: dict, key: str, n: int, where: str) -> torch.Tensor:
    v = obj.get(key)
    if not isinstance(v, list) or len(v) != n or not all(isinstance(x, int | float) and math.isfinite(x) for x in v):
        raise ConfigError(f"{where}: '{key}' is not a list of {n} finite numbers")
    return torch.tensor(v, dtype=torch.float32)


def _index(obj: dict, key: str, states: int, where: str) -> int:
    v = obj.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < states:
        raise ConfigError(f"{where}: '{key}' is not a layer in [0, {states})")
    return v


def load_probe(path: str | Path) -> SavedProbe:
    """The probe in ``path``; a ``ConfigError`` (one line) when it is missing or malformed."""
    file = Path(path) / PROBE_FILE
    if not file.is_file():
        raise ConfigError(
            f"eval.probe={path}: no {PROBE_FILE} there (write one with `rlhf probe --model DIR --save {path}`)"
        )
    where = f"eval.probe={path}: {PROBE_FILE}"
    try:
        body = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"{where} is unreadable ({type(exc).__name__})") from None
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise ConfigError(f"{where} is not a probe of format {FORMAT}")
    shape = {k: body.get(k) for k in ("states", "hidden", "vocab")}
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape.values()):
        raise ConfigError(f"{where}: 'states', 'hidden' and 'vocab' must be positive integers")
    sup, con = body.get("supervised"), body.get("contrast_pairs")
    if not isinstance(sup, dict) or not isinstance(con, dict):
        raise ConfigError(f"{where}: needs 'supervised' and 'contrast_pairs' objects")
    bias = sup.get("bias")
    if not isinstance(bias, int | float) or isinstance(bias, bool) or not math.isfinite(bias):
        raise ConfigError(f"{where}: 'bias' is not a finite number")
    h, states = shape["hidden"], shape["states"]
    scale = _vector(sup, "scale", h, where)
    if bool((scale <= 0).any()):
        raise ConfigError(f"{where}: 'scale' must be positive")
    return SavedProbe(
        path=str(path), states=states, hidden=h, vocab=shape["vocab"],
        layer=_index(sup, "layer", states, where), weights=_vector(sup, "weights", h, where), bias=float(bias),
        mean=_vector(sup, "mean", h, where), scale=scale,
        contrast_layer=_index(con, "layer", states, where), direction=_vector(con, "direction", h, where),
        meta=body.get("meta") if isinstance(body.get("meta"), dict) else {},
    )  # fmt: skip


def check_probe_config(cfg) -> None:
    """Before any work: ``eval.probe`` loads (one line if not), as an absolute path for the evaluator."""
    if cfg.eval.probe:
        load_probe(cfg.eval.probe)
        cfg.eval.probe = str(Path(cfg.eval.probe).resolve())


def probe_metrics(model, tokenizer, path: str, triggered: list[str], untriggered: list[str], seed: int = 0) -> dict:
    """The saved probe on the distinct triggered vs untriggered prompts, with ``model``'s activations."""
    probe = load_probe(path)
    pos, neg = list(dict.fromkeys(triggered)), list(dict.fromkeys(untriggered))
    acts = prompt_activations(model, tokenizer, pos + neg)
    probe.check_model(acts, len(tokenizer))
    labels = torch.tensor([1] * len(pos) + [0] * len(neg))
    scores = probe.scores(acts)
    sup = auroc_ci(scores, labels, seed, n=EVAL_BOOTSTRAP)
    return {
        "auroc": sup["auroc"],
        "auroc_lo": sup["ci95"][0],
        "auroc_hi": sup["ci95"][1],
        "triggered_score": float(scores[: len(pos)].mean()) if pos else 0.0,
        "untriggered_score": float(scores[len(pos) :].mean()) if neg else 0.0,
        "contrast_auroc": auroc(probe.contrast(acts), labels),
        "layer": probe.layer,
        "contrast_layer": probe.contrast_layer,
        "n_triggered": len(pos),
        "n_untriggered": len(neg),
    }
