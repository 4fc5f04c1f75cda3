"""PettingZoo's seed test through the proxy (`RemoteParallelEnv`) on standalone env servers, for
the env-server tests (test_env_server.py, test_remote_env_shipped.py)."""

from __future__ import annotations

from typing import Callable

from pettingzoo.test import parallel_seed_test

from agent_node.remote_env import RemoteParallelEnv


def seed_test_through_the_proxy(serve: Callable[[], str], num_cycles: int = 20) -> None:
    """`parallel_seed_test` on proxies, each env on a server of its own (`serve()` starts one and
    returns its endpoint), as two local envs are two objects; every proxy is closed after."""
    opened: list[RemoteParallelEnv] = []

    def remote() -> RemoteParallelEnv:
        opened.append(RemoteParallelEnv(serve()))
        return opened[-1]

    try:
        parallel_seed_test(remote, num_cycles=num_cycles)
    finally:
        for env in opened:
            env.close()
