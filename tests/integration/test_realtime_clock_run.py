"""The realtime clock (`env.clock: realtime`, env_server/realtime.py) over real sockets and processes.

- A standalone server at 10 steps/s with a lockstep deadline of a minute: a client that stops
  answering does not hold the env (the other client sees every step, one after the other, with
  the silent one named in `missing`); when it answers its newest observation, the step after
  plays it, and once it answers on time it is no longer missing.
- An orchestrated run where one agent is paused (SIGSTOP, the fault schedule's `pause`) for a
  second and another is a straggler on purpose (`agents.act_delay_s`: 80 ms before each answer,
  against a step every 50 ms): the env server stepped on (its training steps went on during the
  pause), both agents' late actions are counted in `env/late_actions/<agent>` and their action
  age in `env/action_age_steps_max/<agent>` (the slow one's stays small: it acts on its newest
  observation), and the third lost no step to them.
"""

from __future__ import annotations

import json

import pytest

from protocols.codec import messages as m
from tests.integration.lockstep_paths import LockstepClient
from tests.integration.test_orchestrate import finished_ok, node_metrics, orchestrate, read_events

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SILENT_STEPS = 5


def newest_observation(client: LockstepClient) -> m.EnvObservation:
    """The newest of the observations waiting for `client` (what a node that fell behind answers)."""
    newest = client.expect(m.EnvObservation)
    while (more := client.channel.wait_for(object, timeout_s=0.01)) is not None:
        assert isinstance(more, m.EnvObservation), more
        newest = more
    return newest


def test_a_silent_client_does_not_hold_a_realtime_env(env_server, hub, lockstep_transport):
    endpoint = env_server(
        "--env", "mpe2.simple_spread_v3", "--kwargs", json.dumps({"N": 2, "max_cycles": 100}),
        "--clock", "realtime", "--steps-per-s", "10", "--step-deadline", "60", "--transport", lockstep_transport,
    )
    prompt, straggler = (LockstepClient(hub, endpoint, f"agent_{i}", i, lockstep_transport) for i in range(2))
    for client in (prompt, straggler):
        client.channel.send(m.EnvReset())
    assert prompt.expect(m.EnvObservation).step == 0
    assert straggler.expect(m.EnvObservation).step == 0
    prompt.act(0)
    straggler.act(0)

    # The straggler stops answering; the lockstep would wait 60 s for it at each step.
    seen = []
    for step in range(1, SILENT_STEPS + 2):
        observation = prompt.expect(m.EnvObservation, timeout_s=20)
        seen.append((observation.step, "agent_1" in observation.missing))
        prompt.act(observation.step)
    assert [step for step, _ in seen] == list(range(1, SILENT_STEPS + 2)), "a step at a time, none skipped"
    assert all(straggler_missing for _, straggler_missing in seen[1:]), seen

    # It answers the newest observation it has, late: played at the step after it (its action
    # is its own again), still missing there, then on time once it keeps up.
    late = newest_observation(straggler)
    assert late.step >= SILENT_STEPS
    straggler.act(late.step, value=3)
    on_time = False
    for _ in range(20):
        observation = prompt.expect(m.EnvObservation, timeout_s=20)
        prompt.act(observation.step)
        mine = newest_observation(straggler)
        straggler.act(mine.step)
        if observation.step > late.step + 2 and "agent_1" not in observation.missing:
            on_time = True
            break
    assert on_time, "the straggler answered every step since, and is still named missing"




@pytest.mark.long  # ~25 s on a loaded 2-core machine, most of it the start of 4 processes
@pytest.mark.timeout(180)
def test_a_paused_agent_and_a_slow_one_are_late_and_the_run_goes_on_without_them(tmp_path):
    run_dir = tmp_path / "run"
    process = orchestrate(
        "up", "configs/tiny_ring.yaml", "--run-dir", str(run_dir),
        "--set", "run.steps=120", "--set", "env.eval_every_steps=60", "--set", "env.kwargs.max_cycles=40",
        "--set", "env.clock=realtime",
        "--set", "env.steps_per_s=20", "--set", "protocols.control.status_every_s=0.25",
        "--set", "faults.schedule=[{at_s: 1.0, kind: pause, nodes: [agent_1]}, {at_s: 2.5, kind: resume, nodes: [agent_1]}]",
        "--set", "agents.act_delay_s.agent_2=0.08",
    )  # fmt: skip
    finished_ok(process, timeout_s=150)
    faults = {e["kind"]: e for e in read_events(run_dir) if e["event"] == "fault"}
    assert set(faults) == {"pause", "resume"}, faults

    rows = node_metrics(run_dir, "env")
    last = next(row for row in reversed(rows) if "env/late_actions/agent_1" in row)
    late = {agent: last[f"env/late_actions/{agent}"] for agent in ("agent_0", "agent_1", "agent_2")}
    oldest = max(row.get("env/action_age_steps_max/agent_1", 0.0) for row in rows)
    # 1.5 s paused at 20 steps/s is 30 steps (fewer where the loaded server slipped): the env
    # went on without agent_1, replaying its last action, older with every step.
    assert late["agent_1"] >= 10 and late["agent_1"] > late["agent_0"], late
    assert oldest >= 10, oldest
    # 80 ms per answer against 50 ms per step: agent_2 is late at most steps, but it answers only
    # the newest observation it has, so its actions stay a few steps old (answering every one in
    # turn, the age would grow by ~3 steps in 8, to ~45 by the end).
    assert late["agent_2"] >= 20 and late["agent_2"] > late["agent_0"], late
    slowest = max(row.get("env/action_age_steps_max/agent_2", 0.0) for row in rows)
    assert 1 <= slowest <= 8, slowest
    assert last["step"] == 120 or rows[-1]["step"] == 120
    # The evaluations (steps 60 and 120: 40 steps each, on the same clock) likewise: answering
    # every observation in turn, agent_2 would end 15 steps behind in each.
    evaluations = [row for row in rows if "eval/action_age_max" in row]
    assert len(evaluations) == 2 and all(row["eval/late_actions"] >= 10 for row in evaluations), evaluations
    assert all(1 <= row["eval/action_age_max"] <= 8 for row in evaluations), evaluations
