"""Plugins through the real runtime: `orchestrate validate` and `orchestrate up` on a config that
names the example's IPPO learner, its return-gossip protocol and its best-return capability by
import path, their metrics found in the run and the capability's check and report section at
work; and the same through the Python API (orchestrator/api.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

EXAMPLE = REPO / "examples" / "parley_ippo"
IPPO_PATH = "parley_ippo.learner:IPPOLearner"
# configs/tiny_ring.yaml (3 agents, 60 lockstep steps on 2 copies: 120 rows per agent) with IPPO:
# a rollout of 16 rows, so 7 updates of 2 x 2 minibatch steps each.
IPPO = [
    "--set", f"agents.learner={{kind: '{IPPO_PATH}', hidden_sizes: [16], rollout_rows: 16, epochs: 2, minibatches: 2}}",
]
# The example's peer protocol: a round of return gossip every 10 steps (episodes are 10 steps long,
# so from step 10 on every agent has a mean to tell), raising the entropy of an agent that trails.
# A round waits up to 20 s for both neighbours: long enough for a loaded machine, and a round still
# open when the run ends is not logged.
GOSSIP_PATH = "parley_ippo.gossip:ReturnGossip"
GOSSIP = ["--set", f"agents.protocols=[{{kind: '{GOSSIP_PATH}', every_steps: 10, timeout_s: 20.0, entropy_boost: 0.5}}]"]
# The example's own capability (agent_node/registry.py): its section in the run's `capabilities`,
# a record every 20 steps of the mean of each agent's last 2 episodes.
BEST_PATH = "parley_ippo.best_return:CAPABILITY"
BEST = ["--set", f"capabilities=[{{kind: '{BEST_PATH}', every_steps: 20, window: 2}}]"]


def orchestrate(*args: str) -> subprocess.CompletedProcess:
    # The example from its folder, as a user's package on PYTHONPATH (where `make setup`
    # installed it, the installed copy is the same code).
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(EXAMPLE)])}
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=150)


def test_validate_and_up_run_the_plugin_learner_and_protocol_and_their_metrics_are_in_the_run(tmp_path, monkeypatch):
    from orchestrator import api

    monkeypatch.syspath_prepend(str(EXAMPLE))  # this process reads the resolved config, plugin kinds included
    if "parley_ippo" in sys.modules:  # imported by an earlier test from an installed copy: this folder's modules first
        monkeypatch.setattr(sys.modules["parley_ippo"], "__path__", [str(EXAMPLE / "parley_ippo"), *sys.modules["parley_ippo"].__path__])

    validated = orchestrate("validate", "configs/tiny_ring.yaml", *IPPO, *GOSSIP, *BEST)
    assert validated.returncode == 0, validated.stderr[-3000:]
    assert f"learner {IPPO_PATH}" in validated.stdout and f"protocols {GOSSIP_PATH}" in validated.stdout
    assert "best return every 20 steps" in validated.stdout
    # The capability's own check, before anything starts: tiny_ring runs 60 steps.
    refused = orchestrate("up", "configs/tiny_ring.yaml", *IPPO, "--set", f"capabilities=[{{kind: '{BEST_PATH}', every_steps: 61}}]",
                          "--run-dir", str(tmp_path / "refused"))
    assert refused.returncode == 2 and "capabilities.0.every_steps: expected at most run.steps (60), got 61" in refused.stderr
    assert not (tmp_path / "refused").exists()

    run_dir = tmp_path / "run"
    done = orchestrate("up", "configs/tiny_ring.yaml", *IPPO, *GOSSIP, *BEST, "--run-dir", str(run_dir))
    assert done.returncode == 0, done.stderr[-3000:]

    run = api.open_run(run_dir)
    assert run.config.agents.learner.kind == IPPO_PATH and run.config.agents.learner.rollout_rows == 16
    (protocol,) = run.config.agents.protocols
    assert protocol.kind == GOSSIP_PATH and protocol.every_steps == 10 and protocol.entropy_boost == 0.5
    neighbours = 2  # on a ring of 3, each agent's two others
    for agent in ("agent_0", "agent_1", "agent_2"):
        records = list(run.metrics(agent))
        # The protocol's rounds, as the node wrote them when each finished: one per 10-step window
        # from the first finished episode on, each hearing the agent's two neighbours (no one
        # is down in this run), with the learner's entropy coefficient the round left it at.
        rounds = [r for r in records if "gossip/rounds" in r]
        assert len(rounds) >= 4, f"{agent} logged {len(rounds)} gossip rounds"
        assert [r["gossip/rounds"] for r in rounds] == list(range(1, len(rounds) + 1))
        assert all(r["gossip/heard"] == neighbours and "gossip/neighbour_best" in r for r in rounds)
        assert all(r["gossip/entropy_coef"] in (pytest.approx(0.01), pytest.approx(0.015)) for r in rounds)
        counters = [r for r in records if "ippo/gradient_steps" in r]
        assert counters, f"{agent} logged no ippo counters"
        last = counters[-1]
        # 120 rows, one update per 16: 7 updates of 4 minibatch steps, none left owed at the end.
        assert last["ippo/rows_observed"] == 120 and last["ippo/updates"] == 7
        assert last["ippo/gradient_steps"] == 28 and last["ippo/steps_pending"] == 0
        assert any("ippo/policy_loss" in r for r in records), f"{agent} logged no IPPO losses"
        # The rollout in flight is the learner's `replay`, saved by the node's persistence.
        assert list((run_dir / "nodes" / agent / "replay").glob("step-*.npz"))
        # The capability's records: from step 20 on (each copy has ended an episode by step 10).
        best = [r for r in records if "best_return/best" in r]
        assert [r["step"] for r in best][:2] == [20, 40], f"{agent} best_return records at {[r['step'] for r in best]}"
        assert all(r["best_return/best"] >= r["best_return/window_mean"] for r in best)
    assert [step for step, _ in run.evaluations()] == [20, 40, 60]
    assert run.exit_code() == 0 and not run.running()
    summary = run.report()
    assert summary["evaluation"]["evaluations"] == 3
    assert sorted(summary["best_return"]["best_by_agent"]) == ["agent_0", "agent_1", "agent_2"]
    shown = orchestrate("report", str(run_dir))
    assert shown.returncode == 0 and "best return (mean of an agent's recent episodes): team best" in shown.stdout


@pytest.mark.long  # a second whole run; `up` above already goes through api.load, check and prepare
def test_the_api_launches_a_run_and_follows_its_metrics(tmp_path, monkeypatch):
    from orchestrator import api

    monkeypatch.syspath_prepend(str(EXAMPLE))  # passed on to the run's processes (api._child_env)
    config = api.load(REPO / "configs" / "tiny_ring.yaml", {
        "agents.learner": {"kind": IPPO_PATH, "hidden_sizes": [16], "rollout_rows": 16, "epochs": 1, "minibatches": 2},
        "run.steps": 20,
        "env.eval_every_steps": 10,
    })
    run = api.launch(config, run_dir=tmp_path / "run")
    evaluations = [r["eval/return_mean"] for r in run.metrics(follow=True, poll_s=0.2) if "eval/return_mean" in r]
    assert run.wait(timeout_s=60) == 0, (run.run_dir / "orchestrator.log").read_text()[-3000:]
    assert len(evaluations) == 2  # steps 10 and 20, seen while following
    assert any("ippo/gradient_steps" in r for r in run.metrics("agent_0"))
    assert run.report()["exit_code"] == 0


def test_launch_refuses_a_bad_plugin_before_making_a_run_dir(tmp_path):
    from orchestrator import api
    from protocols.run.config_errors import ConfigError

    with pytest.raises(ConfigError, match=r"agents.learner.kind: 'no_such_package:Learner': cannot import module"):
        api.launch(REPO / "configs" / "tiny_ring.yaml", ["agents.learner.kind=no_such_package:Learner"],
                   run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.long
def test_the_plugin_protocol_talks_in_env_steps_and_holds_nothing(tmp_path, monkeypatch):
    """The return gossip with peer messages that take 2 env steps: every round hears both
    neighbours (each message lands 2 steps after it left, inside the 5-step deadline), nothing
    holds the env, and the learner hook's results do not break a reproducible run."""
    from orchestrator import api

    monkeypatch.syspath_prepend(str(EXAMPLE))
    gossip = ["--set", f"agents.protocols=[{{kind: '{GOSSIP_PATH}', every_steps: 10, timeout_steps: 5, entropy_boost: 0.5}}]"]
    in_steps = ["--set", "protocols.talk=env_steps", "--set", "network.links=[{role: peer_links, link: {delay_steps: 2}}]",
                "--set", "run.reproducible=true"]
    run_dir = tmp_path / "run"
    done = orchestrate("up", "configs/tiny_ring.yaml", *IPPO, *gossip, *in_steps, "--run-dir", str(run_dir))
    assert done.returncode == 0, done.stderr[-3000:]
    run = api.open_run(run_dir)
    for agent in ("agent_0", "agent_1", "agent_2"):
        records = list(run.metrics(agent))
        rounds = [r for r in records if "gossip/rounds" in r]
        assert len(rounds) >= 4 and all(r["gossip/heard"] == 2 for r in rounds), rounds
        assert not any("reproducibility/broken" in r for r in records)
    env_rows = list(run.metrics("env"))
    assert all(value == 0 for row in env_rows for key, value in row.items() if key.startswith("env/default_actions/"))
