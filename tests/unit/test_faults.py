"""The fault schedule as data: targets by id, role and seeded random draw; the clock; the
network faults (partition, heal, link) resolved to groups, directed edges and their messages;
config errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.config import EXECUTED_FAULTS, REFUSED_FAULTS, FaultEvent, load_config
from orchestrator.faults import FaultClock, plan_faults, refused_faults
from protocols.codec import messages as m
from protocols.codec import wire
from protocols.run.config_errors import ConfigError
from protocols.codec.errors import FieldError
from protocols.net.links import LinkConfig

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


def test_every_kind_of_the_schema_is_executed_none_refused() -> None:
    config = config_with("{at_s: 1, kind: kill, nodes: [agent_0]}", "{at_s: 2, kind: restart, nodes: [agent_0]}",
                         "{at_s: 3, kind: partition, nodes: [agent_1]}", "{at_s: 4, kind: heal}",
                         "{at_s: 5, kind: link, nodes: [agent_2], link: {loss: 0.5}}")
    assert refused_faults(config) == [] and REFUSED_FAULTS == {}
    assert set(EXECUTED_FAULTS) == set(FaultEvent.model_fields["kind"].annotation.__args__)


RING4 = Path(__file__).resolve().parents[2] / "configs" / "faults_ring.yaml"  # agents on a ring 0-1-2-3-0


def ring4_with(*events: str):
    return load_config(RING4, [f"faults.schedule=[{', '.join(events)}]"])


def test_partition_of_targets_cuts_them_off_from_every_other_node() -> None:
    (fault,) = plan_faults(ring4_with("{at_s: 1, kind: partition, nodes: [agent_2]}"))
    assert fault.groups == (("agent_2",), ("env", "agent_0", "agent_1", "agent_3"))
    assert fault.recipients(["env", "agent_0", "agent_1", "agent_2", "agent_3"]) == ["env", "agent_0", "agent_1", "agent_2", "agent_3"]
    assert fault.network_message() == m.Partition(groups=[["agent_2"], ["env", "agent_0", "agent_1", "agent_3"]], position=0)
    (by_role,) = plan_faults(ring4_with("{at_s: 1, kind: partition, role: env_server}"))
    assert by_role.groups == (("env",), ("agent_0", "agent_1", "agent_2", "agent_3")) and by_role.chosen_by == "role"


def test_partition_groups_leave_other_nodes_alone() -> None:
    (fault,) = plan_faults(ring4_with("{at_s: 1, kind: partition, groups: [[agent_0, agent_1], [agent_2]]}"))
    assert fault.chosen_by == "groups" and fault.groups == (("agent_0", "agent_1"), ("agent_2",))
    # agent_3 and env are in no group: their links are not touched, they get no message.
    assert fault.recipients(["env", "agent_0", "agent_1", "agent_2", "agent_3"]) == ["agent_0", "agent_1", "agent_2"]


def test_heal_goes_to_every_node_for_all_links_or_the_named_ones() -> None:
    everything, named = plan_faults(ring4_with("{at_s: 1, kind: heal}", "{at_s: 2, kind: heal, nodes: [agent_2]}"))
    every_node = ["env", "agent_0", "agent_1", "agent_2", "agent_3"]
    assert everything.targets == () and everything.recipients(every_node) == every_node
    assert everything.network_message() == m.Heal(nodes=[], position=0)
    assert named.recipients(every_node) == every_node and named.network_message() == m.Heal(nodes=["agent_2"], position=1)


def test_link_change_by_edges_and_by_node_resolves_the_directed_links_of_the_run() -> None:
    by_edge, by_node = plan_faults(ring4_with(
        "{at_s: 1, kind: link, edges: [[agent_0, agent_3]], link: {delay_s: 0.02, loss: 0.2}}",
        "{at_s: 2, kind: link, nodes: [agent_1], link: {}}",
    ))
    assert by_edge.edges == (("agent_0", "agent_3"), ("agent_3", "agent_0")) and by_edge.chosen_by == "edges"
    assert by_edge.recipients(["env", "agent_0", "agent_1", "agent_2", "agent_3"]) == ["agent_0", "agent_3"]
    message = by_edge.network_message()
    assert message.link == {"delay_s": 0.02, "loss": 0.2} and LinkConfig.model_validate(message.link) == by_edge.link
    # agent_1 on the ring 0-1-2-3: its two neighbours and the env server, both directions.
    assert set(by_node.edges) == {("agent_1", "agent_0"), ("agent_0", "agent_1"), ("agent_1", "agent_2"), ("agent_2", "agent_1"),
                                  ("agent_1", "env"), ("env", "agent_1")}
    assert by_node.link.is_ideal and by_node.network_message().link == {}


def test_network_messages_cross_the_wire_typed() -> None:
    for message in (m.Partition(groups=[["agent_0"], ["agent_1", "env"]], position=3), m.Heal(nodes=["agent_0"]),
                    m.SetLink(edges=[["agent_0", "agent_1"]], link={"loss": 0.5, "delay_s": 0.01}, position=1)):
        frames = wire.encode(message, sender="orchestrator", run_id="r", seq=1, identities=())
        assert wire.decode(frames).message == message
    with pytest.raises(FieldError, match="control.partition.groups"):
        m.from_body("control.partition", {"groups": "agent_0"})


@pytest.mark.parametrize("event, message", [
    ("{at_s: 1, kind: partition}", "faults.schedule.0.groups: a 'partition' fault needs groups of node ids, or targets"),
    ("{at_s: 1, kind: partition, groups: [[agent_0]]}", "faults.schedule.0.groups: expected at least two non-empty groups"),
    ("{at_s: 1, kind: partition, groups: [[agent_0, agent_1], [agent_1]]}", "faults.schedule.0.groups: node 'agent_1' is in groups 0 and 1"),
    ("{at_s: 1, kind: partition, groups: [[agent_0], [agent_1]], nodes: [agent_2]}", "faults.schedule.0.groups: a partition names groups or targets"),
    ("{at_s: 1, kind: partition, groups: [[agent_0], [agent_9]]}", "faults.schedule.0.groups.1.0: expected a node id (env, agent_0 .. agent_3), got unknown 'agent_9'"),
    ("{at_s: 1, kind: link, nodes: [agent_0]}", "faults.schedule.0.link: a 'link' fault needs the new link profile"),
    ("{at_s: 1, kind: link, link: {loss: 0.1}}", "faults.schedule.0.edges: a 'link' fault needs edges"),
    ("{at_s: 1, kind: link, edges: [[agent_0, agent_2]], link: {}}",
     "faults.schedule.0.edges.0: expected a link of the run (a ring topology edge, or an agent's link to env), got [agent_0, agent_2]"),
    ("{at_s: 1, kind: link, edges: [[agent_0, agent_1]], link: {loss: 2}}", "faults.schedule.0.link.loss: is a probability and must be in [0, 1], got 2"),
    ("{at_s: 1, kind: link, edges: [[agent_0, agent_1]], link: {delay_ms: 5}}", "faults.schedule.0.link.delay_ms"),
    ("{at_s: 1, kind: kill, nodes: [agent_0], groups: [[agent_0], [agent_1]]}", "faults.schedule.0.groups: only a 'partition' fault takes groups"),
    ("{at_s: 1, kind: pause, nodes: [agent_0], link: {}}", "faults.schedule.0.link: only a 'link' fault takes a link profile"),
    ("{at_s: 1, kind: heal, random: {count: 1}}", "faults.schedule.0.random: a 'heal' names the nodes"),
])
def test_network_fault_errors_name_the_field(event: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        ring4_with(event)
    assert message in str(error.value), str(error.value)


def test_restarts_cover_agents_and_the_env_server_over_ipc_or_tcp() -> None:
    # The env server may be restarted too (it resumes the run: env_server/resume.py).
    assert plan_faults(config_with("{at_s: 1, kind: restart, nodes: [env]}"))[0].targets == ("env",)
    assert plan_faults(config_with("{at_s: 1, kind: restart, role: env_server}"))[0].targets == ("env",)
    assert load_config(TINY, ["faults.restart={policy: on-failure}"]).faults.restart.roles == ["agent", "learner"], "not env"
    both = load_config(TINY, ["faults.restart={policy: on-failure, roles: [agent, env_server]}"])
    assert both.faults.restart.roles == ["agent", "env_server"]
    for roles, why in (("[orchestrator]", "roles.0"), ("[agent, agent]", "at most once"), ("[]", "at least one of")):
        with pytest.raises(ConfigError, match=why):
            load_config(TINY, [f"faults.restart={{policy: on-failure, roles: {roles}}}"])
    # Over tcp too: a restarted agent's neighbours are told its new endpoint, the agents the env server's.
    load_config(TINY, ["faults.schedule.0={at_s: 1, kind: restart, nodes: [env]}", "network.transport=tcp"])
    load_config(TINY, ["faults.restart={policy: on-failure}", "network.transport=tcp"])
    assert load_config(TINY, ["faults.restart={policy: always, max_restarts: 5, backoff_s: 0}"]).faults.restart.max_restarts == 5


def test_a_fault_is_set_at_a_time_or_at_a_step_exactly_one() -> None:
    faults = plan_faults(config_with("{at_step: 40, kind: pause, nodes: [agent_1]}", "{at_s: 3, kind: resume, nodes: [agent_1]}"))
    assert [(f.kind, f.at_s, f.at_step) for f in faults] == [("resume", 3, None), ("pause", None, 40)]
    assert faults[1].describe().startswith("@step 40 pause agent_1")
    with pytest.raises(ConfigError, match=r"faults.schedule.0.*exactly one of the two; got both"):
        config_with("{at_s: 1, at_step: 10, kind: kill, nodes: [agent_0]}")
    with pytest.raises(ConfigError, match=r"faults.schedule.0.*exactly one of the two; got neither"):
        config_with("{kind: kill, nodes: [agent_0]}")
    with pytest.raises(ConfigError, match="faults.schedule.0.at_step"):
        config_with("{at_step: -1, kind: kill, nodes: [agent_0]}")


def test_a_step_the_env_server_never_reaches_is_refused() -> None:
    steps = config_with().run.steps
    config_with(f"{{at_step: {steps - 1}, kind: kill, nodes: [agent_0]}}")  # the last step is reached
    with pytest.raises(ConfigError, match=rf"faults.schedule.0.at_step: expected a training step below run.steps \({steps}\).*got {steps}"):
        config_with(f"{{at_step: {steps}, kind: kill, nodes: [agent_0]}}")


def test_step_faults_fire_when_the_reported_env_step_reaches_them() -> None:
    clock = FaultClock(plan_faults(config_with(
        "{at_step: 30, kind: heal}",
        "{at_step: 10, kind: partition, nodes: [agent_0]}",
        "{at_s: 2, kind: pause, nodes: [agent_2]}",
        "{at_step: 10, kind: kill, nodes: [agent_1]}",
    )))
    assert clock.due(100.0, env_step=50) == []  # not started: nothing fires, whatever the step
    clock.start(10.0)
    assert clock.due(10.5, env_step=None) == []  # no status from the env server yet
    assert clock.due(10.6, env_step=9) == []
    # Step faults never set the loop's timeout: only the time fault's due time counts.
    assert clock.seconds_to_next(10.6) == pytest.approx(1.4)
    # A report past the step fires every fault up to it, in step then schedule order.
    assert [(f.kind, f.at_step) for f in clock.due(10.7, env_step=12)] == [("partition", 10), ("kill", 10)]
    assert clock.due(10.8, env_step=29) == []
    assert [f.kind for f in clock.due(12.0, env_step=29)] == ["pause"]  # the time fault, on its own clock
    assert [f.kind for f in clock.due(12.1, env_step=31)] == ["heal"]
    assert clock.pending == [] and clock.pending_steps == [] and clock.seconds_to_next(13.0) is None
    assert clock.run_s(13.0) == 3.0


def test_a_resumed_run_goes_on_with_the_step_faults_not_fired_and_refuses_an_unfired_time() -> None:
    from orchestrator.faults import fired_positions, unresumable_faults

    config = config_with("{at_step: 10, kind: partition, nodes: [agent_1]}", "{at_s: 2, kind: pause, nodes: [agent_2]}",
                         "{at_step: 30, kind: heal}", "{at_s: 9, kind: resume, nodes: [agent_2]}")
    planned = plan_faults(config)
    events = [{"event": "started"}, {"event": "fault", "kind": "pause", "position": 1},
              {"event": "fault", "kind": "partition", "position": 0}, {"event": "fault_applied", "position": 0},
              {"event": "fault", "kind": "partition", "position": 0}]
    assert fired_positions(events) == [1, 0]  # in the order fired, each once; only `fault` events count
    (problem,) = unresumable_faults(planned, fired_positions(events))
    assert problem.startswith("faults.schedule.3 (resume at_s 9) has not fired")
    assert unresumable_faults(planned, [1, 0, 3]) == []  # the heal at a step resumes faithfully
