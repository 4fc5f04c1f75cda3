"""Goals between agents through `orchestrate up`: goal agents negotiate each episode's goal while the env
server holds the start, and share achieved goals for HER after it (configs/goals_*.yaml)."""

from __future__ import annotations

import re
from collections import defaultdict

import pytest

from tests.integration.test_orchestrate import finished_ok, node_metrics, orchestrate, read_events, run_restarting_the_env_server

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

EPISODE = 40  # goal_lines max_steps in the configs




def run(tmp_path, config, steps, *overrides):
    run_dir = tmp_path / "run"
    process = orchestrate("up", config, "--run-dir", str(run_dir), "--set", f"run.steps={steps}",
                          "--set", "agents.learner.learning_starts=80", *overrides)
    stderr = finished_ok(process, timeout_s=280)
    assert all(e["code"] == 0 for e in read_events(run_dir) if e["event"] == "exited")
    return run_dir


def test_a_negotiating_pair_runs_records_negotiation_hindsight_and_relabelling(tmp_path):
    steps = 5 * EPISODE
    run_dir = run(tmp_path, "configs/goals_negotiation_hindsight.yaml", steps)
    episodes = defaultdict(dict)  # episode id -> agent -> its episode record
    for agent in ("agent_0", "agent_1"):
        mine = node_metrics(run_dir, agent)
        ended = [r for r in mine if "goals/goal" in r]
        # Every episode of 40 steps ends (the last one with the run's final observation).
        assert [r["goals/episode"] for r in ended] == [float(e) for e in range(0, steps, EPISODE)]
        for record in ended:
            assert record["negotiation/rounds_used"] == 1.0, "a pair floods for one round"
            assert record["negotiation/timed_out"] in (0.0, 1.0) and record["negotiation/cut_by_env"] in (0.0, 1.0)
            assert 6 <= record["goals/goal"] <= 20, "cooperative goals of L = 6 only"
            assert record["goals/team_neighbours"] == 1.0
            episodes[record["goals/episode"]][agent] = record
        shared = [r for r in mine if "hindsight/reports_applied" in r]
        # The last episode's reports may still be in flight when the run stops.
        assert len(shared) >= len(ended) - 1
        applied = [r["hindsight/reports_applied"] for r in shared]
        assert all(a in (0.0, 1.0) for a in applied) and sum(applied) >= 1
        assert shared[-1]["hindsight/reports_applied_total"] == sum(applied), "each report applied once"
        assert all(r["hindsight/reports_applied"] + r["hindsight/partners_missing"] == 1.0 for r in shared)
        relabelled = [r["her/rows_relabelled_total"] for r in mine if "her/rows_relabelled_total" in r]
        assert relabelled[-1] > 0, "HER relabelled transitions with achieved goals"
        counters = [r for r in mine if "goal_dqn/gradient_steps" in r]
        assert counters and counters[-1]["goal_dqn/gradient_steps"] > 0 and counters[-1]["goal_dqn/steps_pending"] == 0
    # The shipped config observes achievements locally (env.kwargs.view: local): what the partner
    # achieved without this agent reaches it only by the partner's report.
    assert "view: local" in (run_dir / "resolved.yaml").read_text()
    news = [r["hindsight/events_from_partners_only"] for agent in ("agent_0", "agent_1")
            for r in node_metrics(run_dir, agent) if "hindsight/events_from_partners_only" in r]
    assert sum(news) > 0, "a partner's report told the agent something it did not observe"
    for episode, both in episodes.items():
        first, second = both["agent_0"], both["agent_1"]
        if first["negotiation/timed_out"] or second["negotiation/timed_out"]:
            continue
        # Both agents recorded the other's committed goal: alignment agrees with the goals they pursued.
        same = float(first["goals/goal"] == second["goals/goal"])
        assert first["negotiation/aligned"] == same == second["negotiation/aligned"], episode
        assert first["negotiation/led"] + second["negotiation/led"] == 1.0, f"one leader in episode {episode}"


@pytest.mark.long
def test_a_population_of_four_negotiates_only_among_the_drawn_pair(tmp_path):
    steps = 6 * EPISODE
    run_dir = run(tmp_path, "configs/goals_population4.yaml", steps)
    players = defaultdict(list)
    for agent in ("agent_0", "agent_1", "agent_2", "agent_3"):
        for record in node_metrics(run_dir, agent):
            if "goals/goal" in record:
                players[record["goals/episode"]].append(agent)
                assert record["goals/team_neighbours"] == 1.0
    assert sorted(players) == [float(e) for e in range(0, steps, EPISODE)]
    assert all(len(agents) == 2 for agents in players.values()), dict(players)


