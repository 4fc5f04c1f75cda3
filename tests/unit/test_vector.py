"""K copies of a ParallelEnv batched per agent (env_server/vector.py), without sockets."""

import numpy as np
import pytest
from gymnasium import spaces
from mpe2 import simple_spread_v3

from env_server.vector import VectorizedParallelEnv, check_batched


def make(copies: int, autoreset: bool = True, max_cycles: int = 3) -> VectorizedParallelEnv:
    return VectorizedParallelEnv(lambda: simple_spread_v3.parallel_env(N=2, max_cycles=max_cycles), copies, autoreset=autoreset)


def zeros(envs: VectorizedParallelEnv) -> dict:
    return {a: np.zeros(envs.num_copies, dtype=np.int64) for a in envs.possible_agents}


def test_reset_batches_every_agent_over_copies():
    envs = make(3)
    result = envs.reset(seed=7)
    assert set(result.observations) == {"agent_0", "agent_1"}
    assert result.observations["agent_0"].shape == (3, 12)
    assert result.episode_start.all() and all(result.active[a].all() for a in envs.possible_agents)
    # Seeds differ per copy: copies are not clones of each other.
    assert not np.allclose(result.observations["agent_0"][0], result.observations["agent_0"][1])


def test_autoreset_sends_final_and_first_observation_and_the_episode_return():
    envs = make(2, max_cycles=3)
    envs.reset(seed=0)
    for _ in range(2):
        result = envs.step(zeros(envs))
        assert not result.episode_start.any() and result.episode_returns == []
    result = envs.step(zeros(envs))
    assert result.episode_start.all() and result.truncated["agent_0"].all()
    assert result.final_observations["agent_0"].shape == (2, 12)
    assert not np.allclose(result.final_observations["agent_0"], result.observations["agent_0"])
    assert len(result.episode_returns) == 2


def test_without_autoreset_finished_copies_wait_for_a_reset():
    envs = make(1, autoreset=False, max_cycles=2)
    envs.reset(seed=0)
    envs.step(zeros(envs))
    result = envs.step(zeros(envs))
    assert envs.all_finished and not result.episode_start.any()
    idle = envs.step(zeros(envs))  # stepping a finished copy does nothing
    assert not idle.active["agent_0"].any()
    assert envs.reset(seed=1).episode_start.all() and not envs.all_finished


def test_check_batched_names_the_problem():
    discrete, box = spaces.Discrete(5), spaces.Box(-1, 1, (2,), np.float32)
    check_batched(discrete, np.array([0, 4]), 2, "a")
    check_batched(box, np.zeros((2, 2), np.float32), 2, "b")
    with pytest.raises(ValueError, match=r"a: expected shape \(2,\), got \(3,\)"):
        check_batched(discrete, np.array([0, 1, 2]), 2, "a")
    with pytest.raises(ValueError, match="integer actions"):
        check_batched(discrete, np.array([0.0, 1.0]), 2, "a")
    with pytest.raises(ValueError, match=r"a\[1\]: 5 is outside Discrete\(5\)"):
        check_batched(discrete, np.array([0, 5]), 2, "a")
    with pytest.raises(ValueError, match="finite"):
        check_batched(box, np.full((2, 2), np.nan, np.float32), 2, "b")
    with pytest.raises(ValueError, match="expected an array"):
        check_batched(box, [[0, 0], [0, 0]], 2, "b")


# --------------------------------------------------------------------------- forwarded infos

from env_server.envs.goal_lines import parallel_env as goal_lines_env  # noqa: E402
from env_server.vector import batch_infos  # noqa: E402
from protocols.codec import messages as m  # noqa: E402
from protocols.codec import wire  # noqa: E402


def goal_lines(copies: int, forward=("achieved_goals", "landmark"), **kwargs) -> VectorizedParallelEnv:
    kwargs = {"num_landmarks": 3, "max_steps": 8, **kwargs}
    return VectorizedParallelEnv(lambda: goal_lines_env(**kwargs), copies, autoreset=True, forward_infos=forward)


