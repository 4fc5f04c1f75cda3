"""bench/goals.py runs every mode end to end on a tiny budget, and its statistics are right."""

from __future__ import annotations


import numpy as np
import pytest
from tests.conftest import REPO, load_bench

bench = load_bench("goals.py")


@pytest.mark.parametrize("mode", bench.MODES)
def test_each_mode_runs_and_reports_per_episode(mode):
    result = bench.run(mode, seed=0, episodes=6)
    assert result["success"].shape == result["aligned"].shape == result["events_from_partners_only"].shape == (6,)
    # As through the runtime: the env knows no goals, so every episode lasts max_steps.
    np.testing.assert_array_equal(result["env_steps"], 40 * np.arange(1, 7))
    if mode == "supervisor":
        assert result["aligned"].all()
    if mode != "negotiation_hindsight":
        assert not result["events_from_partners_only"].any(), "only sharing brings partners' events"


def test_with_the_env_ending_episodes_no_episode_outlasts_max_steps_and_unrewarded_ones_last_it():
    result = bench.run("supervisor", seed=0, episodes=8, env_ends_episodes=True)
    lengths = np.diff(np.r_[0, result["env_steps"]])
    assert lengths.max() <= 40 and np.all(lengths[result["success"] == 0] == 40)


def test_partners_reports_are_news_only_under_the_local_view():
    joint = bench.run("negotiation_hindsight", seed=1, episodes=8, view="joint")
    local = bench.run("negotiation_hindsight", seed=1, episodes=8, view="local")
    assert not joint["events_from_partners_only"].any()
    assert local["events_from_partners_only"].sum() > 0


def _row(seed, success, aligned=0.5, seconds=10.0, episodes=100):
    return {"seed": seed, "success_final": success, "aligned_final": aligned, "seconds": seconds, "episodes": episodes,
            "cpu_seconds": 2 * seconds, "episodes_per_second": episodes / seconds}


def test_under_the_own_view_the_env_pays_and_reports_imply_cooperative_goals():
    own = bench.run("negotiation_hindsight", seed=1, episodes=8, view="own")
    assert own["events_from_partners_only"].sum() > 0, "every landmark a partner touched is news"
    with pytest.raises(ValueError, match="needs the env to pay"):
        bench.run("negotiation_hindsight", seed=1, episodes=1, view="own", env_pays=False)


def test_cross_check_says_whether_each_mean_lies_in_the_others_interval():
    runtime = {"negotiation": [_row(0, 0.2), _row(1, 0.3), _row(2, 0.25)]}
    close = {"negotiation": [_row(0, 0.22), _row(1, 0.28), _row(2, 0.26)]}
    far = {"negotiation": [_row(0, 0.8), _row(1, 0.82), _row(2, 0.81)]}
    checks = {row["measure"]: row for row in bench.cross_check(runtime, close)}
    assert checks["success_final"]["within"] and checks["aligned_final"]["within"]
    assert checks["success_final"]["runtime"] == pytest.approx(0.25)
    assert not {row["measure"]: row for row in bench.cross_check(runtime, far)}["success_final"]["within"]
    assert bench.cross_check(runtime, {}) == []
    # Only the seeds both sides ran count: seed 2 alone on one side is left out.
    lopsided = {"negotiation": [_row(0, 0.22), _row(1, 0.28), _row(2, 0.99)]}
    assert bench.cross_check(lopsided, close)[0]["seeds"] == [0, 1, 2]
    assert bench.cross_check(lopsided, {"negotiation": close["negotiation"][:2]})[0]["runtime"] == pytest.approx(0.25)


def test_speed_is_the_ratio_of_episodes_per_second():
    runtime = {"supervisor": [_row(0, 0.5, seconds=20.0), _row(1, 0.5, seconds=40.0)]}
    in_process = {"supervisor": [_row(0, 0.5, seconds=10.0), _row(1, 0.5, seconds=10.0)]}
    entry = bench.speed(runtime, in_process)["supervisor"]
    assert entry["runtime_episodes_per_second"] == pytest.approx(3.75)
    assert entry["in_process_episodes_per_second"] == pytest.approx(10.0)
    assert entry["ratio"] == pytest.approx(0.375)
    assert entry["runtime_cpu_seconds_per_episode"] == pytest.approx(0.6)


