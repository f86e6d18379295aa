"""The persistence sweep (``rlhf sweep``), pure parts: the sweep file, its cells, the stage graph
with shared stages built once, the held-out reward and the tidy result rows.

A sweep file (YAML)::

    base: {model.preset: tiny}            # config keys for every stage (dotted or nested)
    grid:                                  # config key -> values; the cells are the product
      backdoor.mechanism: [normal, cot, distilled]
      seed: [0, 1, 2]
      method: [safety_sft, ppo]            # sweep key: the safety method
      control: [false, true]               # sweep key: the method's control (trigger in training)
    control_fractions: {safety_sft: 0.5, ppo: 0.5}
    budgets:                               # config keys per stage (sft, distill, rm, safety_sft, ppo, eval)
      sft: {sft.max_steps: 150}
    reward_samples: 64                     # held-out prompts for reward_before / reward_after
    resources: {eval: {num_cpus: 1}}       # Ray resources each stage task declares

Each cell runs: backdoor SFT (``distilled``: SFT of the CoT policy, then ``rlhf distill``) ->
eval before -> safety method -> eval after; one reward model per sweep scores the held-out
answers. A stage's identity is a digest of the config it reads and of the stages it reads, so
every stage that two cells share (one policy for all methods and controls of a mechanism, size
and seed; one reward model) is one stage, built once.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhf.config.core import Config, build_config, merge, read_yaml, set_key
from rlhf.config.resolve import POLICY_SECTIONS
from rlhf.errors import ConfigError
from rlhf.kinds import mechanism_spec

METHODS = ("safety_sft", "ppo")
SWEEP_KEYS = ("method", "control")
STAGE_KINDS = ("sft", "distill", "rm", "eval_before", "safety", "eval_after")
BUDGET_STAGES = ("sft", "distill", "rm", "safety_sft", "ppo", "eval")
TOP_KEYS = ("base", "grid", "control_fractions", "budgets", "reward_samples", "resources")
DEFAULT_CONTROL = {"safety_sft": 0.5, "ppo": 0.5}
CONTROL_KEY = {"safety_sft": "safety_sft.triggered_fraction", "ppo": "ppo.triggered_prompt_fraction"}
# Ray resources a stage task declares. The training stages are drivers: their Ray Train workers
# and PPO actors ask the cluster for their own CPUs, so the task itself holds none (holding one
# would deadlock a 2-CPU machine). Evaluation samples in the task itself.
DEFAULT_RESOURCES = {
    "sft": {"num_cpus": 0},
    "distill": {"num_cpus": 0},
    "rm": {"num_cpus": 0},
    "eval_before": {"num_cpus": 1},
    "safety": {"num_cpus": 0},
    "eval_after": {"num_cpus": 1},
}
# The config sections a stage reads (its identity; the policy's own sections come with it).
STAGE_SECTIONS = {
    "sft": (*POLICY_SECTIONS, "sft"),
    "distill": (*POLICY_SECTIONS, "sft", "eval"),  # + ppo.rollout_workers (its samplers)
    "rm": ("seed", "model", "backdoor", "data", "rm"),
    "eval": ("eval", "redteam"),
    "safety_sft": ("safety_sft", "eval", "redteam"),
    "ppo": ("ppo", "eval", "serve", "redteam", "resources"),
}


@dataclass
class Sweep:
    path: str
    base: dict[str, Any]
    grid: dict[str, list]
    control_fractions: dict[str, float]
    budgets: dict[str, dict[str, Any]]
    reward_samples: int
    resources: dict[str, dict[str, float]]


@dataclass
class Stage:
    """One unit of work: ``kind``, its config tree, the stages it reads (by id)."""

    id: str
    kind: str
    label: str
    tree: dict[str, Any]
    deps: dict[str, str] = field(default_factory=dict)  # role -> stage id (policy, cot, rm)
    extra: dict[str, Any] = field(default_factory=dict)
    cells: list[str] = field(default_factory=list)


@dataclass
class Cell:
    id: str
    values: dict[str, Any]  # grid key -> value
    stages: dict[str, str]  # role (sft, distill, eval_before, safety, eval_after, rm) -> stage id


@dataclass
class Plan:
    sweep: Sweep
    cells: list[Cell]
    stages: dict[str, Stage]  # in an order where every stage follows the stages it reads


# ---- the sweep file ------------------------------------------------------------------------


def _where(path: str, what: str) -> str:
    return f"sweep file {path}: {what}"


def _tree(mapping: Any, path: str, what: str) -> dict[str, Any]:
    """A config tree from a mapping of dotted or nested keys."""
    if mapping is None:
        return {}
    if not isinstance(mapping, dict):
        raise ConfigError(_where(path, f"'{what}' must be a mapping of config keys"))
    tree: dict[str, Any] = {}
    for key, value in mapping.items():
        set_key(tree, str(key), value)
    return tree


def parse_sweep(data: Any, path: str = "<sweep>") -> Sweep:
    """Check the shape of a sweep file; every cell's config is checked by ``plan_sweep``."""
    if not isinstance(data, dict):
        raise ConfigError(_where(path, "top level must be a mapping"))
    unknown = [k for k in data if k not in TOP_KEYS]
    if unknown:
        raise ConfigError(_where(path, f"unknown key '{unknown[0]}' (known: {', '.join(TOP_KEYS)})"))
    grid = data.get("grid")
    if not isinstance(grid, dict) or not grid:
        raise ConfigError(_where(path, "'grid' is empty or missing: give at least one key with a list of values"))
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(_where(path, f"grid key '{key}' needs a non-empty list of values"))
        if len({json.dumps(v, sort_keys=True, default=str) for v in values}) != len(values):
            raise ConfigError(_where(path, f"grid key '{key}' repeats a value"))
    for value in grid.get("method", []):
        if value not in METHODS:
            raise ConfigError(
                _where(path, f"grid key 'method': unknown value {value!r} (choose from {', '.join(METHODS)})")
            )
    for value in grid.get("control", []):
        if not isinstance(value, bool):
            raise ConfigError(_where(path, f"grid key 'control': {value!r} is not true or false"))
    return Sweep(
        path=path,
        base=_tree(data.get("base"), path, "base"),
        grid={str(k): list(v) for k, v in grid.items()},
        control_fractions=_control_fractions(data.get("control_fractions"), path),
        budgets=_budgets(data.get("budgets"), path),
        reward_samples=_positive_int(data.get("reward_samples", 64), path, "reward_samples"),
        resources=_resources(data.get("resources"), path),
    )


