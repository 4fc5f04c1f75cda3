"""What neighbours give a newcomer, on real processes: an agent killed before it saved anything
is restarted without state, asks its two ring neighbours for their policies and starts from
their mean (consensus.bootstrap_newcomers), with talk free in env time (it holds its first
observation meanwhile) and talking in env steps (it acts meanwhile; the mean lands a round trip
of 2 x 2 steps later)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.integration.test_orchestrate import node_metrics

pytestmark = [pytest.mark.integration, pytest.mark.long, pytest.mark.timeout(300)]

CRASH_WITHOUT_STATE = (
    "run.steps=300", "env.eval_every_steps=null", "env.max_steps_per_s=40",
    "protocols.consensus={enabled: true, what: policy_parameters, period_steps: 100, rounds: 2, bootstrap_newcomers: true}",
    "faults.schedule=[{at_step: 150, kind: kill, nodes: [agent_1]}]",
    "faults.restart={policy: on-failure, max_restarts: 1, backoff_s: 0.5}",
    "agents.checkpoint_every_steps=1000", "agents.replay_save_every_steps=1000",  # nothing saved before the kill
)
IN_STEPS = ("protocols.talk=env_steps", "network.links=[{role: peer_links, link: {delay_steps: 2}}]")


@pytest.mark.parametrize("talk", [(), IN_STEPS], ids=["free", "env_steps"])
def test_a_restarted_agent_without_state_starts_from_its_neighbours_mean(tmp_path, talk):
    run_dir = tmp_path / "run"
    overrides = [arg for setting in (*CRASH_WITHOUT_STATE, *talk) for arg in ("--set", setting)]
    done = subprocess.run([sys.executable, "-m", "orchestrator", "up", "configs/tiny_ring.yaml", "--run-dir", str(run_dir),
                           *overrides], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = node_metrics(run_dir, "agent_1")
    (bootstrap,) = [row for row in rows if "consensus/bootstrap_shares" in row]
    assert bootstrap["consensus/bootstrap_shares"] == 2.0 and bootstrap["consensus/bootstrap_missing"] == 0.0
    if talk:
        assert bootstrap["consensus/bootstrap_age_steps"] >= 4, "a request and its answer take 2 steps each"
    assert bootstrap["step"] >= 150, "only the restart joined mid-run"
    for agent in ("agent_0", "agent_2"):  # the agents that started with the run asked nobody
        assert "consensus/bootstrap_shares" not in (run_dir / "nodes" / agent / "metrics.jsonl").read_text()
    log = (run_dir / "nodes" / "agent_1" / "log").read_text()
    assert "took the mean of 2 neighbours' policies" in log
