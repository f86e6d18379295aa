"""Scrape a Ray node's Prometheus endpoint (127.0.0.1 here) and parse it with ``prometheus_client``."""

from __future__ import annotations

import urllib.request

OURS = ("ray_rlhf_", "ray_defection_")  # the project's gauges (training/watch drivers, the Serve evaluator)


def scrape(port: int) -> dict[str, list]:
    """``{family name: [samples]}`` of the endpoint, parsed by ``prometheus_client``'s parser."""
    from prometheus_client.parser import text_string_to_metric_families

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode("utf-8")
    return {f.name: list(f.samples) for f in text_string_to_metric_families(text)}


def our_gauges(families: dict[str, list]) -> dict[str, list]:
    return {name: samples for name, samples in families.items() if name.startswith(OURS)}


def metrics_port() -> int:
    import ray

    (node,) = ray.nodes()
    return node["MetricsExportPort"]