def test_infos_are_dropped_unless_forwarded():
    envs = VectorizedParallelEnv(lambda: goal_lines_env(num_landmarks=3), 2, autoreset=True)
    assert envs.reset(seed=1).infos == {}
    assert envs.step({a: np.zeros(2, np.int64) for a in envs.possible_agents}).infos == {}


def test_forwarded_infos_match_each_copy_of_the_env():
    envs = goal_lines(3)
    reference = [goal_lines_env(num_landmarks=3, max_steps=8) for _ in range(3)]
    result = envs.reset(seed=11)
    for index, env in enumerate(reference):
        env.reset(seed=11 + index)
    rng = np.random.default_rng(0)
    for _ in range(20):
        actions = {a: rng.integers(0, 5, size=3) for a in envs.possible_agents}
        result = envs.step(actions)
        for index, env in enumerate(reference):
            _, _, _, _, infos = env.step({a: int(actions[a][index]) for a in env.agents})
            if not env.agents:
                env.reset()  # the vector's autoreset, in the same step
            for agent, agent_infos in infos.items():
                landmark = result.infos[agent]["landmark"]
                assert isinstance(landmark, np.ndarray) and landmark.shape == (3,), "a scalar in every copy: one (K,) array"
                assert landmark[index] == agent_infos["landmark"]
                achieved = result.infos[agent]["achieved_goals"][index]
                assert achieved.dtype == np.int64 and achieved.tolist() == agent_infos["achieved_goals"].tolist()


def test_ragged_or_partial_infos_are_a_list_of_k_rows():
    per_copy = [
        {"a": {"g": np.array([1, 2]), "s": 3}},
        {"a": {"g": np.array([4]), "s": 5}, "b": {"s": 1}},
        {},  # `a` inactive in this copy
    ]
    infos = batch_infos(per_copy, ["a", "b"], ("g", "s"))
    assert [None if r is None else r.tolist() for r in infos["a"]["g"]] == [[1, 2], [4], None]
    assert [None if r is None else r.tolist() for r in infos["a"]["s"]] == [3, 5, None]
    assert [None if r is None else r.tolist() for r in infos["b"]["s"]] == [None, 1, None]
    assert "g" not in infos["b"], "a key an agent reports in no copy is left out"
    all_present = batch_infos([{"a": {"s": 1}}, {"a": {"s": 2}}], ["a"], ("s",))
    assert all_present["a"]["s"].tolist() == [1, 2]


def test_forwarded_infos_survive_the_wire():
    envs = goal_lines(2)
    envs.reset(seed=3)
    result = envs.step({a: np.ones(2, np.int64) for a in envs.possible_agents})
    message = m.EnvObservation(
        step=1, observations=result.observations, rewards=result.rewards, terminated=result.terminated,
        truncated=result.truncated, active=result.active, final_observations={}, episode_start=result.episode_start,
        infos=result.infos,
    )
    decoded = wire.decode(wire.encode(message, sender="env", run_id="r", seq=0)).message
    for agent, entries in result.infos.items():
        assert np.array_equal(decoded.infos[agent]["landmark"], entries["landmark"])
        for sent, received in zip(entries["achieved_goals"], decoded.infos[agent]["achieved_goals"]):
            assert np.array_equal(sent, received) and received.dtype == np.int64


def test_unknown_or_non_numeric_info_keys_are_refused_at_the_first_reset():
    with pytest.raises(ValueError, match=r"forward_infos names \['goal'\].*reports \['achieved_goals', 'landmark'\]"):
        goal_lines(2, forward=("landmark", "goal")).reset(seed=0)


    def texty():
        env = goal_lines_env(num_landmarks=3)
        reset = env.reset

        def reset_with_text(seed=None, options=None):
            observations, infos = reset(seed=seed, options=options)
            return observations, {a: {**i, "note": "hello"} for a, i in infos.items()}

        env.reset = reset_with_text
        return env

    envs = VectorizedParallelEnv(texty, 1, autoreset=True, forward_infos=("note",))
    with pytest.raises(ValueError, match=r"infos\['agent_0'\]\['note'\] must be a number or a numeric array"):
        envs.reset(seed=0)


