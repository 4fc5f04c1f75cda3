"""The transition assembler, fed by hand with env observations (no sockets)."""

from __future__ import annotations

import numpy as np
import pytest

from agent_node.transitions import FinishedEpisode, TransitionAssembler
from protocols.codec import messages as m

AGENT = "agent_0"


def observation(step, obs, *, reward=0.0, active=True, terminated=False, truncated=False, final=None, k=2, evaluation=False):
    """An env.observation for one agent over k copies; scalars are broadcast to every copy."""
    as_rows = lambda value, dtype: np.broadcast_to(np.asarray(value, dtype=dtype), (k,)).copy()
    starts = np.zeros(k, bool) if final is None else np.array([row is not None for row in final])
    final_obs = {}
    if final is not None:
        final_obs = {AGENT: np.array([row if row is not None else np.zeros(2) for row in final], dtype=np.float32)}
    return m.EnvObservation(
        step=step,
        observations={AGENT: np.asarray(obs, dtype=np.float32)},
        rewards={AGENT: as_rows(reward, np.float32)},
        terminated={AGENT: as_rows(terminated, bool)},
        truncated={AGENT: as_rows(truncated, bool)},
        active={AGENT: as_rows(active, bool)},
        final_observations=final_obs,
        episode_start=starts,
        evaluation=evaluation,
    )


def act(assembler, message, actions):
    assembler.acted(message.observations[AGENT], np.asarray(actions), message.active[AGENT])


def test_first_observation_yields_nothing_and_steps_pair_previous_action_with_outcome():
    assembler = TransitionAssembler(AGENT, num_copies=2)
    first = observation(0, [[0, 0], [1, 1]])
    step = assembler.observe(first)
    assert step.transition is None and step.finished == []
    act(assembler, first, [3, 4])

    second = observation(1, [[2, 2], [3, 3]], reward=[1.0, -1.0])
    step = assembler.observe(second)
    t = step.transition
    np.testing.assert_array_equal(t.obs, [[0, 0], [1, 1]])
    np.testing.assert_array_equal(t.action, [3, 4])
    np.testing.assert_array_equal(t.next_obs, [[2, 2], [3, 3]])
    np.testing.assert_array_equal(t.reward, [1.0, -1.0])
    np.testing.assert_array_equal(t.copy_index, [0, 1])
    assert not t.terminated.any() and not t.truncated.any()
    assert step.finished == []


def test_autoreset_uses_the_final_observation_and_reports_the_episode_once():
    assembler = TransitionAssembler(AGENT, num_copies=2)
    first = observation(0, [[0, 0], [1, 1]])
    assembler.observe(first)
    act(assembler, first, [0, 0])
    middle = observation(1, [[2, 2], [3, 3]], reward=[1.0, 2.0])
    assembler.observe(middle)
    act(assembler, middle, [1, 1])
    # Copy 1 truncates and is reset by the server: its row carries the new episode's first
    # observation, the old one's last comes separately.
    ended = observation(
        2, [[4, 4], [9, 9]], reward=[1.0, 5.0], truncated=[False, True], final=[None, [7.0, 7.0]]
    )
    step = assembler.observe(ended)
    np.testing.assert_array_equal(step.transition.next_obs, [[4, 4], [7, 7]])
    np.testing.assert_array_equal(step.transition.truncated, [False, True])
    assert [(e.copy, e.episode_return, e.length, e.episode) for e in step.finished] == [(1, 7.0, 2, 1)]
    assert assembler.last_return == 7.0 and assembler.episodes == 1
    # The new episode of copy 1 starts from zero; copy 0 keeps counting.
    act(assembler, ended, [2, 2])
    later = observation(3, [[5, 5], [6, 6]], reward=[1.0, 1.0], terminated=[True, True], final=[[8, 8], [8, 8]])
    step = assembler.observe(later)
    assert [(e.copy, e.episode_return, e.length) for e in step.finished] == [(0, 3.0, 3), (1, 1.0, 1)]
    assert assembler.episodes == 3


def test_an_agent_that_sits_out_the_next_episode_keeps_its_final_transition():
    # Population env: at the start of copy 0's next episode this agent is not drawn (active
    # False), but the step that ended the previous episode was its own and must be learned.
    assembler = TransitionAssembler(AGENT, num_copies=2)
    first = observation(0, [[0, 0], [1, 1]])
    assembler.observe(first)
    act(assembler, first, [1, 2])
    ended = observation(
        1, [[0, 0], [3, 3]], reward=[10.0, 1.0], active=[False, True], terminated=[True, False], final=[[5, 5], None]
    )
    step = assembler.observe(ended)
    t = step.transition
    np.testing.assert_array_equal(t.copy_index, [0, 1])
    np.testing.assert_array_equal(t.obs, [[0, 0], [1, 1]])
    np.testing.assert_array_equal(t.next_obs, [[5, 5], [3, 3]])
    np.testing.assert_array_equal(t.terminated, [True, False])
    np.testing.assert_array_equal(t.reward, [10.0, 1.0])
    assert [(e.copy, e.episode_return, e.length) for e in step.finished] == [(0, 10.0, 1)]

    # While it sits out, copy 0 yields no rows and no episodes.
    act(assembler, ended, [0, 2])
    sitting = observation(2, [[0, 0], [4, 4]], reward=[0.0, 1.0], active=[False, True])
    step = assembler.observe(sitting)
    np.testing.assert_array_equal(step.transition.copy_index, [1])
    assert step.finished == []
    assert assembler.lengths[0] == 0


