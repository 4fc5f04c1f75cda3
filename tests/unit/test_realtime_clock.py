"""The env server's realtime clock (env_server/realtime.py), driven by hand without sockets, and
the settings that turn it on (env.clock, env.steps_per_s, env.late_action, env.eval_clock)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from gymnasium import spaces
from pydantic import ValidationError

from env_server.barrier import DefaultActions
from env_server.config import EnvConfig
from env_server.pacing import Pacing
from env_server.realtime import RealtimeBarrier
from env_server.__main__ import main as env_server_main
from env_server.server import LockstepRules, clock_refusal
from orchestrator.config import load_config
from protocols.run.config_errors import ConfigError
from tests.conftest import REPO
from tests.unit.test_barrier import AGENTS, act, joined, result

PERIOD = 0.1  # 10 steps per second


def make_clock(late_action: str = "last", training: bool = True, evaluation: bool = True) -> RealtimeBarrier:
    action_spaces = {a: spaces.Discrete(5) for a in AGENTS}
    barrier = RealtimeBarrier(AGENTS, action_spaces, DefaultActions(action_spaces, "noop", seed=3), step_deadline_s=5.0,
                              steps_per_s=1 / PERIOD, late_action=late_action,
                              realtime_for={False: training, True: evaluation})
    joined(barrier)
    return barrier


def open_step(barrier: RealtimeBarrier, step: int, now: float, evaluation: bool = False) -> None:
    barrier.broadcast(result(), step=step, evaluation=evaluation, run_finished=False, missing=[], wait=True, now=now)


def send(barrier: RealtimeBarrier, agent: str, step: int, value: int, now: float, evaluation: bool = False) -> None:
    request = act(agent, step, value, evaluation)
    barrier.on_actions(agent.encode(), request.step, request.evaluation, request.actions, now)


def take_when_due(barrier: RealtimeBarrier) -> tuple[dict, list[str], float]:
    """Fire the timer at the step's time: (actions as one int per agent, late agents, the time)."""
    due = barrier.next_deadline()
    assert due is not None and not barrier.step_due
    barrier.on_timer(due - 1e-6)
    assert not barrier.step_due, "never before the step's time"
    barrier.on_timer(due)
    assert barrier.step_due
    actions, late = barrier.take_actions()
    return {agent: int(np.asarray(a)[0]) for agent, a in actions.items()}, late, due


def everyone_acts(barrier: RealtimeBarrier, step: int, value: int, now: float) -> float:
    """Open `step` at `now`, every agent answers `value` 10 ms later, the step is taken at its
    time; returns that time."""
    open_step(barrier, step, now=now)
    for agent in AGENTS:
        send(barrier, agent, step, value=value, now=now + 0.01)
    _, _, due = take_when_due(barrier)
    return due


def test_every_action_in_does_not_end_the_wait_and_the_step_comes_at_its_time():
    barrier = make_clock()
    open_step(barrier, 0, now=10.0)
    for agent in AGENTS:
        send(barrier, agent, 0, value=2, now=10.01)
    assert not barrier.step_due and barrier.next_deadline() == pytest.approx(10.0 + PERIOD)
    actions, late, due = take_when_due(barrier)
    assert actions == {a: 2 for a in AGENTS} and late == []
    # The next step's time is one period after this one's, not after its broadcast.
    open_step(barrier, 1, now=due + 0.03)
    assert barrier.next_deadline() == pytest.approx(due + PERIOD)
    assert barrier.age_metrics() == {**{f"env/action_age_steps/{a}": 0.0 for a in AGENTS},
                                     **{f"env/action_age_steps_max/{a}": 0.0 for a in AGENTS}}


def test_a_missing_action_does_not_hold_the_step_and_its_agent_is_named_missing():
    barrier = make_clock()
    open_step(barrier, 0, now=0.0)
    send(barrier, "a0", 0, value=3, now=0.01)
    send(barrier, "a1", 0, value=3, now=0.01)
    actions, late, _ = take_when_due(barrier)  # a2 never answers: nothing of its own to play
    assert late == ["a2"] and actions == {"a0": 3, "a1": 3, "a2": 0}
    assert barrier.late_actions() == {"a2": 1} and barrier.default_actions == {"a2": 1}
    assert barrier.missing_actions == 1


def test_last_repeats_the_newest_action_and_its_age_grows():
    barrier = make_clock(late_action="last")
    due = everyone_acts(barrier, 0, value=4, now=0.0)
    played = []
    for step in (1, 2, 3):  # a2 stalls (a pause, a long learner update): its step-0 action is held
        open_step(barrier, step, now=due)
        send(barrier, "a0", step, value=1, now=due + 0.01)
        send(barrier, "a1", step, value=1, now=due + 0.01)
        actions, late, due = take_when_due(barrier)
        played.append((actions["a2"], late))
    assert played == [(4, ["a2"])] * 3
    assert barrier.late_actions() == {"a2": 3} and barrier.default_actions == {}
    ages = barrier.age_metrics()
    assert ages["env/action_age_steps/a2"] == pytest.approx((0 + 1 + 2 + 3) / 4)
    assert ages["env/action_age_steps_max/a2"] == 3.0 and ages["env/action_age_steps_max/a0"] == 0.0
    assert barrier.age_metrics() == {}, "a new metrics period starts empty"