def test_steps_to_fraction_of_final():
    curve = np.r_[np.zeros(100), np.ones(200)]
    steps = np.arange(1, 301) * 10
    # The 100-episode moving mean first reaches 0.8 at episode index 80 of the smoothed curve.
    assert bench.steps_to_fraction_of_final(curve, steps, 0.8, 100) == steps[80 + 99]
    assert np.isnan(bench.steps_to_fraction_of_final(np.zeros(300), steps, 0.8, 100))


def test_hindsight_is_timed_to_the_level_of_negotiation_without_sharing_on_the_same_seed():
    plain = {"seed": 0, "success_final": 0.5, "success_curve": [0.0, 0.2, 0.45, 0.5], "env_steps_curve": [100, 200, 300, 400]}
    shared = {"seed": 0, "success_final": 0.6, "success_curve": [0.1, 0.4, 0.6, 0.6], "env_steps_curve": [90, 180, 270, 360]}
    never = {"seed": 1, "success_final": 0.1, "success_curve": [0.0, 0.1, 0.1, 0.1], "env_steps_curve": [90, 180, 270, 360]}
    alone = {"seed": 2, "success_final": 0.6, "success_curve": [0.6], "env_steps_curve": [40]}
    # Paired by seed, not by position: seed 2 has no run without sharing, and gets nothing.
    summary = {"negotiation": [plain, {**plain, "seed": 1}], "negotiation_hindsight": [alone, shared, never]}
    bench.add_steps_to_negotiation_level(summary)
    assert "steps_to_negotiation_80pct" not in alone
    # The level is 0.8 x 0.5 = 0.4 for both seeds: reached in window 3 without sharing, 2 with.
    assert plain["steps_to_negotiation_80pct"] == 300
    assert shared["steps_to_negotiation_80pct"] == 180
    assert np.isnan(never["steps_to_negotiation_80pct"])
    assert np.isnan(bench.steps_to_level([0.0, 0.0], [10, 20], 0.0))  # nothing to reach


def test_team_graph_is_the_pair_or_a_ring():
    assert bench.team_graph(2) == {"agent_0": ["agent_1"], "agent_1": ["agent_0"]}
    ring = bench.team_graph(6)
    assert ring["agent_0"] == ["agent_1", "agent_5"] and ring["agent_3"] == ["agent_2", "agent_4"]
    assert all(len(neighbours) == 2 for neighbours in ring.values())


@pytest.mark.parametrize("mode", ["negotiation", "negotiation_hindsight"])
def test_a_ring_of_six_negotiates_every_episode(mode):
    result = bench.run(mode, seed=0, episodes=4, num_agents=6)
    assert result["success"].shape == result["aligned"].shape == result["edges_aligned"].shape == (4,)
    assert np.all((0 <= result["edges_aligned"]) & (result["edges_aligned"] <= 1))
    # A team on one goal has every edge aligned.
    assert np.all(result["edges_aligned"][result["aligned"] == 1] == 1)


@pytest.mark.parametrize("mode", bench.MODES)
def test_each_run_records_every_agents_proposal_and_goal(mode):
    result = bench.run(mode, seed=0, episodes=5)
    assert result["proposals"].shape == result["goals"].shape == (5, 2)
    allowed = set(bench.cooperative_goals(bench.NUM_LANDMARKS).tolist())
    assert set(result["goals"].ravel()) <= allowed and set(result["proposals"].ravel()) <= allowed
    if not mode.startswith("negotiation"):  # nothing to negotiate: the proposal is the goal
        np.testing.assert_array_equal(result["proposals"], result["goals"])
    np.testing.assert_array_equal(result["aligned"], result["goals"][:, 0] == result["goals"][:, 1])


def test_per_goal_counts_proposals_alignments_and_success_per_goal_in_the_final_window():
    goals = sorted(bench.cooperative_goals(bench.NUM_LANDMARKS).tolist())
    a, b, c = goals[:3]
    result = {
        # The first episode is outside the final window of 4 and must not count.
        "proposals": np.array([[c, c], [a, b], [a, a], [b, a], [a, c]]),
        "goals": np.array([[c, c], [a, a], [a, a], [b, a], [b, b]]),
        "success": np.array([1.0, 1.0, 0.0, 0.0, 1.0]),
    }
    rows = {row["goal"]: row for row in bench.per_goal(result, last=4)}
    assert set(rows) == set(goals)
    assert rows[a]["proposed_by_agent_0"] == 0.75 and rows[a]["goal_of_agent_0"] == 0.5
    assert rows[a]["aligned_on"] == 0.5 and rows[a]["success_when_aligned_on"] == 0.5
    assert rows[b]["proposed_by_agent_0"] == 0.25 and rows[b]["aligned_on"] == 0.25
    assert rows[b]["success_when_aligned_on"] == 1.0
    assert rows[c]["aligned_on"] == 0.0 and np.isnan(rows[c]["success_when_aligned_on"])