def test_a_pair_supervised_by_a_supervisor_node_pursues_the_goal_it_draws(tmp_path):
    """The default: the supervisor is a process of its own, which both agents ask every episode."""
    steps = 3 * EPISODE
    run_dir = run(tmp_path, "configs/goals_supervisor.yaml", steps)
    launched = {e["node"]: e["role"] for e in read_events(run_dir) if e["event"] == "launched"}
    assert launched.get("supervisor") == "supervisor", launched
    ended = {agent: [r for r in node_metrics(run_dir, agent) if "goals/goal" in r] for agent in ("agent_0", "agent_1")}
    for agent in ended:
        assert [r["supervision/supervised"] for r in ended[agent]] == [0.0] * 3, "no agent supervises"
    answered = 0
    for mine, theirs in zip(ended["agent_0"], ended["agent_1"]):
        assert mine["goals/episode"] == theirs["goals/episode"]
        if mine["supervision/timed_out"] == 0.0 and theirs["supervision/timed_out"] == 0.0:
            assert mine["goals/goal"] == theirs["goals/goal"], "the supervisor's goal, on both sides"
            answered += 1
    assert answered >= 1, "the supervisor node answered no episode in time"
    counters = [r for r in node_metrics(run_dir, "supervisor") if "supervisor/requests" in r][-1]
    assert counters["supervisor/teams_assigned"] == 3.0 and counters["supervisor/requests"] == 6.0, counters
    assert counters["supervisor/refused_requests"] == 0.0


@pytest.mark.long
def test_a_supervisor_node_killed_mid_run_restores_its_checkpoint_and_teams_still_share_a_goal(tmp_path):
    run_dir = tmp_path / "run"
    process = orchestrate(
        "up", "configs/goals_supervisor.yaml", "--run-dir", str(run_dir), "--set", f"run.steps={8 * EPISODE}",
        "--set", "agents.learner.learning_starts=80", "--set", "protocols.control.status_every_s=0.2",
        "--set", "faults.restart={policy: on-failure, max_restarts: 1, backoff_s: 0.5, roles: [supervisor]}",
        "--set", f"faults.schedule=[{{at_step: {4 * EPISODE}, kind: kill, nodes: [supervisor]}}]",
    )  # fmt: skip
    stderr = finished_ok(process, timeout_s=280)
    events = read_events(run_dir)
    (fault,) = [e for e in events if e["event"] == "fault"]
    (restarted,) = [e for e in events if e["event"] == "restarted"]
    assert restarted["node"] == "supervisor"
    log = (run_dir / "nodes" / "supervisor" / "log").read_text()
    assert log.count("restored checkpoint") == 1, log[-2000:]
    # Its counters go on from where the killed one left them (a fresh start would begin at 0). The
    # restored count comes from its log: the killed one may have written no metrics row after its
    # first draws (rows are written at status time, and a loaded machine delays them).
    restored = int(re.search(r"restored checkpoint .*?: (\d+) team goals drawn", log).group(1))
    assert restored >= 1, "the killed supervisor had drawn goals before step 160"
    counters = [r for r in node_metrics(run_dir, "supervisor") if "supervisor/teams_assigned" in r]
    before = [r["supervisor/teams_assigned"] for r in counters if r["t"] < restarted["t"]]
    after = [r["supervisor/teams_assigned"] for r in counters if r["t"] > restarted["t"]]
    assert after and after[0] >= max([restored, *before]), (restored, before, after)
    # Every episode both members heard the supervisor on, before and after the restart, they
    # pursued the same goal.
    ended = {agent: [r for r in node_metrics(run_dir, agent) if "goals/goal" in r] for agent in ("agent_0", "agent_1")}
    answered_after = 0
    for mine, theirs in zip(ended["agent_0"], ended["agent_1"]):
        assert mine["goals/episode"] == theirs["goals/episode"]
        if mine["supervision/timed_out"] == 0.0 and theirs["supervision/timed_out"] == 0.0:
            assert mine["goals/goal"] == theirs["goals/goal"], mine["goals/episode"]
            answered_after += mine["goals/episode"] > fault["step"]
    assert answered_after >= 1, "no episode after the restart was answered by the supervisor"


