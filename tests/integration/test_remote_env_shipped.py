"""PettingZoo's own tests through the proxy (`RemoteParallelEnv` on a standalone env server) on
every env a shipped config names, with that config's kwargs, and on multiwalker and pistonball:
`parallel_api_test`, `parallel_seed_test`, and the AEC API test of the proxy turned into an AEC env
(`parallel_to_aec`). The four envs of test_env_server.py run the API test in the normal suite;
these are long."""

from __future__ import annotations

import json
from contextlib import closing
from pathlib import Path

import pytest
from pettingzoo.test import api_test, parallel_api_test
from pettingzoo.utils.conversions import parallel_to_aec

from agent_node.remote_env import RemoteParallelEnv
from orchestrator.config import load_config
from tests.integration.remote_envs import seed_test_through_the_proxy

pytestmark = [pytest.mark.integration, pytest.mark.long, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]


def shipped_envs() -> dict[str, dict]:
    """env name -> the kwargs of the first shipped config (configs/, examples/) that names it."""
    envs: dict[str, dict] = {}
    for path in sorted([*(REPO / "configs").glob("*.yaml"), *(REPO / "examples").rglob("configs/*.yaml")]):
        env = load_config(path).env
        envs.setdefault(env.name, dict(env.kwargs))
    return envs


ENVS = {
    **shipped_envs(),
    # Named by the README and the docs, not a shipped config: continuous actions, a state() that
    # raises once a walker has fallen (multiwalker), image observations (pistonball).
    "pettingzoo.sisl.multiwalker_v9:parallel_env": {},
    "pettingzoo.butterfly.pistonball_v6:parallel_env": {"n_pistons": 4, "max_cycles": 30},
}


def serve(env_server, name: str, kwargs: dict) -> str:
    return env_server("--env", name, "--kwargs", json.dumps(kwargs), "--no-autoreset")


@pytest.mark.parametrize("name", ENVS)
def test_parallel_api_test_through_the_proxy(env_server, name):
    with closing(RemoteParallelEnv(serve(env_server, name, ENVS[name]))) as env:
        parallel_api_test(env, num_cycles=200)


@pytest.mark.parametrize("name", ENVS)
def test_parallel_seed_test_through_the_proxy(env_server, name):
    seed_test_through_the_proxy(lambda: serve(env_server, name, ENVS[name]))


@pytest.mark.parametrize("name", ENVS)
def test_the_proxy_as_an_aec_env_passes_the_aec_api_test(env_server, name):
    with closing(RemoteParallelEnv(serve(env_server, name, ENVS[name]))) as env:
        api_test(parallel_to_aec(env), num_cycles=50)
