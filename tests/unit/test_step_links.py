"""Talking in env steps (protocols/engines/step_links.py): the delivery rule, marks, loss and duplicates
in the step clock, and the simulator (protocols/sim/netsim.py `StepNetwork`) driving real engines."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from protocols.engines.flooding import FloodEngine, FloodRequest, FloodTable
from protocols.engines.hindsight import HindsightRows
from protocols.net.links import LinkConfig, LinkModel
from protocols.sim.netsim import StepNetwork
from protocols.engines.step_links import (
    TRAINING_CLOCK, PeerStepMark, StepInbox, StepLinkModel, StepOutbox, evaluation_clock, peer_message_types,
    step_link_seed,
)


def link(**fields) -> LinkConfig:
    return LinkConfig(**fields)


def send_and_mark(outbox: StepOutbox, inbox: StepInbox, step: int, messages: list, clock: str = TRAINING_CLOCK) -> list[int]:
    """`messages` sent by a to b during `step`; returns the due steps of the copies that left."""
    outbox.queue(("b", message) for message in messages)
    due = []
    for destination, message in outbox.close_step(clock, step, ["b"]):
        assert destination == "b"
        if isinstance(message, PeerStepMark):
            inbox.on_mark("a", message)
            due = message.due
        else:
            inbox.on_message("a", message)
    return due


def test_a_message_sent_at_step_t_is_due_at_t_plus_d_never_earlier_never_later():
    outbox, inbox = StepOutbox("a", 7, lambda src, dst: link(delay_steps=3)), StepInbox()
    assert send_and_mark(outbox, inbox, 10, ["hello"]) == [13]
    for step in (11, 12):
        assert inbox.take_due(TRAINING_CLOCK, step) == []
    assert inbox.take_due(TRAINING_CLOCK, 13) == [("a", "hello")]
    assert inbox.take_due(TRAINING_CLOCK, 14) == [] and inbox.late == 0


def test_marks_are_sent_every_step_even_without_messages_and_say_which_step_they_close():
    outbox = StepOutbox("a", 0, lambda src, dst: link(delay_steps=1))
    outgoing = outbox.close_step(TRAINING_CLOCK, 4, ["b", "c"])
    assert outgoing == [("b", PeerStepMark(TRAINING_CLOCK, 4, [])), ("c", PeerStepMark(TRAINING_CLOCK, 4, []))]


def test_the_receiver_waits_for_the_marks_of_the_step_before_from_each_expected_sender():
    inbox = StepInbox()
    assert inbox.missing_marks(TRAINING_CLOCK, 5, ["a", "c"]) == ["a", "c"]
    inbox.on_mark("a", PeerStepMark(TRAINING_CLOCK, 4, []))
    assert inbox.missing_marks(TRAINING_CLOCK, 5, ["a", "c"]) == ["c"]
    inbox.on_mark("c", PeerStepMark(TRAINING_CLOCK, 4, []))
    assert inbox.missing_marks(TRAINING_CLOCK, 5, ["a", "c"]) == []
    # A mark of another clock (an evaluation) does not stand in for the training one.
    assert inbox.missing_marks(evaluation_clock(100), 1, ["a"]) == ["a"]


def test_delivery_order_is_due_step_then_sender_then_arrival_whatever_the_arrival_order():
    inbox = StepInbox()
    inbox.on_message("z", "z-first")
    inbox.on_message("z", "z-second")
    inbox.on_mark("z", PeerStepMark(TRAINING_CLOCK, 3, [5, 4]))
    inbox.on_message("a", "a-only")
    inbox.on_mark("a", PeerStepMark(TRAINING_CLOCK, 3, [5]))
    assert inbox.take_due(TRAINING_CLOCK, 5) == [("z", "z-second"), ("a", "a-only"), ("z", "z-first")]


def test_loss_and_duplicates_are_decided_by_the_sender_in_the_step_clock_from_the_links_seed():
    config = link(delay_steps=2, loss=0.3, duplicate=0.2)
    model = StepLinkModel(config, step_link_seed(1, "a", "b"))
    again = StepLinkModel(config, step_link_seed(1, "a", "b"))
    fates = [model.decide(step) for step in range(400)]
    assert fates == [again.decide(step) for step in range(400)]  # seeded: the same fates
    lost = sum(not fate for fate in fates)
    twice = sum(len(fate) == 2 for fate in fates)
    assert 80 < lost < 160 and 40 < twice < 100
    assert all(due == step + 2 for step, fate in enumerate(fates) for due in fate)
    assert model.counters.dropped_loss == lost and model.counters.duplicated == twice


def test_lost_messages_are_not_sent_and_duplicates_are_sent_twice():
    outbox, inbox = StepOutbox("a", 3, lambda src, dst: link(delay_steps=1, loss=0.5, duplicate=0.5)), StepInbox()
    total_due = sum(len(send_and_mark(outbox, inbox, step, [f"m{step}"])) for step in range(200))
    counters = outbox.model_for("b").counters
    assert total_due == counters.delivered == counters.sent - counters.dropped_loss + counters.duplicated
    assert len(inbox.take_due(TRAINING_CLOCK, 1000)) == total_due and inbox.unpaired == 0


def test_a_drawn_delay_is_rounded_to_whole_steps_and_is_never_below_one():
    model = StepLinkModel(link(delay_steps=1.5, delay_distribution="normal", delay_steps_std=2.0), 5)
    dues = [due - 100 for _ in range(500) for due in model.decide(100)]
    assert min(dues) == 1 and max(dues) > 3 and all(float(d).is_integer() for d in dues)


def test_a_partitioned_link_drops_messages_but_not_its_marks():
    outbox, inbox = StepOutbox("a", 0, lambda src, dst: link(delay_steps=1), blocked=lambda src, dst: True), StepInbox()
    assert send_and_mark(outbox, inbox, 0, ["cut off"]) == []
    assert inbox.missing_marks(TRAINING_CLOCK, 1, ["a"]) == []  # the mark came: the receiver does not wait
    assert outbox.model_for("b").counters.dropped_partition == 1


def test_a_message_whose_mark_came_after_its_step_is_delivered_at_the_next_step_and_counted_late():
    inbox = StepInbox()
    inbox.on_message("a", "slow")
    inbox.on_mark("a", PeerStepMark(TRAINING_CLOCK, 9, [10]))
    assert inbox.take_due(TRAINING_CLOCK, 12) == [("a", "slow")] and inbox.late == 1


def test_messages_in_flight_when_an_evaluation_ends_are_dropped_and_training_ones_kept():
    inbox = StepInbox()
    inbox.on_message("a", "eval table")
    inbox.on_mark("a", PeerStepMark(evaluation_clock(500), 24, [27]))
    inbox.on_message("a", "training share")
    inbox.on_mark("a", PeerStepMark(TRAINING_CLOCK, 499, [503]))
    inbox.end_clocks_except(TRAINING_CLOCK)
    assert inbox.dropped_with_clock == 1 and inbox.take_due(TRAINING_CLOCK, 503) == [("a", "training share")]


def test_a_restarted_senders_messages_without_a_mark_are_dropped_when_its_next_mark_comes():
    inbox = StepInbox()
    inbox.on_message("a", "from the old life")
    inbox.on_message("a", "new")
    inbox.on_mark("a", PeerStepMark(TRAINING_CLOCK, 30, [31]))
    assert inbox.take_due(TRAINING_CLOCK, 31) == [("a", "new")] and inbox.unpaired == 1


@pytest.mark.parametrize("fields, expected", [
    ({"delay_steps": 0}, "delay_steps must be >= 1"),
    ({"delay_steps": 2, "delay_s": 0.1}, "delay_s: wall-clock link settings"),
    ({"delay_steps": 2, "jitter_s": 0.1, "in_order": True}, "jitter_s, in_order: wall-clock"),
    ({"delay_steps": 2, "delay_distribution": "uniform"}, "needs delay_steps_std > 0"),
    ({"delay_steps_std": 1.0}, "set delay_steps too"),
])
def test_link_settings_in_steps_refuse_what_cannot_work_naming_the_field(fields, expected):
    with pytest.raises(ValidationError, match=expected):
        LinkConfig(**fields)


def test_a_trace_in_steps_is_read_in_steps(tmp_path):
    trace = tmp_path / "steps.txt"
    trace.write_text("2\n# a comment\n6\n")
    model = StepLinkModel(link(delay_steps=4, delay_distribution="trace", delay_trace=str(trace)), 0)
    assert {due - 10 for _ in range(100) for due in model.decide(10)} == {2, 6}


def test_the_simulator_floods_a_ring_in_steps_and_every_node_agrees():
    ring = {f"n{i}": [f"n{(i - 1) % 4}", f"n{(i + 1) % 4}"] for i in range(4)}
    engines = {node: FloodEngine(node, round_timeout_s=6) for node in ring}
    network = StepNetwork(engines, ring, run_seed=3, config_for=lambda src, dst: link(delay_steps=2))
    for index, node in enumerate(sorted(ring)):
        request = FloodRequest("train:0", np.array([float(index)]), ring[node], team_size=4, rounds=2)
        network.begin(node, engines[node].start, request, 0.0)
    network.run_steps(10)
    # Two rounds of two steps each: every node knows every value at step 4, and not before.
    assert all(engine.done and engine.result.complete for engine in engines.values())
    assert {engine.result.duration_s for engine in engines.values()} == {4.0}
    assert min(step for step, *_ in network.deliveries) == 2


def test_a_link_change_takes_effect_at_the_next_step_and_the_links_stream_goes_on():
    outbox, inbox = StepOutbox("a", 1, lambda src, dst: link(delay_steps=2)), StepInbox()
    assert send_and_mark(outbox, inbox, 0, ["m"]) == [2]
    outbox.set_config("b", link(delay_steps=7, loss=0.0))
    assert send_and_mark(outbox, inbox, 1, ["m"]) == [8]
    assert outbox.model_for("b").counters.sent == 2  # counted on, not restarted


# ---------------------------------------------------------------- faults on some message types only

def table(round_: int) -> FloodTable:
    return FloodTable(key="train:0", round=round_, nodes=["a"], values=np.zeros((1, 1), dtype=np.float32))


def rows(episode: int) -> HindsightRows:
    empty = np.zeros((0, 2), dtype=np.float32)
    ints = np.zeros(0, dtype=np.int64)
    return HindsightRows(episode=f"train:{episode}", obs=empty, actions=ints, next_obs=empty,
                         terminated=np.zeros(0, dtype=bool), pursued=ints, reached=ints)


def test_a_link_limited_to_one_message_type_loses_only_that_type_and_the_others_come_the_next_step():
    outbox, inbox = StepOutbox("a", 0, lambda src, dst: link(delay_steps=3, loss=1.0, messages=("flood.table",))), StepInbox()
    for step in range(20):
        assert send_and_mark(outbox, inbox, step, [table(step), rows(step)]) == [step + 1]  # the rows only, next step
    delivered = inbox.take_due(TRAINING_CLOCK, 100)
    assert [message.episode for _, message in delivered] == [f"train:{step}" for step in range(20)]
    counters, metrics = outbox.model_for("b").counters, outbox.metrics()
    assert (counters.sent, counters.delivered, counters.dropped_loss) == (40, 20, 20)
    assert metrics["talk/a_to_b/passed_clean"] == 20 and metrics["talk/a_to_b/dropped_loss"] == 20
    assert metrics["talk_by_type/a_to_b/flood.table/dropped_loss"] == 20
    assert (metrics["talk_by_type/a_to_b/hindsight.rows/sent"], metrics["talk_by_type/a_to_b/hindsight.rows/dropped_loss"]) == (20, 0)


@pytest.mark.parametrize("faults", [
    {"loss": 0.3},
    {"loss": 0.2, "duplicate": 0.3, "delay_steps": 2.0, "delay_distribution": "normal", "delay_steps_std": 1.5},
    {"loss_model": "gilbert_elliott", "ge_p_good_to_bad": 0.2, "ge_p_bad_to_good": 0.3},
])
def test_the_named_messages_fare_as_on_the_same_link_carrying_them_alone(faults):
    """Messages of other types take no draws: the named ones' fates do not depend on them."""
    fields = {"delay_steps": 1.0, **faults}
    filtered = StepOutbox("a", 5, lambda src, dst: link(**fields, messages=("hindsight.rows",)))
    alone = StepOutbox("a", 5, lambda src, dst: link(**fields))
    tables_before = np.random.default_rng(0).integers(0, 4, size=300)  # a varying number of tables before each rows
    fates_filtered, fates_alone = [], []
    for step, count in enumerate(tables_before):
        due = send_and_mark(filtered, StepInbox(), step, [*map(table, range(count)), rows(step)])
        assert due[:count] == [step + 1] * count  # the tables: each once, at the next step
        fates_filtered.append(due[count:])
        fates_alone.append(send_and_mark(alone, StepInbox(), step, [rows(step)]))
    assert fates_filtered == fates_alone
    assert 0 < sum(not fate for fate in fates_alone) < len(fates_alone)  # some lost, some not: the test can fail
    # The same link drawing for every message loses other rows (the tables take draws between them).
    unfiltered = StepOutbox("a", 5, lambda src, dst: link(**fields))
    fates_unfiltered = [send_and_mark(unfiltered, StepInbox(), step, [*map(table, range(count)), rows(step)])[-1:]
                        for step, count in enumerate(tables_before)]
    assert [bool(fate) for fate in fates_unfiltered] != [bool(fate) for fate in fates_alone]


