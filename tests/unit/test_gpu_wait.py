"""``resources.device=cuda`` on a Ray cluster without a GPU yet (issue 28, item 2): the run asks the
autoscaler for a GPU and waits ``resources.gpu_wait_s`` for it, then fails in one line (exit 2)."""

from __future__ import annotations

import pytest

from actors.gpu_wait import DECLARED, cluster_gpus
from rlhf.config.core import build_config
from rlhf.errors import ConfigError
from rlhf.models.device import resolve_device


class FakeCluster:
    """GPUs that join after ``joins_after`` polls; a clock that the sleeps advance."""

    def __init__(self, joins_after: int | None):
        self.polls, self.requests, self.now, self.joins_after = 0, 0, 0.0, joins_after

    def gpus(self) -> float:
        self.polls += 1
        return 1.0 if self.joins_after is not None and self.polls > self.joins_after else 0.0

    def request(self) -> None:
        self.requests += 1

    def sleep(self, s: float) -> None:
        self.now += s

    def kwargs(self) -> dict:
        return {"gpus": self.gpus, "request": self.request, "sleep": self.sleep, "clock": lambda: self.now}


def test_cuda_requests_a_gpu_and_waits_for_the_autoscaler():
    cluster = FakeCluster(joins_after=3)  # the GPU pod joins on the fourth look
    assert cluster_gpus("cuda", 600, loopback=False, **cluster.kwargs()) == 1.0
    assert cluster.requests == 1 and cluster.polls == 4 and 0 < cluster.now < 600


def test_cuda_without_a_gpu_after_gpu_wait_s_is_one_line():
    cluster = FakeCluster(joins_after=None)
    with pytest.raises(ConfigError) as err:
        cluster_gpus("cuda", 30, loopback=False, **cluster.kwargs())
    assert "resources.gpu_wait_s=30" in str(err.value) and "\n" not in str(err.value)
    assert cluster.requests == 1 and cluster.now == pytest.approx(30)


@pytest.mark.parametrize("requested,env", [("cpu", {DECLARED: "4"}), ("auto", {}), ("auto", {DECLARED: "0"})])
def test_cpu_and_undeclared_auto_never_ask_or_wait(requested, env):
    cluster = FakeCluster(joins_after=None)
    assert cluster_gpus(requested, 600, loopback=False, env=env, **cluster.kwargs()) == 0.0
    assert cluster.requests == 0 and cluster.now == 0


@pytest.mark.parametrize("up_now", [0, 1])
def test_auto_on_a_joined_cluster_does_not_depend_on_which_pods_are_up(up_now, capsys):
    """The same cluster configuration gives the same device whether a GPU pod is still up or not (issue
    28, item 2): undeclared is CPU even with a GPU present; declared GPUs are waited for like cuda."""
    present = FakeCluster(joins_after=0 if up_now else None)
    assert resolve_device("auto", cluster_gpus("auto", 600, loopback=False, env={}, **present.kwargs())) == "cpu"
    assert "declares no GPUs" in capsys.readouterr().err
    scaled = FakeCluster(joins_after=0 if up_now else 2)  # the declared GPU group starts at 0 pods
    gpus = cluster_gpus("auto", 600, loopback=False, env={DECLARED: "4"}, **scaled.kwargs())
    assert resolve_device("auto", gpus) == "cuda"
    assert scaled.requests == (0 if up_now else 1)


def test_a_bad_declaration_is_one_line():
    with pytest.raises(ConfigError, match="RLHF_CLUSTER_GPUS must be a number"):
        cluster_gpus("auto", 600, loopback=False, env={DECLARED: "lots"}, **FakeCluster(None).kwargs())


def test_our_own_cluster_cannot_grow_so_cuda_answers_at_once():
    cluster = FakeCluster(joins_after=None)
    assert cluster_gpus("cuda", 600, loopback=True, **cluster.kwargs()) == 0.0
    assert cluster.requests == 0 and cluster.now == 0


def test_gpu_wait_s_is_a_resources_key():
    assert build_config({}, []).resources.gpu_wait_s == 600
    assert build_config({}, ["resources.gpu_wait_s=0"]).resources.gpu_wait_s == 0
    with pytest.raises(ConfigError):
        build_config({}, ["resources.gpu_wait_s=-1"])