def test_default_plays_the_default_once_the_newest_action_was_played():
    barrier = make_clock(late_action="default")
    due = everyone_acts(barrier, 0, value=4, now=0.0)
    open_step(barrier, 1, now=due)
    actions, late, _ = take_when_due(barrier)
    assert late == AGENTS and set(actions.values()) == {0}
    assert barrier.default_actions == {a: 1 for a in AGENTS}


@pytest.mark.parametrize("late_action", ["last", "default"])
def test_an_action_late_for_its_step_is_played_at_the_next_with_age_one(late_action):
    barrier = make_clock(late_action=late_action)
    due = everyone_acts(barrier, 0, value=1, now=0.0)
    open_step(barrier, 1, now=due)
    send(barrier, "a0", 1, value=2, now=due + 0.01)
    send(barrier, "a1", 1, value=2, now=due + 0.01)
    actions, late, due = take_when_due(barrier)
    assert late == ["a2"] and actions["a2"] == (1 if late_action == "last" else 0)
    # a2's answer to step 1 comes after step 1's time, before step 2's (nothing open between
    # the step and the next broadcast, or already step 2): it is a2's newest action.
    send(barrier, "a2", 1, value=3, now=due + 0.001)
    open_step(barrier, 2, now=due + 0.002)
    send(barrier, "a0", 2, value=2, now=due + 0.01)
    send(barrier, "a1", 2, value=2, now=due + 0.01)
    barrier.age_metrics()  # (start the period here)
    actions, late, _ = take_when_due(barrier)
    assert actions["a2"] == 3 and late == ["a2"], "played at the next step, and still late for it"
    assert barrier.age_metrics()["env/action_age_steps/a2"] == 1.0


def test_an_older_answer_never_replaces_a_newer_one_and_a_future_step_is_stale():
    barrier = make_clock()
    open_step(barrier, 5, now=0.0)
    send(barrier, "a0", 5, value=3, now=0.01)
    send(barrier, "a0", 4, value=1, now=0.02)  # a backlog handled in order, out of order here
    send(barrier, "a1", 6, value=1, now=0.02)  # not sent yet: cannot be an answer
    assert barrier.newest["a0"][0] == 5 and "a1" not in barrier.newest and barrier.stale_actions == 1
    actions, late, _ = take_when_due(barrier)
    assert actions["a0"] == 3 and late == ["a1", "a2"]


def test_the_clock_slips_when_the_server_itself_is_late_and_restarts_after_a_hold():
    barrier = make_clock()
    open_step(barrier, 0, now=0.0)
    _, _, due = take_when_due(barrier)
    open_step(barrier, 1, now=due + 0.25)  # stepping the env took longer than two periods
    assert barrier.clock_slips == 1 and barrier.next_deadline() == pytest.approx(due + 0.25 + PERIOD)
    _, _, due = take_when_due(barrier)
    barrier.restart_clock()  # a fault's step hold: the clock pauses, no slip
    open_step(barrier, 2, now=due + 5.0)
    assert barrier.clock_slips == 1 and barrier.next_deadline() == pytest.approx(due + 5.0 + PERIOD)


def test_evaluation_is_a_clock_of_its_own_and_may_run_in_the_lockstep():
    barrier = make_clock(evaluation=False)
    due = everyone_acts(barrier, 7, value=4, now=0.0)
    # The evaluation runs in the lockstep: due once everyone acted, before any step time.
    open_step(barrier, 0, now=due, evaluation=True)
    assert barrier.next_deadline() == pytest.approx(due + 5.0), "the lockstep's step deadline"
    send(barrier, "a0", 7, value=1, now=due)  # a late training answer: not this clock's
    for agent in AGENTS:
        send(barrier, agent, 0, value=2, now=due + 0.01, evaluation=True)
    assert barrier.step_due
    actions, missing = barrier.take_actions()
    assert missing == [] and barrier.stale_actions == 1
    # Back to training: nothing of the old clock is played (its newest actions are forgotten).
    open_step(barrier, 8, now=due + 1.0)
    actions, late, _ = take_when_due(barrier)
    assert late == AGENTS and barrier.late_actions() == {a: 1 for a in AGENTS}


def test_a_realtime_evaluation_counts_its_own_late_actions():
    barrier = make_clock(training=False, evaluation=True)
    open_step(barrier, 0, now=0.0, evaluation=True)
    send(barrier, "a0", 0, value=1, now=0.01, evaluation=True)
    _, _, due = take_when_due(barrier)
    counts = barrier.counts[True]
    assert (counts.played, counts.late) == (3, 2) and barrier.late_actions() == {}
    # Nobody answers step 1: a0's action of step 0 is played again, one step old; the others
    # have none of their own (the default is no action of theirs, so it has no age).
    open_step(barrier, 1, now=due, evaluation=True)
    take_when_due(barrier)
    metrics = Pacing.evaluation_metrics(SimpleNamespace(barrier=barrier))
    assert metrics == {"eval/late_actions": 5.0, "eval/late_action_share": 5 / 6,
                       "eval/action_age_mean": 0.5, "eval/action_age_max": 1.0}
    assert barrier.age_metrics() == {}, "the training clock's ages hold no evaluation step"