def test_all_forwards_every_numeric_key_and_names_the_others_once(caplog):
    def texty():
        env = goal_lines_env(num_landmarks=3)
        reset = env.reset

        def reset_with_text(seed=None, options=None):
            observations, infos = reset(seed=seed, options=options)
            return observations, {a: {**i, "note": "hello", "score": 0.5} for a, i in infos.items()}

        env.reset = reset_with_text
        return env

    envs = VectorizedParallelEnv(texty, 2, autoreset=True, forward_infos="all")
    with caplog.at_level("WARNING", logger="env_server.vector"):
        first = envs.reset(seed=0)
        envs.reset(seed=1)
    for agent in envs.possible_agents:
        assert sorted(first.infos[agent]) == ["achieved_goals", "landmark", "score"]
        assert first.infos[agent]["score"].tolist() == [0.5, 0.5]
    warnings = [r.getMessage() for r in caplog.records if "not forwarded" in r.getMessage()]
    assert len(warnings) == 1 and "['note']" in warnings[0]
    # The step's infos (goal_lines reports achieved_goals and landmark) come through as well.
    stepped = envs.step({a: np.zeros(2, np.int64) for a in envs.possible_agents})
    assert sorted(stepped.infos["agent_0"]) == ["achieved_goals", "landmark"]
    # An env that reports no infos forwards nothing, and is not refused.
    spread = VectorizedParallelEnv(lambda: simple_spread_v3.parallel_env(N=2, max_cycles=3), 1, autoreset=True,
                                   forward_infos="all")
    spread.reset(seed=0)
    assert spread.step(zeros(spread)).infos == {}


def test_an_env_without_reset_infos_is_checked_at_the_first_step():
    envs = VectorizedParallelEnv(lambda: simple_spread_v3.parallel_env(N=2, max_cycles=3), 1, autoreset=True,
                                 forward_infos=("achieved_goals",))
    envs.reset(seed=0)
    with pytest.raises(ValueError, match="does not report"):
        envs.step(zeros(envs))


def test_env_config_forward_infos_defaults_to_nothing_and_refuses_repeats():
    from pydantic import ValidationError

    from env_server.config import EnvConfig

    assert EnvConfig(name="goal_lines_v0").forward_infos == []
    assert EnvConfig(name="goal_lines_v0", forward_infos=["achieved_goals", "landmark"]).forward_infos == ["achieved_goals", "landmark"]
    with pytest.raises(ValidationError, match="listed more than once"):
        EnvConfig(name="goal_lines_v0", forward_infos=["landmark", "landmark"])
    with pytest.raises(ValidationError, match="non-empty"):
        EnvConfig(name="goal_lines_v0", forward_infos=[""])
    assert EnvConfig(name="goal_lines_v0", forward_infos="all").forward_infos == "all"
    with pytest.raises(ValidationError, match="all"):
        EnvConfig(name="goal_lines_v0", forward_infos="everything")


def test_an_ended_episode_reports_each_agents_return_beside_the_mean():
    envs = make(2, max_cycles=2)
    envs.reset(seed=0)
    rewards = {a: np.zeros(2) for a in envs.possible_agents}
    for _ in range(2):
        result = envs.step(zeros(envs))
        for agent in envs.possible_agents:
            rewards[agent] += result.rewards[agent]
    assert len(result.episode_agent_returns) == 2
    for copy, (mean, per_agent) in enumerate(zip(result.episode_returns, result.episode_agent_returns)):
        assert per_agent == pytest.approx({a: rewards[a][copy] for a in envs.possible_agents})
        assert mean == pytest.approx(np.mean(list(per_agent.values())))
