"""The cluster that ``local_ray`` starts listens and connects on loopback only."""

import psutil
import pytest
import ray

from tests.ray.conftest import is_loopback, non_loopback, our_processes, sockets

pytestmark = pytest.mark.ray


def test_every_listener_and_peer_is_loopback(ray_cluster):
    @ray.remote(num_cpus=0.1)
    def node_ip():
        return ray.util.get_node_ip_address()

    assert ray.get(node_ip.remote()) == "127.0.0.1"
    procs = our_processes()
    assert len(procs) >= 4, "expected GCS, raylet and workers beside the driver"
    listeners = [c for _, c in sockets(procs) if c.status == psutil.CONN_LISTEN]
    assert len(listeners) >= 3, "found almost no listening sockets: the check would be vacuous"
    seen, bad = non_loopback(procs)
    assert seen >= len(listeners)
    assert not bad, bad


def test_nodes_report_loopback_address(ray_cluster):
    nodes = ray.nodes()
    assert [n["NodeManagerAddress"] for n in nodes if n["Alive"]] == ["127.0.0.1"]


def test_loopback_check_detects_other_addresses():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("::ffff:127.0.0.1")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("192.0.2.2")