def test_a_link_change_keeps_the_filters_counters_and_may_change_the_filter():
    outbox, inbox = StepOutbox("a", 2, lambda src, dst: link(delay_steps=1, loss=1.0, messages=("flood.table",))), StepInbox()
    assert send_and_mark(outbox, inbox, 0, [table(0), rows(0)]) == [1]
    outbox.set_config("b", link(delay_steps=1, loss=1.0, messages=("hindsight.rows",)))
    assert send_and_mark(outbox, inbox, 1, [table(1), rows(1)]) == [2]
    assert [message.round for _, message in inbox.take_due(TRAINING_CLOCK, 2) if isinstance(message, FloodTable)] == [1]
    model = outbox.model_for("b")
    assert model.passed_clean == 2 and model.counters.sent == 4 and model.by_type["flood.table"].dropped_loss == 1


def test_a_partition_cuts_every_message_type_whatever_the_filter():
    outbox = StepOutbox("a", 0, lambda src, dst: link(delay_steps=1, loss=1.0, messages=("flood.table",)),
                        blocked=lambda src, dst: True)
    assert send_and_mark(outbox, StepInbox(), 0, [table(0), rows(0)]) == []
    assert outbox.model_for("b").counters.dropped_partition == 2


def test_only_links_in_steps_limit_faults_to_message_types():
    with pytest.raises(ValueError, match="messages: only a link whose delay counts env steps"):
        LinkModel(link(loss=0.3, messages=("flood.table",)), 0)
    assert StepLinkModel(link(loss=0.3, messages=("flood.table",)).counting_steps(), 0).decide(4, "hindsight.rows") == [5]


@pytest.mark.parametrize("messages, expected", [
    ((), "messages: expected at least one message type"),
    (("flood.table", "flood.table"), "messages: expected each message type once, got flood.table more than once"),
])
def test_a_message_filter_names_some_types_once_each(messages, expected):
    with pytest.raises(ValidationError, match=expected):
        LinkConfig(delay_steps=1, loss=0.5, messages=messages)


def test_the_message_types_a_filter_may_name_are_the_protocols_not_the_control_planes_or_the_marks():
    known = peer_message_types()
    assert {"flood.table", "hindsight.rows", "consensus.share"} <= set(known)
    assert not {"peer.step_mark", "env.action", "membership.heartbeat", "control.set_link"} & set(known)
