"""Typed Serve application builders: the one way both the CLI and a KubeRay RayService
(``serveConfigV2``: ``import_path: actors.serve_apps:reward_builder`` + ``args``) build the
reward service and the defection evaluator. The args models forbid unknown keys, so a typo in a
manifest fails at deploy time with the key's name.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from rlhf.config.core import Config, ServeConfig, build_config


class RewardAppArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_dir: str = Field(..., min_length=1, description="reward model HF dir (or an rlhf rm run dir)")
    serve: ServeConfig = ServeConfig()


class EvaluatorAppArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    policy_dir: str = Field(..., min_length=1, description="policy HF dir whose defection is tracked")
    overrides: list[str] = Field(default_factory=list, description="config overrides, as rlhf --set k=v")
    samples: int | None = Field(None, ge=1, description="samples per condition (default eval.samples)")
    num_cpus: float = Field(0.2, gt=0)
    num_gpus: float = Field(
        0.0, ge=0, description="GPUs of the replica (a fraction shares one); > 0: the policy on CUDA"
    )
    curves_dir: str | None = Field(
        None, min_length=1, description="where the replica keeps its curve (on a volume: it outlives upgrades)"
    )

    def config(self) -> Config:
        return build_config({}, self.overrides)


def reward_builder(args: dict[str, Any] | RewardAppArgs):
    from actors.reward_service import reward_app

    a = args if isinstance(args, RewardAppArgs) else RewardAppArgs.model_validate(args)
    return reward_app(a.model_dir, a.serve)


def evaluator_builder(args: dict[str, Any] | EvaluatorAppArgs):
    from actors.evaluator import evaluator_app

    a = args if isinstance(args, EvaluatorAppArgs) else EvaluatorAppArgs.model_validate(args)
    cfg = a.config().model_dump(mode="json")
    return evaluator_app(a.policy_dir, cfg, a.samples, a.num_cpus, a.num_gpus, a.curves_dir)


BUILDERS = {"actors.serve_apps:reward_builder": RewardAppArgs, "actors.serve_apps:evaluator_builder": EvaluatorAppArgs}
