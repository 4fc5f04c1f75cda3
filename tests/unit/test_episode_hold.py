"""The episode-start hold (env_server/episode_hold.py), driven by hand without sockets or clocks."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from env_server.config import EnvConfig
from env_server.episode_hold import EpisodeStartHold
from env_server.vector import BatchedStep

AGENTS = ["a0", "a1", "a2", "a3"]


def result(starting: list[bool], active: dict[str, list[bool]]) -> BatchedStep:
    k = len(starting)
    zeros = {a: np.zeros(k, np.float32) for a in AGENTS}
    flags = {a: np.zeros(k, bool) for a in AGENTS}
    return BatchedStep(observations=zeros, rewards=zeros, terminated=flags, truncated=flags,
                       active={a: np.array(active.get(a, [False] * k)) for a in AGENTS},
                       final_observations={}, episode_start=np.array(starting))


def test_off_by_default_and_validated():
    assert not EpisodeStartHold(0.0).enabled
    assert not EpisodeStartHold(0.0).should_hold(result([True], {"a0": [True]}))
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="episode_start_hold_s"):
            EpisodeStartHold(bad)
    assert EnvConfig(name="goal_lines_v0").episode_start_hold_s == 0.0
    with pytest.raises(ValidationError, match="episode_start_hold_s"):
        EnvConfig(name="goal_lines_v0", episode_start_hold_s=-0.5)
    with pytest.raises(ValidationError, match="episode_start_hold_s"):
        EnvConfig(name="goal_lines_v0", episode_start_hold_s=float("inf"))


def test_only_results_that_start_an_episode_are_held():
    hold = EpisodeStartHold(2.0)
    assert not hold.should_hold(result([False, False], {"a0": [True, True]}))
    assert hold.should_hold(result([False, True], {"a0": [True, True]}))


def test_announces_the_starting_copies_players_and_waits_for_each_of_them():
    hold = EpisodeStartHold(2.0)
    # Copy 1 starts an episode with a1 and a2; copy 0 is mid-episode (a0, a3 play there).
    step = result([False, True], {"a0": [True, False], "a1": [False, True], "a2": [False, True], "a3": [True, False]})
    active = hold.begin(step, ["a3"], step=7, claimed=set(AGENTS), now=10.0)
    assert {a: rows.tolist() for a, rows in active.items()} == {
        "a0": [False, False], "a1": [False, True], "a2": [False, True], "a3": [False, False],
    }
    assert hold.holding and hold.next_deadline() == 12.0
    assert not hold.on_ready(["a1", "a0"], step=7), "a2 has not reported"
    assert not hold.on_ready(["a2"], step=6), "a report for another episode start changes nothing"
    assert not hold.on_timer(11.9)
    assert hold.on_ready(["a2"], step=7)
    held = hold.release()
    assert held.result is step and held.missing == ["a3"] and held.step == 7
    assert not hold.holding and hold.next_deadline() is None
    assert hold.released_by_ready == 1 and hold.released_by_deadline == 0


def test_the_deadline_releases_a_hold_whose_agents_never_report():
    hold = EpisodeStartHold(0.5)
    hold.begin(result([True], {"a0": [True], "a1": [True]}), [], step=0, claimed=set(AGENTS), now=3.0)
    hold.on_ready(["a0"], step=0)
    assert not hold.on_timer(3.4)
    assert hold.on_timer(3.5)
    assert hold.release().step == 0 and hold.released_by_deadline == 1
    assert not hold.on_timer(10.0) and not hold.on_ready(["a1"], step=0), "nothing held any more"


def test_unclaimed_agents_are_not_waited_for():
    hold = EpisodeStartHold(1.0)
    hold.begin(result([True], {"a0": [True], "a1": [True]}), [], step=0, claimed={"a0"}, now=0.0)
    assert hold.held.waiting == {"a0"}
    assert hold.on_ready(["a0"], step=0)