def test_an_agent_that_was_not_active_and_is_not_ending_gives_no_row():
    assembler = TransitionAssembler(AGENT, num_copies=2)
    first = observation(0, [[0, 0], [1, 1]], active=[False, True])
    assembler.observe(first)
    act(assembler, first, [0, 0])
    # Copy 0 joins at this step (it did not act before): its first observation, no transition.
    # A row that ends while it was not acting is not its episode either.
    step = assembler.observe(observation(1, [[2, 2], [3, 3]], terminated=[True, False]))
    np.testing.assert_array_equal(step.transition.copy_index, [1])
    assert step.finished == []


def test_no_rows_at_all_gives_no_transition():
    assembler = TransitionAssembler(AGENT, num_copies=1, episodes_finished=4)
    first = observation(0, [[0, 0]], active=False, k=1)
    assembler.observe(first)
    act(assembler, first, [0])
    step = assembler.observe(observation(1, [[1, 1]], active=False, k=1))
    assert step.transition is None and step.finished == [] and assembler.episodes == 4


def test_bad_input_is_refused_with_what_was_expected():
    assembler = TransitionAssembler(AGENT, num_copies=3)
    first = observation(0, [[0, 0], [1, 1]])
    assembler.acted(first.observations[AGENT], np.zeros(2), np.ones(2, bool))
    with pytest.raises(ValueError, match=r"active of shape \(2,\), expected \(3,\)"):
        assembler.observe(observation(1, [[0, 0], [1, 1]]))
    with pytest.raises(ValueError, match="evaluation observation"):
        assembler.observe(observation(1, [[0, 0], [1, 1]], evaluation=True))
    with pytest.raises(ValueError, match="num_copies must be at least 1"):
        TransitionAssembler(AGENT, num_copies=0)


def test_a_step_taken_without_our_answer_yields_no_transition_but_keeps_rewards_and_episode_ends():
    """The env server played the default action (our answer came after its deadline): the next
    observation does not follow from our remembered action, so no row is learned from it, but
    the step's reward still counts towards the episode, and an episode it ends is reported."""
    assembler = TransitionAssembler(AGENT, num_copies=2)
    first = observation(0, [[0, 0], [1, 1]])
    assembler.observe(first)
    act(assembler, first, [3, 4])
    second = observation(1, [[2, 2], [3, 3]], reward=1.0)
    assert assembler.observe(second).transition is not None
    act(assembler, second, [5, 6])

    assembler.stepped_without_answer()  # step 2 was played without us
    third = observation(2, [[4, 4], [5, 5]], reward=2.0, terminated=[True, False], final=[[9, 9], None])
    step = assembler.observe(third)
    assert step.transition is None
    assert [(e.copy, e.episode_return, e.length) for e in step.finished] == [(0, 3.0, 2)]

    act(assembler, third, [7, 8])  # answering again: learning resumes from the next step
    assert assembler.observe(observation(3, [[6, 6], [7, 7]])).transition is not None


def test_an_answer_the_env_server_replaced_yields_no_transition():
    """Our answer came, but after the step's deadline or a realtime clock's step time: the env
    played another action, and says so by naming us in the next observation's `missing`."""
    assembler = TransitionAssembler(AGENT, num_copies=2)
    first = observation(0, [[0, 0], [1, 1]])
    assembler.observe(first)
    act(assembler, first, [3, 4])
    late = observation(1, [[2, 2], [3, 3]], reward=1.0)
    late = m.EnvObservation(**{**late.__dict__, "missing": [AGENT]})
    step = assembler.observe(late)
    assert step.transition is None and assembler.returns.tolist() == [1.0, 1.0]
    act(assembler, late, [5, 6])
    others_late = m.EnvObservation(**{**observation(2, [[4, 4], [5, 5]]).__dict__, "missing": ["agent_1"]})
    assert assembler.observe(others_late).transition is not None, "another agent's lateness is not ours"


def test_an_env_server_restart_cuts_the_episodes_and_never_glues_the_old_to_the_new():
    assembler = TransitionAssembler(AGENT, num_copies=2, episodes_finished=4)
    first = observation(10, [[0, 0], [1, 1]])
    assembler.observe(first)
    act(assembler, first, [1, 1])
    second = observation(11, [[2, 2], [3, 3]], reward=[1.0, 2.0])
    assert assembler.observe(second).transition is not None
    act(assembler, second, [0, 0])  # answered; the server died before (or after) playing it

    cut = assembler.cut()
    assert [(e.copy, e.episode_return, e.length, e.cut) for e in cut] == [(0, 1.0, 1, True), (1, 2.0, 1, True)]
    assert assembler.episodes == 4 and assembler.last_return is None, "a cut episode is not a whole one"

    # The resumed server's first observation (same or next step number, new episodes): no row
    # pairs it with the old episode's last observation and action.
    resumed = observation(12, [[7, 7], [8, 8]])
    assert assembler.observe(resumed).transition is None
    act(assembler, resumed, [2, 3])
    after = observation(13, [[9, 9], [9, 9]], reward=0.5, terminated=[True, False])
    step = assembler.observe(after)
    np.testing.assert_array_equal(step.transition.obs, [[7, 7], [8, 8]])
    assert [(e.episode_return, e.length, e.cut) for e in step.finished] == [(0.5, 1, False)], "returns start over"
    assert assembler.cut() == [FinishedEpisode(1, 0.5, 1, 5, cut=True)]
