"""``resources.device=cuda`` on a Ray cluster without a GPU yet (issue 28, item 2): the run asks the
autoscaler for a GPU and waits ``resources.gpu_wait_s`` for it, then fails in one line (exit 2)."""

from __future__ import annotations

import pytest

from actors.gpu_wait import cluster_gpus
from rlhf.config.core import build_config
from rlhf.errors import ConfigError


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


@pytest.mark.parametrize("requested", ["auto", "cpu"])
def test_auto_and_cpu_never_ask_or_wait(requested):
    cluster = FakeCluster(joins_after=None)
    assert cluster_gpus(requested, 600, loopback=False, **cluster.kwargs()) == 0.0
    assert cluster.requests == 0 and cluster.now == 0


def test_our_own_cluster_cannot_grow_so_cuda_answers_at_once():
    cluster = FakeCluster(joins_after=None)
    assert cluster_gpus("cuda", 600, loopback=True, **cluster.kwargs()) == 0.0
    assert cluster.requests == 0 and cluster.now == 0


def test_gpu_wait_s_is_a_resources_key():
    assert build_config({}, []).resources.gpu_wait_s == 600
    assert build_config({}, ["resources.gpu_wait_s=0"]).resources.gpu_wait_s == 0
    with pytest.raises(ConfigError):
        build_config({}, ["resources.gpu_wait_s=-1"])