def test_inactive_agents_are_neither_late_nor_missing():
    barrier = make_clock()
    step_result = result()
    step_result.active["a2"][:] = False
    barrier.broadcast(step_result, step=0, evaluation=False, run_finished=False, missing=[], wait=True, now=0.0)
    actions, late, _ = take_when_due(barrier)
    assert late == ["a0", "a1"] and barrier.counts[False].played == 2


# ---------------------------------------------------------------------- the settings


def env(**fields) -> EnvConfig:
    return EnvConfig(name="mpe2.simple_spread_v3", **fields)


@pytest.mark.parametrize("fields, message", [
    ({"clock": "realtime"}, "steps_per_s: clock realtime steps the env at this rate"),
    ({"clock": "realtime", "steps_per_s": 0}, "greater than 0"),
    ({"steps_per_s": 5.0}, "steps_per_s: sets the rate of a realtime clock, but clock and eval_clock are lockstep"),
    ({"clock": "realtime", "steps_per_s": 5.0, "max_steps_per_s": 5.0}, "max_steps_per_s: paces the lockstep"),
    ({"clock": "realtime", "steps_per_s": 5.0, "episode_start_hold_s": 1.0}, "episode_start_hold_s: holds each episode"),
    ({"eval_clock": "realtime", "steps_per_s": 5.0}, "eval_clock: sets how evaluation episodes step, so it needs eval_every_steps"),
    ({"clock": "realtime", "steps_per_s": 5.0, "late_action": "zero"}, "late_action"),
])
def test_settings_a_clock_cannot_use_are_refused_naming_the_field(fields, message):
    with pytest.raises(ValidationError, match=message):
        env(**fields)


def test_the_evaluation_clock_follows_training_unless_set():
    assert env(clock="realtime", steps_per_s=5.0).evaluation_clock == "realtime"
    both = env(clock="realtime", steps_per_s=5.0, eval_every_steps=10, eval_clock="lockstep")
    assert both.evaluation_clock == "lockstep" and both.realtime_anywhere
    assert not env().realtime_anywhere


def test_a_server_started_without_the_env_section_refuses_the_same():
    rules = dict(max_steps=None, step_deadline_s=1.0, join_deadline_s=1.0)
    assert clock_refusal(LockstepRules(**rules)) is None
    assert clock_refusal(LockstepRules(**rules, clock="realtime", eval_clock="realtime")).startswith("steps_per_s:")
    assert clock_refusal(LockstepRules(**rules, clock="realtime", eval_clock="realtime", steps_per_s=5.0,
                                       max_steps_per_s=2.0)).startswith("max_steps_per_s:")
    assert clock_refusal(LockstepRules(**rules, clock="realtime", eval_clock="lockstep", steps_per_s=5.0)) is None


@pytest.mark.parametrize("flags, named", [
    (["--steps-per-s", "5"], "--steps-per-s: sets the rate of a realtime clock"),
    (["--clock", "realtime", "--steps-per-s", "5", "--episode-start-hold", "1"],
     "--episode-start-hold: holds each episode's first observation"),
])
def test_a_standalone_server_refuses_the_same_naming_its_own_flag(flags, named, capsys):
    with pytest.raises(SystemExit):
        env_server_main(["--env", "mpe2.simple_spread_v3", *flags])
    assert named in capsys.readouterr().err


# ---------------------------------------------------------------------- against the other sections

REALTIME = ("env.clock=realtime", "env.steps_per_s=20")


def refusal(config: str, *overrides: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(REPO / config, list(overrides))
    return str(caught.value)


def test_the_main_job_runs_on_a_realtime_clock_and_its_evaluation_in_the_lockstep():
    config = load_config(REPO / "configs/4agents_ring.yaml", [*REALTIME, "env.eval_clock=lockstep"])
    assert (config.env.clock, config.env.evaluation_clock, config.env.steps_per_s) == ("realtime", "lockstep", 20.0)


def test_a_learner_node_that_needs_joint_rows_is_refused_a_realtime_clock():
    assert "env.clock: expected 'lockstep' with training.mode 'centralized', got 'realtime'" in refusal(
        "configs/tiny_qmix.yaml", *REALTIME)


@pytest.mark.parametrize("clock", [REALTIME, ("env.eval_clock=realtime", "env.steps_per_s=20")])
def test_a_reproducible_run_is_refused_a_realtime_clock(clock):
    field = clock[0].split("=")[0]
    assert f"{field}: expected 'lockstep' with run.reproducible: true, got 'realtime'" in refusal(
        "configs/tiny_ring.yaml", *clock, "run.reproducible=true")


def test_goal_negotiations_episode_hold_is_refused_a_realtime_clock():
    assert "env.episode_start_hold_s: holds each episode's first observation" in refusal(
        "configs/goals_negotiation.yaml", *REALTIME)
