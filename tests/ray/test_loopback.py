"""The cluster that ``local_ray`` starts listens and connects on loopback only."""

import ipaddress
import os

import psutil
import pytest
import ray

pytestmark = pytest.mark.ray


def _is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def _cluster_processes(temp_dir: str) -> list[psutil.Process]:
    """Our driver's descendants (GCS, raylet, dashboard agents, workers)."""
    me = psutil.Process(os.getpid())
    return [me, *me.children(recursive=True)]


def _sockets(procs):
    for proc in procs:
        try:
            for conn in proc.net_connections(kind="inet"):
                yield proc, conn
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue


def test_every_listener_and_peer_is_loopback(ray_cluster):
    @ray.remote(num_cpus=0.1)
    def node_ip():
        return ray.util.get_node_ip_address()

    assert ray.get(node_ip.remote()) == "127.0.0.1"
    procs = _cluster_processes(ray_cluster)
    assert len(procs) >= 4, "expected GCS, raylet and workers beside the driver"
    listeners = [(p, c) for p, c in _sockets(procs) if c.status == psutil.CONN_LISTEN]
    assert listeners, "found no listening sockets: the check would be vacuous"
    bad = [f"{p.name()}({p.pid}) listens on {c.laddr.ip}:{c.laddr.port}" for p, c in listeners if not _is_loopback(c.laddr.ip)]
    assert not bad, bad
    peers = [(p, c) for p, c in _sockets(procs) if c.raddr]
    bad = [f"{p.name()}({p.pid}) -> {c.raddr.ip}:{c.raddr.port}" for p, c in peers if not _is_loopback(c.raddr.ip)]
    assert not bad, bad


def test_nodes_report_loopback_address(ray_cluster):
    nodes = ray.nodes()
    assert [n["NodeManagerAddress"] for n in nodes if n["Alive"]] == ["127.0.0.1"]


def test_loopback_check_detects_other_addresses():
    assert _is_loopback("127.0.0.1") and _is_loopback("::1") and _is_loopback("::ffff:127.0.0.1")
    assert not _is_loopback("0.0.0.0") and not _is_loopback("::") and not _is_loopback("192.0.2.2")