def test_per_goal_tables_are_printed_for_the_runs_that_have_one(capsys):
    result = bench.run("negotiation", seed=0, episodes=6)
    rows = bench.per_goal(result, last=6)
    bench.print_per_goal({"negotiation": [{"seed": 0, "per_goal": rows}, {"seed": 1}]})
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "negotiation seed 0, final window, per cooperative goal:"
    assert len(lines) == 2 + len(rows)  # title, header, one line per goal; seed 1 has no table
    assert [int(line.split()[0]) for line in lines[2:]] == [row["goal"] for row in rows]


def test_runtime_streams_are_seeded_from_the_node_indices_an_orchestrated_supervisor_run_gives():
    # The indices `stream_seeds` assumes (agents 0..n-1, env server n, external supervisor n + 1)
    # are the orchestrator's for the supervisor config the bench's --runtime runs.
    from orchestrator.config import derive_nodes, load_config
    from protocols.seeds import derive_seed

    nodes = derive_nodes(load_config(REPO / "configs" / "goals_supervisor.yaml", ["run.seed=7"]))
    seeds = bench.stream_seeds(7, 2, "runtime")
    assert seeds["learner"] == [derive_seed(7, nodes[f"agent_{i}"].index, "learner") for i in range(2)]
    assert seeds["env"] == derive_seed(7, nodes["env"].index, "env")
    assert seeds["supervisor"] == derive_seed(7, nodes["supervisor"].index, "goals/supervisor")
    with pytest.raises(ValueError, match="streams must be one of"):
        bench.stream_seeds(7, 2, "other")


def test_runtime_streams_start_the_first_episode_on_the_env_servers_seeded_reset_and_its_supervisor_draws(monkeypatch):
    from agent_node.goals.modules import SupervisorAssignment
    from env_server.envs.goal_lines import GoalLinesEnv, cooperative_goals

    seeds = bench.stream_seeds(3, 2, "runtime")
    draws = SupervisorAssignment(cooperative_goals(6), seed=seeds["supervisor"])
    env = GoalLinesEnv(num_landmarks=6, view="local")
    first = env.reset(seed=seeds["env"])[0]
    second = env.reset()[0]
    seen = []
    original = bench.GoalDQNAgent.observe_episode

    def record(agent, obs, *args, **kwargs):
        seen.append(obs[0])  # the first observation of each stored episode
        return original(agent, obs, *args, **kwargs)

    monkeypatch.setattr(bench.GoalDQNAgent, "observe_episode", record)
    result = bench.run("supervisor", 3, 2, view="local", streams="runtime")
    assert result["goals"].tolist() == [[goal, goal] for goal in (draws.propose(0), draws.propose(1))]
    np.testing.assert_array_equal(seen[0], first["agent_0"])
    np.testing.assert_array_equal(seen[2], second["agent_0"])


def test_a_merged_result_says_which_streams_its_in_process_rows_were_drawn_with():
    same = {"episodes": 100, "landmarks": 6, "view": "local", "team": 2, "final_window_episodes": 100, "curve_window_episodes": 100}
    runtime_batch = {"conditions": {**same, "runtime": True, "in_process_streams": "runtime"},
                     "runtime": {"supervisor": [{"seed": 0}]}, "in_process": {"supervisor": [{"seed": 0}]}}
    older_batch = {"conditions": {**same, "runtime": True}, "runtime": {"supervisor": [{"seed": 1}]},
                   "in_process": {"supervisor": [{"seed": 1}]}}  # from before --streams: the bench's own
    plain = {"conditions": {**same, "streams": "runtime"}, "per_seed": {"supervisor": [{"seed": 2}]}}
    assert bench.merge_runtime_batches([runtime_batch, plain], ["a", "b"])["conditions"]["in_process_streams"] == "runtime"
    merged = bench.merge_runtime_batches([runtime_batch, older_batch], ["a", "b"])
    assert merged["conditions"]["in_process_streams"] == "mixed (bench, runtime)"
    assert [r["seed"] for r in merged["in_process"]["supervisor"]] == [0, 1]