def _positive_int(value: Any, path: str, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(_where(path, f"'{key}' must be a positive integer, not {value!r}"))
    return value


def _control_fractions(raw: Any, path: str) -> dict[str, float]:
    out = dict(DEFAULT_CONTROL)
    if raw is None:
        return out
    if not isinstance(raw, dict):
        raise ConfigError(_where(path, "'control_fractions' must map a method to a fraction"))
    for method, value in raw.items():
        if method not in METHODS:
            raise ConfigError(_where(path, f"control_fractions: unknown method '{method}' ({', '.join(METHODS)})"))
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
            raise ConfigError(_where(path, f"control_fractions.{method}: {value!r} is not a fraction in (0, 1)"))
        out[method] = float(value)
    return out


def _budgets(raw: Any, path: str) -> dict[str, dict[str, Any]]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(_where(path, "'budgets' must map a stage to config keys"))
    out = {}
    for stage, keys in raw.items():
        if stage not in BUDGET_STAGES:
            raise ConfigError(_where(path, f"budgets: unknown stage '{stage}' (stages: {', '.join(BUDGET_STAGES)})"))
        out[stage] = _tree(keys, path, f"budgets.{stage}")
    return out


def _resources(raw: Any, path: str) -> dict[str, dict[str, float]]:
    out = {kind: dict(r) for kind, r in DEFAULT_RESOURCES.items()}
    if raw is None:
        return out
    if not isinstance(raw, dict):
        raise ConfigError(_where(path, "'resources' must map a stage kind to Ray resources"))
    for kind, spec in raw.items():
        if kind not in DEFAULT_RESOURCES or not isinstance(spec, dict):
            raise ConfigError(_where(path, f"resources: unknown stage kind '{kind}' ({', '.join(DEFAULT_RESOURCES)})"))
        for name, value in spec.items():
            if name not in ("num_cpus", "num_gpus") or isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(_where(path, f"resources.{kind}.{name}: expected num_cpus/num_gpus with a number"))
            if value < 0:
                raise ConfigError(_where(path, f"resources.{kind}.{name}: {value} is negative"))
            out[kind][name] = float(value)
    return out


def load_sweep(path: str | Path) -> Sweep:
    return parse_sweep(read_yaml(path, what="sweep file"), str(Path(path)))


# ---- cells and stages ----------------------------------------------------------------------


def cell_values(sweep: Sweep) -> list[dict[str, Any]]:
    keys = list(sweep.grid)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(sweep.grid[k] for k in keys))]


def _short(key: str, keys: Sequence[str]) -> str:
    last = key.rsplit(".", 1)[-1]
    return last if sum(k.rsplit(".", 1)[-1] == last for k in keys) == 1 else key


def cell_id(values: dict[str, Any]) -> str:
    """``mechanism=normal,seed=0,method=ppo,control=off``: readable, a valid directory name."""
    parts = []
    for key, value in values.items():
        text = ("on" if value else "off") if isinstance(value, bool) else str(value)
        parts.append(f"{_short(key, list(values))}={text.replace('/', '_').replace(' ', '_')}")
    return ",".join(parts)


def cell_tree(sweep: Sweep, values: dict[str, Any]) -> dict[str, Any]:
    """The config tree of a cell: base < grid values (the sweep keys turned into config keys)."""
    tree = copy.deepcopy(sweep.base)
    for key, value in values.items():
        if key not in SWEEP_KEYS:
            set_key(tree, key, value)
    method = values.get("method", "safety_sft")
    if values.get("control"):
        set_key(tree, CONTROL_KEY[method], sweep.control_fractions[method])
    return tree


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _sections(cfg: Config, names: Sequence[str]) -> dict[str, Any]:
    dumped = cfg.model_dump(mode="json")
    return {name: dumped[name] for name in names}


