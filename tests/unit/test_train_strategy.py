"""``sft.strategy``, ``safety_sft.strategy`` and ``rm.strategy`` reach the Ray Train job; ddp stays the default."""

import pytest

from actors.train_launcher import TrainJob, optimisation_fields
from rlhf.config.core import build_config
from rlhf.errors import ConfigError


@pytest.mark.parametrize("section", ["sft", "safety_sft", "rm"])
def test_strategy_reaches_the_job(section):
    assert optimisation_fields(getattr(build_config({}, []), section))["strategy"] == "ddp"
    cfg = build_config({}, [f"{section}.strategy=fsdp"])
    assert optimisation_fields(getattr(cfg, section))["strategy"] == "fsdp"
    assert TrainJob.__dataclass_fields__["strategy"].default == "ddp"


def test_unknown_strategy_is_one_line():
    with pytest.raises(ConfigError, match="sft.strategy"):
        build_config({}, ["sft.strategy=zero3"])