def test_a_supervisor_in_the_team_is_its_smallest_node_id_and_no_extra_process_runs(tmp_path):
    steps = 3 * EPISODE
    run_dir = run(tmp_path, "configs/goals_supervisor.yaml", steps, "--set", "agents.goals.supervisor.external=false")
    assert "supervisor" not in {e["node"] for e in read_events(run_dir) if e["event"] == "launched"}
    ended = {agent: [r for r in node_metrics(run_dir, agent) if "goals/goal" in r] for agent in ("agent_0", "agent_1")}
    assert [r["supervision/supervised"] for r in ended["agent_0"]] == [1.0] * 3, "agent_0, the smallest id, supervises"
    assert [r["supervision/supervised"] for r in ended["agent_1"]] == [0.0] * 3
    for mine, theirs in zip(ended["agent_0"], ended["agent_1"]):
        assert mine["goals/episode"] == theirs["goals/episode"]
        if theirs["supervision/timed_out"] == 0.0:
            assert mine["goals/goal"] == theirs["goals/goal"], "the assigned goal, on both sides"


def test_a_ring_of_six_floods_for_its_diameter_and_records_alignment_per_edge(tmp_path):
    steps = 3 * EPISODE
    run_dir = run(tmp_path, "configs/goals_ring6.yaml", steps)
    agents = [f"agent_{i}" for i in range(6)]
    goals = defaultdict(dict)
    for agent in agents:
        ended = [r for r in node_metrics(run_dir, agent) if "goals/goal" in r]
        assert [r["goals/episode"] for r in ended] == [float(e) for e in range(0, steps, EPISODE)]
        for record in ended:
            assert record["goals/team_neighbours"] == 2.0 and record["negotiation/rounds_used"] == 3.0, "the ring's diameter"
            if record["negotiation/edges_known"] == 2.0:
                assert record["negotiation/aligned_edges_fraction"] in (0.0, 0.5, 1.0)
            goals[record["goals/episode"]][agent] = record
    for episode, by_agent in goals.items():
        assert len(by_agent) == 6, episode
        if not any(r["negotiation/timed_out"] or r["negotiation/rounds_closed_by_deadline"] for r in by_agent.values()):
            # Every round completed everywhere: the best proposal reached all six, one of them led.
            assert sum(r["negotiation/led"] for r in by_agent.values()) == 1.0, episode


def test_a_negotiating_pair_without_sharing_records_no_hindsight_and_relabels_nothing(tmp_path):
    run_dir = run(tmp_path, "configs/goals_negotiation.yaml", 2 * EPISODE)
    for agent in ("agent_0", "agent_1"):
        mine = node_metrics(run_dir, agent)
        ended = [r for r in mine if "goals/goal" in r]
        assert len(ended) == 2 and all(r["negotiation/rounds_used"] == 1.0 for r in ended)
        assert not any(key.startswith("hindsight/") for r in mine for key in r), "no sharing"
        relabelled = [r["her/rows_relabelled_total"] for r in mine if "her/rows_relabelled_total" in r]
        assert relabelled and relabelled[-1] == 0.0, "no HER"


def test_independent_agents_draw_alone_without_a_hold(tmp_path):
    # Exit 0 also shows no agent sent goal.ready: without a hold the env server refuses it.
    run_dir = run(tmp_path, "configs/goals_independent.yaml", 2 * EPISODE)
    for agent in ("agent_0", "agent_1"):
        ended = [r for r in node_metrics(run_dir, agent) if "goals/goal" in r]
        assert len(ended) == 2 and not any(key.startswith(("negotiation/", "hindsight/")) for r in ended for key in r)


@pytest.mark.long
def test_a_negotiating_agent_killed_mid_run_restores_its_goal_checkpoint_and_goes_on(tmp_path):
    # The checkpoint holds the learning-progress module and the negotiation matrix; before the
    # matrix was saved as plain lists, loading it (weights_only) crashed the restarted agent.
    run_dir = tmp_path / "run"
    process = orchestrate(
        "up", "configs/goals_negotiation_hindsight.yaml", "--run-dir", str(run_dir), "--set", "run.steps=2000",
        "--set", "agents.learner.learning_starts=80", "--set", "agents.goals.inner=learning_progress",
        "--set", "agents.checkpoint_every_steps=100", "--set", "agents.replay_save_every_steps=100",
        "--set", "protocols.control.status_every_s=0.2",
        "--set", "faults.restart={policy: on-failure, max_restarts: 1, backoff_s: 0.5}",
        "--set", "faults.schedule=[{at_step: 300, kind: kill, nodes: [agent_1]}]",
    )
    stderr = finished_ok(process, timeout_s=280)
    events = read_events(run_dir)
    (fault,) = [e for e in events if e["event"] == "fault"]
    assert [e["node"] for e in events if e["event"] == "restarted"] == ["agent_1"]
    log = (run_dir / "nodes" / "agent_1" / "log").read_text()
    assert "restored checkpoint of step" in log
    after = [r for r in node_metrics(run_dir, "agent_1") if "goals/goal" in r and r["goals/episode"] > fault["step"]]
    assert after, "the restarted agent plays goal episodes again"


