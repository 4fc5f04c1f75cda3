"""What neighbours give a newcomer (protocols/engines/bootstrap.py): one request to the live neighbours,
the mean of the shares that come back by the deadline, and the neighbour's side, on the wire."""

from __future__ import annotations

import numpy as np
import pytest

from protocols.codec import wire
from protocols.engines.bootstrap import BootstrapRequest, BootstrapShare, NewcomerBootstrap, answer


def share(value: float, joined_at: int = 40) -> BootstrapShare:
    return BootstrapShare(joined_at, {"w": np.full((2, 3), value, np.float32), "b": np.full(3, value, np.float32)})


def test_the_newcomer_asks_every_live_neighbour_and_takes_the_mean_of_their_policies():
    bootstrap = NewcomerBootstrap(timeout=1.0)
    sent = bootstrap.start(40, ["agent_2", "agent_0"], now=10.0)
    assert sent == [("agent_0", BootstrapRequest(40)), ("agent_2", BootstrapRequest(40))]
    bootstrap.on_message("agent_0", share(1.0), now=10.1)
    assert not bootstrap.done
    bootstrap.on_message("agent_2", share(3.0), now=10.2)
    assert bootstrap.done and bootstrap.finished_at == 10.2
    result = bootstrap.result
    assert result["w"].dtype == np.float32 and np.all(result["w"] == 2.0) and np.all(result["b"] == 2.0)
    assert bootstrap.metrics() == {"consensus/bootstrap_shares": 2.0, "consensus/bootstrap_missing": 0.0,
                                   "consensus/bootstrap_rejected": 0.0}


def test_at_the_deadline_it_takes_what_came_and_a_neighbour_that_goes_down_is_not_waited_for():
    bootstrap = NewcomerBootstrap(timeout=4)  # in env steps, when talking takes them
    bootstrap.start(40, ["agent_0", "agent_1", "agent_2"], now=40)
    bootstrap.on_neighbour_down("agent_1", now=41)
    bootstrap.on_message("agent_0", share(5.0), now=42)
    bootstrap.on_timer(43)
    assert not bootstrap.done and bootstrap.next_deadline() == 44
    bootstrap.on_timer(44)
    assert bootstrap.done and np.all(bootstrap.result["w"] == 5.0)
    assert bootstrap.metrics()["consensus/bootstrap_missing"] == 1.0  # agent_2 never answered
    bootstrap.on_message("agent_2", share(9.0), now=45)  # too late: changes nothing
    assert np.all(bootstrap.result["w"] == 5.0)


def test_nobody_answering_leaves_the_newcomer_as_it_is_and_stale_or_foreign_shares_are_ignored():
    bootstrap = NewcomerBootstrap(timeout=1.0)
    bootstrap.start(40, ["agent_0", "agent_1"], now=0.0)
    bootstrap.on_message("agent_0", share(1.0, joined_at=12), now=0.1)  # an answer to an older request
    bootstrap.on_message("agent_5", share(1.0), now=0.2)  # not asked
    bootstrap.on_timer(1.0)
    assert bootstrap.done and bootstrap.result is None


def test_a_share_of_another_shape_is_dropped_and_counted():
    bootstrap = NewcomerBootstrap(timeout=1.0)
    bootstrap.start(40, ["agent_0", "agent_1"], now=0.0)
    bootstrap.on_message("agent_0", share(1.0), now=0.1)
    odd = BootstrapShare(40, {"w": np.zeros((3, 3), np.float32), "b": np.zeros(3, np.float32)})
    bootstrap.on_message("agent_1", odd, now=0.2)
    assert bootstrap.done and bootstrap.metrics()["consensus/bootstrap_rejected"] == 1.0 and np.all(bootstrap.result["w"] == 1.0)


def test_no_neighbour_to_ask_is_done_at_once():
    bootstrap = NewcomerBootstrap(timeout=1.0)
    assert bootstrap.start(40, [], now=0.0) == [] and bootstrap.done and bootstrap.result is None


def test_the_neighbour_answers_with_its_parameters_and_both_messages_cross_the_wire():
    params = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    reply = answer(BootstrapRequest(40), params)
    for message in (BootstrapRequest(40), reply):
        decoded = wire.decode(wire.encode(message, sender="agent_0", run_id="r", seq=1))
        assert type(decoded.message) is type(message)
    assert np.array_equal(reply.tensors["w"], params["w"]) and reply.joined_at == 40
    with pytest.raises(ValueError):
        NewcomerBootstrap(timeout=0)
