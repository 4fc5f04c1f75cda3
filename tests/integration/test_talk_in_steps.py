"""Talking in env steps (`protocols.talk: env_steps`) on real processes: the main job, shrunk,
with peer links that delay every message by 3 env steps and lose 20% of them.

- Run twice with `run.reproducible`, the second time under load (a busy loop on one core, one
  gradient step per look at the sockets, jittered env links): the same metrics row for row,
  landmark agreements, hindsight and policy averages included, and the same checkpoints.
- The first landmark agreement of every agent is what the deterministic simulator
  (protocols/sim/netsim.py `StepNetwork`) decides for the same seeded links: the simulator and a real
  run agree on what each message's link did.
- Nothing held the env: no agent's action was defaulted (`env/default_actions/*` 0).
- An agent killed in the middle of an episode and restarted rejoins in the middle of its copies'
  episodes, which it never saw begin: it pursues its own nearest landmark there (counted), and the
  run goes on to its budget (long).
"""

from __future__ import annotations

import numpy as np
import pytest

from orchestrator.report import summarize_run
from protocols.engines.flooding import FloodEngine, FloodRequest
from protocols.net.links import LinkConfig
from protocols.sim.netsim import StepNetwork
from tests.integration.test_orchestrate import finished_ok, node_metrics, orchestrate, read_events
from tests.integration.test_reproducible_runs import (
    PATIENT, assert_same_state, checkpoint, run_idle_then_perturbed, seeded_rows,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

AGENTS = [f"agent_{i}" for i in range(4)]
SEED = 3
DELAY_STEPS, LOSS, ROUND_TIMEOUT_STEPS = 3, 0.2, 5
SETTINGS = (
    *PATIENT,
    f"run.seed={SEED}",
    "run.steps=90",
    "env.num_copies=2",
    "env.eval_every_steps=60",
    "env.eval_episodes=2",
    "agents.learner.learning_starts=64",
    "agents.learner.batch_size=32",
    "agents.world_model=null",
    "agents.checkpoint_every_steps=90",
    f"agents.landmarks.round_timeout_steps={ROUND_TIMEOUT_STEPS}",
    "protocols.talk=env_steps",
    f"network.links=[{{role: peer_links, link: {{delay_steps: {DELAY_STEPS}, loss: {LOSS}}}}}]",
    "protocols.consensus={enabled: true, what: policy_parameters, period_steps: 40, rounds: 2, mode: sync}",
)




def test_talking_in_steps_repeats_bit_for_bit_under_load_and_matches_the_simulator(tmp_path):
    idle, loaded = run_idle_then_perturbed("configs/4agents_ring.yaml", SETTINGS, tmp_path)

    for agent in AGENTS:
        rows = seeded_rows(idle, agent)
        for key in ("landmarks/decision_age_steps", "consensus/decision_age_steps", "hindsight/partner_rows_received",
                    "talk/delivered", "dqn/loss"):
            assert any(key in row for row in rows), f"{agent} wrote no {key}"
        assert not any("reproducibility/broken" in row for row in rows), f"{agent}: something ran on the wall clock"
        assert seeded_rows(loaded, agent) == rows, f"{agent}: the metrics rows differ under load"
        assert_same_state(checkpoint(loaded, agent), checkpoint(idle, agent), f"{agent} checkpoint")

    # Nothing held the env: every action came from its agent.
    env_rows = [row for row in node_metrics(idle, "env") if any(key.startswith("env/default_actions/") for key in row)]
    assert env_rows and all(value == 0.0 for key, value in env_rows[-1].items() if key.startswith("env/default_actions/"))

    # The report says when decisions landed, in env steps, and that the env never defaulted an action.
    summary = summarize_run(idle)
    assert summary["landmarks"]["decision_age_steps_mean"] >= 2 * DELAY_STEPS  # two rounds of tables
    assert summary["consensus"]["age_steps_mean"] >= 2 * DELAY_STEPS and summary["headline"]["default_actions"] == 0

    # The simulator, on the same seeded links, decides the first agreement as the real run did.
    ring = {agent: [AGENTS[(i - 1) % 4], AGENTS[(i + 1) % 4]] for i, agent in enumerate(AGENTS)}
    engines = {agent: FloodEngine(agent, round_timeout_s=ROUND_TIMEOUT_STEPS) for agent in AGENTS}
    network = StepNetwork(engines, ring, SEED, lambda src, dst: LinkConfig(delay_steps=DELAY_STEPS, loss=LOSS))
    for agent in AGENTS:
        request = FloodRequest("train:0", np.zeros((2, 4)), ring[agent], team_size=4, rounds=2)
        network.begin(agent, engines[agent].start, request, 0.0)
    network.run_steps(25)
    for agent in AGENTS:
        real = next(row for row in node_metrics(idle, agent) if "landmarks/decision_age_steps" in row)
        simulated = engines[agent].result
        assert (real["landmarks/decision_age_steps"], real["landmarks/rows_known"], real["landmarks/complete"],
                real["landmarks/rounds_closed_by_deadline"]) == (
            simulated.duration_s, float(len(simulated.values)), float(simulated.complete),
            float(simulated.rounds_closed_by_deadline)), agent


@pytest.mark.long
def test_an_agent_restarted_mid_episode_pursues_its_nearest_landmark_there_and_the_run_goes_on(tmp_path):
    # Step 40 is in the middle of the second 25-step episode of every copy.
    settings = [setting for setting in SETTINGS if not setting.startswith("run.reproducible")]
    settings += ["faults.schedule=[{at_step: 40, kind: kill, nodes: [agent_2]}]",
                 "faults.restart={policy: on-failure, max_restarts: 1, backoff_s: 0.5}"]
    overrides = [arg for setting in settings for arg in ("--set", setting)]
    finished_ok(orchestrate("up", "configs/4agents_ring.yaml", "--run-dir", str(tmp_path), *overrides), timeout_s=180)
    assert [e["node"] for e in read_events(tmp_path) if e["event"] == "rejoined"] == ["agent_2"]
    joined = [row for row in node_metrics(tmp_path, "agent_2") if "landmarks/joined_mid_episode" in row]
    assert [row["landmarks/joined_mid_episode"] for row in joined] == [2.0]  # both copies, once
    assert 40 <= joined[0]["step"] < 50
    assert not any("landmarks/joined_mid_episode" in row for agent in ("agent_0", "agent_1", "agent_3")
                   for row in node_metrics(tmp_path, agent))  # fmt: skip


@pytest.mark.long
def test_loss_on_the_flooding_tables_only_loses_every_table_and_no_other_message(tmp_path):
    """A peer link's `messages` (protocols/engines/step_links.py) in a real run: every flooding
    table lost, the hindsight rows and the consensus shares all delivered, the next step."""
    settings = [setting for setting in SETTINGS if not setting.startswith("network.links")]
    settings.append("network.links=[{role: peer_links, link: {delay_steps: 1, loss: 1.0, messages: [flood.table]}}]")
    overrides = [arg for setting in settings for arg in ("--set", setting)]
    finished_ok(orchestrate("up", "configs/4agents_ring.yaml", "--run-dir", str(tmp_path), *overrides), timeout_s=180)
    for agent in AGENTS:
        rows = node_metrics(tmp_path, agent)
        last = {key: value for row in rows for key, value in row.items() if key.startswith("talk_by_type/")}
        sent = {key.rsplit("/", 2)[1]: value for key, value in last.items() if key.endswith("/sent")}
        lost = {key.rsplit("/", 2)[1]: value for key, value in last.items() if key.endswith("/dropped_loss")}
        assert sent.keys() == {"flood.table", "hindsight.rows", "consensus.share"}, sent
        assert all(value > 0 for value in sent.values()) and all(value == 0 for key, value in lost.items() if key != "flood.table")
        per_link = {key: value for key, value in last.items() if "/flood.table/" in key}
        assert all(per_link[key.replace("/sent", "/dropped_loss")] == value for key, value in per_link.items() if key.endswith("/sent"))
        assert all(row["landmarks/complete"] == 0.0 for row in rows if "landmarks/complete" in row)  # no table came
        assert any(row.get("hindsight/partner_rows_received", 0) > 0 for row in rows)