@pytest.mark.long
def test_negotiating_agents_go_on_across_an_env_server_restart(tmp_path):
    """The env server restarted at step 150 (mid-episode): the interrupted episode ends there for
    both agents, with its hindsight exchanged; every episode before and after is negotiated (no
    timeout) with the partner's hindsight report applied."""
    run_dir = tmp_path / "run"
    events = run_restarting_the_env_server(run_dir, "configs/goals_negotiation_hindsight.yaml", 150, "run.steps=400",
                                           "agents.learner.learning_starts=80", timeout_s=280)
    assert [e["event"] for e in events if e["event"].startswith("env_server_")] == ["env_server_restarting", "env_server_resumed"]
    for agent in ("agent_0", "agent_1"):
        rows = node_metrics(run_dir, agent)
        ended = [r for r in rows if "goals/goal" in r]
        # Episodes of 40 steps, one cut at the restart (120 -> 150), then 40 steps again.
        assert [r["goals/episode"] for r in ended] == [0.0, 40.0, 80.0, 120.0, 150.0, 190.0, 230.0, 270.0, 310.0, 350.0]
        assert all(r["negotiation/timed_out"] == 0.0 for r in ended), agent
        reports = [r for r in rows if "hindsight/reports_applied_total" in r]
        assert [r["hindsight/reports_applied_total"] for r in reports] == [float(n) for n in range(1, 11)], agent
        assert all(r["hindsight/partners_missing"] == 0.0 for r in reports), agent


# 6 and 9 agent processes: 6-7 s each at load ~2 (50-60 s at load ~40).
@pytest.mark.parametrize("config, agents, diameter, degree", [
    pytest.param("configs/goals_ring6_team.yaml", 6, 3, 2, id="ring6"),
    pytest.param("configs/goals_torus9_team.yaml", 9, 2, 4, id="torus9"),
])
@pytest.mark.long
def test_a_team_flood_gives_the_whole_team_one_goal_in_every_episode(tmp_path, config, agents, diameter, degree):
    steps = 3 * EPISODE
    run_dir = run(tmp_path, config, steps)
    goals = defaultdict(dict)
    for agent in [f"agent_{i}" for i in range(agents)]:
        ended = [r for r in node_metrics(run_dir, agent) if "goals/goal" in r]
        assert [r["goals/episode"] for r in ended] == [float(e) for e in range(0, steps, EPISODE)]
        for record in ended:
            assert record["goals/team_neighbours"] == degree and record["negotiation/rounds_used"] == diameter
            assert record["negotiation/team_size"] == agents
            goals[record["goals/episode"]][agent] = record
    for episode, by_agent in goals.items():
        assert len(by_agent) == agents, episode
        if all(r["negotiation/team_complete"] == 1.0 for r in by_agent.values()):
            # Every agent heard every proposal: one goal, one leader, every edge aligned.
            assert len({r["goals/goal"] for r in by_agent.values()}) == 1, episode
            assert sum(r["negotiation/led"] for r in by_agent.values()) == 1.0, episode
            assert all(r["negotiation/aligned"] == 1.0 for r in by_agent.values() if r["negotiation/edges_known"] == degree)
    # Loopback loses nothing: at most an episode start cut by the env's hold under heavy load.
    assert sum(all(r["negotiation/team_complete"] == 1.0 for r in by_agent.values()) for by_agent in goals.values()) >= 2


