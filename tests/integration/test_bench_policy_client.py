"""The benches' MLP policy client against a real env server, and bench/vs_rllib.py without RLlib.

Behaviour only (no timings): the client acts at every lockstep step with actions the server
accepts, and the side-by-side bench measures its Parley rows and says why RLlib's are missing.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

SPREAD = json.dumps({"N": 4, "max_cycles": 25, "continuous_actions": False})


def test_four_policy_clients_act_at_every_step_of_a_vectorized_server(env_server, spawn):
    endpoint = env_server("--env", "mpe2.simple_spread_v3", "--kwargs", SPREAD, "--copies", "3", "--max-steps", "30")
    clients = [
        spawn([sys.executable, str(REPO / "bench" / "policy_client.py"), endpoint, str(i), str(i)],
              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for i in range(4)
    ]
    for index, client in enumerate(clients):
        out, err = client.communicate(timeout=240)
        assert client.returncode == 0, f"client {index}: {err.decode()[-2000:]}"
        # answered every one of the 30 steps, and the server never had to default an action
        # (a rejected action, e.g. a wrong dtype or shape, would show up as a defaulted step)
        tag, answered, defaulted, seconds = out.decode().split()
        assert (tag, answered, defaulted) == ("TIMING", "30", "0")
        assert float(seconds) > 0


def rllib_installed() -> bool:
    # Ray core alone (the `[ray]` extra, for the launch backend) ships the ray/rllib sources
    # without RLlib's dependencies: the bench still takes the path without it, as
    # bench/vs_rllib.py decides, by importing.
    try:
        import ray.rllib  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.long
@pytest.mark.skipif(rllib_installed(), reason="covers the run without RLlib")
def test_vs_rllib_without_ray_measures_parley_and_says_how_to_get_rllib():
    run = subprocess.run(
        [sys.executable, str(REPO / "bench" / "vs_rllib.py"), "--steps", "16", "--json"],
        capture_output=True, cwd=REPO, timeout=240,
    )
    assert run.returncode == 0, run.stderr.decode()[-2000:]
    report = json.loads(run.stdout)
    assert [(row["system"], row["envs"]) for row in report["rows"]] == [("in-process", 1), ("parley", 1), ("parley", 8)]
    assert [row["env_steps"] for row in report["rows"]] == [16, 16, 16]
    assert all(row["steps_per_s"] > 0 for row in report["rows"])
    assert "make bench-rllib" in report["rllib_skipped"]
