"""The agent node's state machine: the transitions table is the contract."""

import pytest

from agent_node.node_states import ALLOWED_TRANSITIONS, IllegalTransition, NodeState, check_transition


def test_the_happy_path_is_allowed():
    path = ["booting", "connecting", "ready", "running", "averaging", "running", "draining", "stopped"]
    for old, new in zip(path, path[1:]):
        check_transition(NodeState(old), NodeState(new))


@pytest.mark.parametrize("state", [s for s in NodeState if s not in (NodeState.BOOTING, NodeState.DRAINING, NodeState.STOPPED)])
def test_every_live_state_can_drain(state):
    check_transition(state, NodeState.DRAINING)


def test_illegal_transitions_name_what_is_allowed():
    with pytest.raises(IllegalTransition, match=r"ready -> averaging is not an allowed transition \(from ready: draining, running\)"):
        check_transition(NodeState.READY, NodeState.AVERAGING)
    with pytest.raises(IllegalTransition, match="from stopped: none"):
        check_transition(NodeState.STOPPED, NodeState.RUNNING)
    with pytest.raises(IllegalTransition):
        check_transition(NodeState.DRAINING, NodeState.DRAINING)


def test_every_state_is_in_the_table():
    assert set(ALLOWED_TRANSITIONS) == set(NodeState)