def _validated(sweep: Sweep, tree: dict[str, Any], where: str) -> Config:
    try:
        return build_config(tree)
    except ConfigError as exc:
        raise ConfigError(_where(sweep.path, f"{where}: {exc}")) from None


class _Builder:
    def __init__(self, sweep: Sweep):
        self.sweep = sweep
        self.stages: dict[str, Stage] = {}

    def add(self, kind: str, label: str, tree: dict, deps: dict[str, str], key: Any, cell: str, **extra) -> str:
        sid = f"{kind}-{digest([kind, key, deps, extra])}"
        stage = self.stages.setdefault(sid, Stage(sid, kind, label, tree, dict(deps), dict(extra)))
        if cell not in stage.cells:
            stage.cells.append(cell)
        return sid

    def cell(self, values: dict[str, Any]) -> Cell:
        sweep, cid = self.sweep, cell_id(values)
        tree = cell_tree(sweep, values)
        method = values.get("method", "safety_sft")
        stages: dict[str, str] = {}
        stage_tree = {name: merge(tree, sweep.budgets.get(name, {})) for name in BUDGET_STAGES}
        cfgs = {name: _validated(sweep, t, f"cell {cid}, stage {name}") for name, t in stage_tree.items()}
        b = cfgs["sft"].backdoor
        tag = f"{b.mechanism} {cfgs['sft'].model.preset} seed {cfgs['sft'].seed}"
        rm_tree = merge(sweep.base, sweep.budgets.get("rm", {}))
        rm_cfg = _validated(sweep, rm_tree, "reward model")
        stages["rm"] = self.add("rm", "reward model", rm_tree, {}, _sections(rm_cfg, STAGE_SECTIONS["rm"]), cid)
        teacher = mechanism_spec(b.mechanism).teacher  # distilled: a cot policy is trained first
        if teacher is not None:
            cot_tree = merge(stage_tree["sft"], {"backdoor.mechanism": teacher})
            cot_cfg = build_config(cot_tree)
            cot = self.add(
                "sft", tag.replace(b.mechanism, teacher), cot_tree, {}, _sections(cot_cfg, STAGE_SECTIONS["sft"]), cid
            )
            key = [_sections(cfgs["distill"], STAGE_SECTIONS["distill"]), cfgs["distill"].ppo.rollout_workers]
            stages["sft"] = cot
            stages["distill"] = policy = self.add("distill", tag, stage_tree["distill"], {"cot": cot}, key, cid)
        else:
            key = _sections(cfgs["sft"], STAGE_SECTIONS["sft"])
            stages["sft"] = policy = self.add("sft", tag, stage_tree["sft"], {}, key, cid)
        ev = _sections(cfgs["eval"], STAGE_SECTIONS["eval"])
        deps = {"policy": policy, "rm": stages["rm"]}
        n = sweep.reward_samples
        stages["eval_before"] = self.add(
            "eval_before", f"eval {tag}", stage_tree["eval"], deps, ev, cid, reward_samples=n
        )
        key = _sections(cfgs[method], STAGE_SECTIONS[method])
        control = "control" if values.get("control") else "standard"
        label = f"{method} ({control}) {tag}"
        stages["safety"] = self.add(
            "safety", label, stage_tree[method], {"policy": policy, "rm": stages["rm"]}, key, cid, method=method
        )
        deps = {"policy": stages["safety"], "rm": stages["rm"]}
        stages["eval_after"] = self.add(
            "eval_after", f"eval after {label}", stage_tree["eval"], deps, ev, cid, reward_samples=n
        )
        return Cell(cid, values, stages)


def plan_sweep(sweep: Sweep) -> Plan:
    """Every cell's config validated (``build_config``) and its stages, shared ones merged.
    Raises a one-line ``ConfigError`` naming the cell and key before anything runs."""
    builder = _Builder(sweep)
    cells = [builder.cell(values) for values in cell_values(sweep)]
    return Plan(sweep, cells, builder.stages)


def ready_stages(plan: Plan, done: set[str], running: set[str], failed: set[str]) -> list[Stage]:
    """Stages whose inputs are all done and that are neither done, running nor failed."""
    out = []
    for stage in plan.stages.values():
        if stage.id in done or stage.id in running or stage.id in failed:
            continue
        if all(dep in done for dep in stage.deps.values()):
            out.append(stage)
    return out


def blocked_by(plan: Plan, failed: set[str]) -> set[str]:
    """Stages that can never run because a stage they read (directly or not) failed."""
    out: set[str] = set()
    changed = True
    while changed:
        changed = False
        for stage in plan.stages.values():
            if stage.id not in out and any(d in failed or d in out for d in stage.deps.values()):
                out.add(stage.id)
                changed = True
    return out