@pytest.mark.long
def test_under_the_own_view_the_env_pays_the_goals_and_partners_reports_carry_the_pairs(tmp_path):
    """configs/goals_own_view_hindsight.yaml: each agent sees only its own landmark, the env pays
    the goal each agent named in goal.ready, and the partner's report is the only way a pair both
    touched becomes a relabel goal. Individual goals here, so random play earns some rewards."""
    steps = 25 * EPISODE
    run_dir = run(tmp_path, "configs/goals_own_view_hindsight.yaml", steps, "--set", "agents.goals.goal_set=individual")
    paid, news = [], []
    for agent in ("agent_0", "agent_1"):
        mine = node_metrics(run_dir, agent)
        ended = [r for r in mine if "goals/goal" in r]
        assert len(ended) == 25 and all(0 <= r["goals/goal"] <= 5 for r in ended)
        assert all(r["goals/reward"] in (0.0, 0.5) for r in ended), "the env pays an individual goal 1/beta"
        paid += [r["goals/reward"] for r in ended]
        news += [r["hindsight/events_from_partners_only"] for r in mine if "hindsight/events_from_partners_only" in r]
    assert sum(paid) > 0, "the env paid some goals it was told in goal.ready"
    assert sum(news) > 0, "partners reported landmarks this agent could not see"
    assert not re.search(r"late_goals|bad_goals", (run_dir / "nodes" / "env" / "log").read_text()), \
        "every goal reached the env in its episode's hold"


@pytest.mark.long
def test_a_supervised_pair_through_the_runtime_is_the_in_process_bench_run_row_for_row(tmp_path):
    # The two benches' supervisor figures once disagreed. With the in-process run seeded as an
    # orchestrated run is (bench/goals.py `streams="runtime"`) and the agents taking their owed
    # gradient steps before acting (max_pending_gradient_steps 0; by default they act on while up
    # to 64 are owed), both are the same run: same goals, same rows in every agent's replay,
    # bit for bit, through learning (gradient steps from row 1,000, episode 26 on), and the same
    # network at the end.
    import io

    import numpy as np
    import torch

    from agent_node.persistence import load_checkpoint
    from protocols.storage.files import read_sealed
    from tests.conftest import load_bench

    episodes = 40
    run_dir = tmp_path / "run"
    settings = ["run.seed=5", f"run.steps={episodes * EPISODE}", "agents.goals.hindsight=null",
                "agents.learner.her_strategy=none", "agents.max_pending_gradient_steps=0"]
    process = orchestrate("up", "configs/goals_supervisor.yaml", "--run-dir", str(run_dir),
                          *[arg for setting in settings for arg in ("--set", setting)])
    finished_ok(process, timeout_s=280)

    bench = load_bench("goals.py", "bench_goals_for_runtime_check")  # its own copy: GoalDQNAgent is patched below
    learners = []
    original = bench.GoalDQNAgent.__init__

    def keep(agent, *args, **kwargs):
        original(agent, *args, **kwargs)
        learners.append(agent)

    bench.GoalDQNAgent.__init__ = keep
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the nodes (agents.torch_threads) and the bench's jobs: the same float sums
    try:
        in_process = bench.run("supervisor", 5, episodes, view="local", streams="runtime")
    finally:
        bench.GoalDQNAgent.__init__ = original
        torch.set_num_threads(threads)
    rewarded = []
    for index, learner in enumerate(learners):
        ended = [r for r in node_metrics(run_dir, f"agent_{index}") if "goals/goal" in r]
        assert [int(r["goals/goal"]) for r in ended] == in_process["goals"][:, index].tolist()
        rewarded.append([r["goals/reward"] >= 1.0 for r in ended])
        assert learner.gradient_steps > 0
        with np.load(io.BytesIO(read_sealed(run_dir / "nodes" / f"agent_{index}" / "replay" / "buffer.npz")), allow_pickle=False) as saved:
            for field in learner.replay.FIELDS:
                np.testing.assert_array_equal(saved[field], getattr(learner.replay, field)[: learner.replay.size], err_msg=field)
        # The node saves its checkpoint at the end: the same network, weight for weight.
        saved = load_checkpoint(run_dir / "nodes" / f"agent_{index}" / "checkpoints" / "latest.pt")["learner"]["goal_dqn"]
        assert saved["gradient_steps"] == learner.gradient_steps
        for name, weights in learner.q_network.state_dict().items():
            assert torch.equal(saved["q_network"][name], weights), name
    assert [float(all(both)) for both in zip(*rewarded)] == in_process["success"].tolist()


@pytest.mark.long  # an orchestrated run of two episodes (about 10 s here)
def test_the_goals_bench_keeps_the_run_s_record_not_an_agent_s_last_metrics_line(tmp_path):
    # bench/goals.py's runtime row carries the run's record (exit code, commit, budget: what
    # decides whether the run may be scored); reading the agents' metrics must not replace it.
    from tests.conftest import load_bench

    bench = load_bench("goals.py", "bench_goals_for_record_check")
    result = bench.runtime_run("supervisor", 1, 2, 3, "local", tmp_path / "run")
    assert result["record"]["refused"] is None and result["record"]["exit_code"] == 0, result["record"]
