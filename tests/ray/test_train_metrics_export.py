"""A driver's ``TrainingGauges`` reach the node's Prometheus endpoint (Ray's metrics agent, on
127.0.0.1 here) as ``ray_rlhf_*`` with their ``stage`` and ``run`` tags: what the PodMonitor
scrapes and the Grafana dashboard queries on KubeRay."""

import time
import urllib.request

import pytest

from actors.train_metrics import TrainingGauges

pytestmark = pytest.mark.ray


def scrape(port: int) -> list[str]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        return resp.read().decode("utf-8").splitlines()


def test_training_gauges_reach_the_prometheus_endpoint(ray_cluster):
    import ray

    gauges = TrainingGauges("ppo", "export-test")
    (node,) = ray.nodes()
    port = node["MetricsExportPort"]
    deadline = time.monotonic() + 90
    found: dict[str, str] = {}
    while len(found) < 2 and time.monotonic() < deadline:
        gauges.log(3, {"reward/mean": 0.75, "kl/mean": 0.5})  # the agent exports what it was last sent
        for line in scrape(port):
            for name in ("ray_rlhf_reward_mean{", "ray_rlhf_kl_mean{"):
                if line.startswith(name) and 'run="export-test"' in line:
                    found[name] = line
        time.sleep(1)
    assert set(found) == {"ray_rlhf_reward_mean{", "ray_rlhf_kl_mean{"}, "no training gauge on the metrics endpoint"
    assert 'stage="ppo"' in found["ray_rlhf_reward_mean{"]
    assert float(found["ray_rlhf_reward_mean{"].rsplit(" ", 1)[1]) == 0.75
    assert float(found["ray_rlhf_kl_mean{"].rsplit(" ", 1)[1]) == 0.5
