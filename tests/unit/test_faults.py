"""The fault schedule as data: targets by id, role and seeded random draw; the clock; refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.config import load_config
from orchestrator.faults import FaultClock, plan_faults, refused_faults
from protocols.config_errors import ConfigError

TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny_ring.yaml"


def config_with(*events: str, seed: int = 0):
    overrides = [f"faults.schedule.{i}={event}" for i, event in enumerate(events)] + [f"run.seed={seed}"]
    return load_config(TINY, overrides)


def test_targets_by_ids_role_and_seeded_random_draw() -> None:
    config = config_with(
        "{at_s: 5, kind: pause, nodes: [agent_2]}",
        "{at_s: 1, kind: kill, random: {count: 2}}",
        "{at_s: 5, kind: resume, role: agent}",
    )
    faults = plan_faults(config)
    assert [(f.at_s, f.kind, f.chosen_by) for f in faults] == [(1, "kill", "random"), (5, "pause", "nodes"), (5, "resume", "role")]
    assert faults[1].targets == ("agent_2",) and faults[2].targets == ("agent_0", "agent_1", "agent_2")
    drawn = faults[0].targets
    assert len(drawn) == 2 and len(set(drawn)) == 2 and set(drawn) <= {"agent_0", "agent_1", "agent_2"}
    # Same seed, same draw; the draw depends on the run seed.
    assert plan_faults(config_with("{at_s: 5, kind: pause, nodes: [agent_2]}", "{at_s: 1, kind: kill, random: {count: 2}}", "{at_s: 5, kind: resume, role: agent}"))[0].targets == drawn
    draws = {plan_faults(config_with("{at_s: 1, kind: kill, random: {count: 1}}", seed=s))[0].targets for s in range(12)}
    assert len(draws) > 1


def test_clock_fires_in_order_from_the_start() -> None:
    clock = FaultClock(plan_faults(config_with("{at_s: 2, kind: kill, nodes: [agent_0]}", "{at_s: 0.5, kind: pause, role: env_server}")))
    assert clock.due(100.0) == [] and clock.seconds_to_next(100.0) is None  # not started
    clock.start(10.0)
    assert clock.seconds_to_next(10.0) == 0.5
    assert [f.kind for f in clock.due(10.6)] == ["pause"]
    assert clock.due(11.9) == []
    assert [f.kind for f in clock.due(12.0)] == ["kill"] and clock.seconds_to_next(12.0) is None


def test_schema_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match="faults.schedule.0.random.count: expected at most 3"):
        config_with("{at_s: 1, kind: kill, random: {count: 4}}")
    with pytest.raises(ConfigError, match="give one of nodes, role or random"):
        config_with("{at_s: 1, kind: kill, role: agent, nodes: [agent_0]}")
    with pytest.raises(ConfigError, match="a 'resume' names the nodes"):
        config_with("{at_s: 1, kind: resume, random: {count: 1}}")


def test_partitions_are_refused_with_the_reason() -> None:
    problems = refused_faults(config_with("{at_s: 1, kind: kill, nodes: [agent_0]}", "{at_s: 2, kind: restart, nodes: [agent_0]}",
                                          "{at_s: 3, kind: partition, nodes: [agent_1]}", "{at_s: 4, kind: heal}"))
    assert len(problems) == 2
    assert problems[0].startswith("faults.schedule.2.kind: expected one of kill, pause, resume, restart; 'partition' is not executed yet")
    assert "link emulation" in problems[0] and problems[1].startswith("faults.schedule.3.kind")


def test_restarts_are_for_agents_over_ipc() -> None:
    with pytest.raises(ConfigError, match="faults.schedule.0: expected agents to restart, got the env server"):
        config_with("{at_s: 1, kind: restart, nodes: [env]}")
    with pytest.raises(ConfigError, match="faults.restart: expected network.transport 'ipc' for restarts"):
        load_config(TINY, ["faults.restart={policy: on-failure}", "network.transport=tcp"])
    assert load_config(TINY, ["faults.restart={policy: always, max_restarts: 5, backoff_s: 0}"]).faults.restart.max_restarts == 5
