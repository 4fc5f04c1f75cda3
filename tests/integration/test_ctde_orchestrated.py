"""Through `orchestrate up`: centralized training with a `learner` node (QMIX and VDN),
the run failing clearly when that learner dies, and a parameter-shared checkpoint from a run
with 2 agents starting every agent of a run with 3."""

from __future__ import annotations

import math
import signal

import pytest

from agent_node.persistence import load_checkpoint
from tests.integration.test_orchestrate import (
    assert_all_reaped,
    finished_ok,
    kill_once_started,
    launched_pids,
    node_metrics,
    orchestrate,
    read_events,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

AGENTS = ("agent_0", "agent_1", "agent_2")




@pytest.mark.parametrize("mixer, transport", [("qmix", "ipc"), ("vdn", "tcp")])  # tcp: the learner's ROUTER is a CURVE server
def test_tiny_centralized_run_trains_in_the_learner_node_and_every_agent_gets_its_parameters(tmp_path, mixer, transport):
    run_dir = tmp_path / "run"
    process = orchestrate("up", "configs/tiny_qmix.yaml", "--run-dir", str(run_dir), "--set", f"training.mixer={mixer}",
                          "--set", f"network.transport={transport}")
    stderr = finished_ok(process, timeout_s=240)
    events = read_events(run_dir)
    assert {e["node"]: e["role"] for e in events if e["event"] == "launched"}["learner"] == "learner"
    assert all(e["code"] == 0 for e in events if e["event"] == "exited") and len([e for e in events if e["event"] == "exited"]) == 5
    # Every agent got the learner's endpoint in its directory, registered by the learner node.
    registered = {e["node"]: e["endpoints"] for e in events if e["event"] == "registered"}
    assert set(registered["learner"]) == {"ctde"} and registered["learner"]["ctde"].startswith(f"{transport}://")
    assert f"built the {mixer} learner for 3 agents" in (run_dir / "nodes" / "learner" / "log").read_text()

    final = node_metrics(run_dir, "learner")[-1]
    # 150 lockstep steps x 2 env copies = 300 joint rows, every agent's piece of each joined. One
    # gradient step per row (train_every 1) from the batch of 2 rows that fills learning_starts 64:
    # 300 - 64 + 2 steps, all taken (the learner takes in what the agents sent before it stops).
    assert final["learner/joint_rows"] == 300 and final["learner/rows_evicted"] == 0
    assert final["learner/gradient_steps"] == 300 - 64 + 2
    assert final["learner/agents_joined"] == 3 and final["learner/messages_refused"] == 0
    assert math.isfinite(final["mixer/loss"])  # (the writer leaves a non-finite value out)
    assert final["learner/params_broadcasts"] == 238 // 10

    for agent in AGENTS:
        counters = [r for r in node_metrics(run_dir, agent) if "ctde/params_updates" in r][-1]
        assert counters["ctde/rows_sent"] == 300
        # The join's parameters (gradient step 0) and then trained ones, newest last.
        assert counters["ctde/params_updates"] >= 2 and counters["ctde/params_gradient_step"] > 0
        # The update-ratio contract across processes: the rows the learner had not yet acknowledged
        # never owed more than max_pending_gradient_steps + params_every (+ the one step a held
        # agent still streams when the env server steps on without it).
        assert counters["ctde/learner_steps_owed"] <= 64 + 10 + 2
        assert counters["ctde/params_stale"] == 0


@pytest.mark.long
def test_a_learner_node_that_dies_fails_the_run_naming_it(tmp_path):
    run_dir = tmp_path / "run"
    process = orchestrate("up", "configs/tiny_qmix.yaml", "--run-dir", str(run_dir), "--set", "run.steps=1000000")
    stderr = kill_once_started(process, run_dir, "learner", start_timeout_s=180, exit_timeout_s=90)
    assert process.returncode == 1
    message = stderr.decode()
    assert "node learner exited unexpectedly with code -9" in message, message[-3000:]
    assert "cannot go on without their learner node" in message
    events = read_events(run_dir)
    died = [e for e in events if e["event"] == "exited" and e["node"] == "learner"]
    assert died[0]["code"] == -signal.SIGKILL and died[0]["expected"] is False
    assert_all_reaped(launched_pids(events))


@pytest.mark.long
def test_a_shared_checkpoint_from_two_agents_starts_every_agent_of_a_three_agent_run(tmp_path):
    import torch

    trained_dir = tmp_path / "two"
    process = orchestrate("up", "configs/tiny_shared_dqn.yaml", "--run-dir", str(trained_dir))
    stderr = finished_ok(process, timeout_s=240)
    checkpoint = trained_dir / "nodes" / "agent_0" / "checkpoints" / "latest.pt"
    trained = load_checkpoint(checkpoint)["learner"]
    assert trained["algorithm"] == "shared_dqn" and trained["dqn"]["gradient_steps"] > 0

    # The same policy evaluated by three agents on simple_spread N=3 (observations of 18 entries
    # instead of 12; agent index 2 never seen in training).
    three_dir = tmp_path / "three"
    process = orchestrate(
        "up", "configs/tiny_shared_dqn.yaml", "--run-dir", str(three_dir),
        "--set", "env.kwargs.N=3", "--set", "agents.count=3", "--set", "agents.learning=false",
        "--set", f"agents.load_shared_checkpoint={checkpoint}",
    )  # fmt: skip
    stderr = finished_ok(process, timeout_s=240)
    evaluations = [r for r in node_metrics(three_dir, "env") if "eval/return_mean" in r]
    assert [r["step"] for r in evaluations] == [20, 40, 60]
    for agent in AGENTS:
        assert "(shared by every agent)" in (three_dir / "nodes" / agent / "log").read_text()
        assert any("env/episode_return" in r for r in node_metrics(three_dir, agent))
        ended = load_checkpoint(three_dir / "nodes" / agent / "checkpoints" / "latest.pt")["learner"]
        for name, tensor in trained["dqn"]["q_network"].items():
            assert torch.equal(ended["dqn"]["q_network"][name], tensor), (agent, name)


@pytest.mark.long
def test_a_shared_checkpoint_with_another_layout_is_refused_naming_both(tmp_path):
    trained_dir = tmp_path / "two"
    process = orchestrate("up", "configs/tiny_shared_dqn.yaml", "--run-dir", str(trained_dir), "--set", "run.steps=20")
    stderr = finished_ok(process, timeout_s=240)
    checkpoint = trained_dir / "nodes" / "agent_0" / "checkpoints" / "latest.pt"
    other = tmp_path / "other"
    process = orchestrate(
        "up", "configs/tiny_shared_dqn.yaml", "--run-dir", str(other), "--set", "agents.learner.max_agents=4",
        "--set", f"agents.load_shared_checkpoint={checkpoint}",
    )  # fmt: skip
    _, stderr = process.communicate(timeout=240)
    assert process.returncode == 1
    assert "checkpoint has max_obs_dim 18 and max_agents 3, this agent has 18 and 4" in stderr.decode() + "".join(
        (other / "nodes" / agent / "log").read_text() for agent in ("agent_0", "agent_1")
    )


@pytest.mark.long
@pytest.mark.parametrize("average_at_end", [True, False])
def test_a_parameter_shared_run_that_averages_at_end_ends_with_one_policy(tmp_path, average_at_end):
    """Three agents average their copies every 25 steps; the run's 60th step is its last (and an
    evaluation's: the last observation comes after it). With `consensus.average_at_end` every
    agent's final checkpoint holds the same network (a ring of 3 with Metropolis weights averages
    exactly in one round); without it the copies have trained apart for the 10 steps since the
    last average."""
    import torch

    run_dir = tmp_path / "run"
    process = orchestrate(
        "up", "configs/tiny_shared_dqn.yaml", "--run-dir", str(run_dir), "--set", "run.steps=60",
        "--set", "env.kwargs.N=3", "--set", "agents.count=3",
        "--set", "protocols.consensus={enabled: true, what: policy_parameters, period_steps: 25, rounds: 3, "
                 f"round_timeout_s: 2.0, average_at_end: {str(average_at_end).lower()}}}",
    )  # fmt: skip
    stderr = finished_ok(process, timeout_s=240)
    networks = [load_checkpoint(run_dir / "nodes" / agent / "checkpoints" / "latest.pt")["learner"]["dqn"]
                for agent in AGENTS]
    assert all(network["gradient_steps"] > 0 for network in networks)
    averaged_at = {agent: sorted({r["step"] for r in node_metrics(run_dir, agent) if "consensus/duration_s" in r}) for agent in AGENTS}
    if average_at_end:
        for agent in AGENTS:
            assert averaged_at[agent] == [25, 50, 60], agent
            assert "averaging once more before the final checkpoint" in (run_dir / "nodes" / agent / "log").read_text()
        for name, tensor in networks[0]["q_network"].items():
            for other in networks[1:]:
                torch.testing.assert_close(other["q_network"][name], tensor, rtol=1e-5, atol=1e-6)
    else:
        assert all(steps == [25, 50] for steps in averaged_at.values()), averaged_at
        assert any(not torch.allclose(networks[0]["q_network"][name], networks[1]["q_network"][name])
                   for name in networks[0]["q_network"])
