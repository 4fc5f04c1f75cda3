"""Packed lockstep bodies (protocols/codec/packed.py), their envelope (protocols/codec/wire.py) and the
channel that packs and unpacks them (protocols/net/transport.py), on real sockets where it matters.

What they pin down: a packed env.observation / env.action (and a copy worker's step request and
result) comes back as the same message (every field, dtype and shape, for any number of copies,
with finals, missing agents and flags); a body
of the wrong size is refused with a `FieldError` naming what was expected; a message the layout
cannot carry (an action for some of the client's agents, an observation with infos) goes as
msgpack instead; the signature covers a packed message like any other (per-node keys on ipc,
CURVE on tcp); a packed message from a peer without a layout is dropped and counted; and the env
server grants packing only where nothing else must travel with an observation.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from gymnasium import spaces

from agent_node.env_client import EnvClient, EnvProtocolError
from env_server.server import EnvServer, LockstepRules
from env_server.vector import VectorizedParallelEnv
from protocols.codec import messages as m
from protocols.codec import wire
from protocols.net.auth import load_node_keys
from protocols.codec.errors import FieldError, FrameLayoutError, MalformedPayload, SignatureError
from protocols.codec.packed import PackedLayout
from protocols.net.transport import Hub, generate_run_keys

pytestmark = pytest.mark.timeout(60)

AGENTS = ["a0", "a1", "a2"]
OBSERVATION_SPACES = {
    "a0": spaces.Box(-1.0, 1.0, (2, 3), np.float32),
    "a1": spaces.Discrete(4),
    "a2": spaces.MultiBinary(5),
}
ACTION_SPACES = {
    "a0": spaces.Box(-1.0, 1.0, (2,), np.float32),
    "a1": spaces.Discrete(3),
    "a2": spaces.MultiDiscrete([2, 3]),
}


def layout(agents=("a0", "a1")) -> PackedLayout:
    return PackedLayout(list(agents), OBSERVATION_SPACES, ACTION_SPACES, AGENTS)


def observation(copies: int, *, agents=("a0", "a1"), finals=False, **flags) -> m.EnvObservation:
    rng = np.random.default_rng(copies)
    observations = {
        "a0": rng.normal(size=(copies, 2, 3)).astype(np.float32),
        "a1": rng.integers(0, 4, copies).astype(np.int64),
        "a2": rng.integers(0, 2, (copies, 5)).astype(np.int8),
    }
    return m.EnvObservation(
        step=flags.pop("step", 41),
        observations={a: observations[a] for a in agents},
        rewards={a: rng.normal(size=copies).astype(np.float32) for a in agents},
        terminated={a: rng.integers(0, 2, copies).astype(bool) for a in agents},
        truncated={a: rng.integers(0, 2, copies).astype(bool) for a in agents},
        active={a: rng.integers(0, 2, copies).astype(bool) for a in agents},
        final_observations={a: observations[a][::-1].copy() for a in agents} if finals else {},
        episode_start=rng.integers(0, 2, copies).astype(bool),
        **flags,
    )


def assert_same_message(got, expected) -> None:
    assert type(got) is type(expected)
    if type(expected) is m.EnvObservation:
        for name in ("step", "run_finished", "evaluation"):
            assert getattr(got, name) == getattr(expected, name), name
        assert sorted(got.missing) == sorted(expected.missing)  # a bit mask: back in the env's agent order
    for name in ("observations", "rewards", "terminated", "truncated", "active", "final_observations"):
        mine, theirs = getattr(got, name), getattr(expected, name)
        assert list(mine) == list(theirs), name
        for agent in theirs:
            assert mine[agent].dtype == theirs[agent].dtype and mine[agent].shape == theirs[agent].shape, (name, agent)
            assert np.array_equal(mine[agent], theirs[agent]), (name, agent)
            assert not mine[agent].flags.writeable  # a view of the received frame, as with msgpack bodies
    assert np.array_equal(got.episode_start, expected.episode_start) and got.episode_start.dtype == bool


# ------------------------------------------------------------------------------------------
# The layout
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("copies", [1, 5])
@pytest.mark.parametrize("finals", [False, True])
def test_an_observation_comes_back_as_it_was_packed(copies, finals):
    sent = observation(copies, finals=finals, missing=["a2", "a0"], run_finished=True, evaluation=True)
    got = layout().unpack("env.observation", layout().pack(sent))
    assert_same_message(got, sent)
    assert got.missing == ["a0", "a2"]  # in the env's agent order


@pytest.mark.parametrize("finals", [False, True])
def test_a_whole_step_packs_to_the_bytes_of_the_clients_message(finals):
    """The env server packs a shared-memory client's rows straight from the step (every agent's
    arrays) without building its EnvObservation: the same bytes as the message would give."""
    from env_server.barrier import observation_for
    from env_server.vector import BatchedStep

    every = observation(3, agents=AGENTS, finals=finals)
    step = BatchedStep(every.observations, every.rewards, every.terminated, every.truncated, every.active,
                       every.final_observations, every.episode_start)
    for agents in (["a0", "a1"], ["a2"]):
        message = observation_for(agents, step, 7, ["a1"], False, True)
        direct = layout(agents).pack_step_result(step, step=7, missing=["a1"], run_finished=False, evaluation=True)
        assert direct == layout(agents).pack(message)


def test_the_number_of_copies_may_change_between_messages():
    # Evaluation copies differ in number from training copies: K travels in every body.
    packer, unpacker = layout(), layout()
    for copies in (8, 3, 8):
        sent = observation(copies)
        assert_same_message(unpacker.unpack("env.observation", packer.pack(sent)), sent)


def test_an_action_comes_back_as_it_was_packed():
    actions = {"a0": np.full((4, 2), 0.5, np.float32), "a1": np.array([0, 2, 1, 2]), "a2": np.array([[1, 2]] * 4)}
    sent = m.EnvAction(step=9, actions=actions, evaluation=True)
    got = layout(AGENTS).unpack("env.action", layout(AGENTS).pack(sent))
    assert (got.step, got.evaluation, list(got.actions)) == (9, True, AGENTS)
    for agent, action in actions.items():
        assert np.array_equal(got.actions[agent], action) and got.actions[agent].shape == action.shape


@pytest.mark.parametrize("finals", [False, True])
def test_the_copy_workers_messages_come_back_as_they_were_packed(finals):
    # env_server/workers.py: the layout over every agent carries a worker's requests and results.
    packer = layout(AGENTS)
    actions = {"a0": np.full((3, 2), -0.5, np.float32), "a1": np.array([2, 0, 1]), "a2": np.array([[0, 2]] * 3)}
    got = packer.unpack("env.worker_step", packer.pack(m.EnvWorkerStep(actions=actions)))
    assert list(got.actions) == AGENTS and all(np.array_equal(got.actions[a], actions[a]) for a in AGENTS)

    fields = observation(3, agents=AGENTS, finals=finals)
    result = m.EnvWorkerResult(observations=fields.observations, rewards=fields.rewards, terminated=fields.terminated,
                               truncated=fields.truncated, active=fields.active, final_observations=fields.final_observations,
                               episode_start=fields.episode_start, episode_returns=[-1.5, 2.25], all_finished=True)
    assert packer.fits(result) and not packer.fits(m.EnvWorkerResult(**{**vars(result), "infos": {"a0": {"x": np.zeros(3)}}}))
    body = packer.pack(result)
    got = packer.unpack("env.worker_result", body)
    assert_same_message(got, result)
    assert got.episode_returns == [-1.5, 2.25] and got.all_finished is True
    with pytest.raises(FieldError, match="packed env.worker_result for 3 copies and 2 episode returns: expected"):
        packer.unpack("env.worker_result", body[:-8])


def test_a_body_of_the_wrong_size_is_a_field_error_naming_the_expected_size():
    body = layout().pack(observation(2))
    with pytest.raises(FieldError, match=r"packed env.observation for 2 copies of \['a0', 'a1'\]: expected \d+ bytes"):
        layout().unpack("env.observation", body[:-1])
    with pytest.raises(FieldError, match="shorter than its"):
        layout().unpack("env.action", body[:5])
    action = layout().pack(m.EnvAction(step=1, actions={"a0": np.zeros((2, 2), np.float32), "a1": np.zeros(2, np.int64)}))
    with pytest.raises(FieldError, match="packed env.action for 2 copies"):
        layout().unpack("env.action", action + b"\x00")


def test_only_what_the_layout_can_carry_fits():
    packer = layout()
    assert packer.fits(observation(1)) and packer.fits(observation(1, finals=True))
    assert not packer.fits(m.EnvAction(step=1, actions={"a0": np.zeros((1, 2), np.float32)}))  # a1 left out
    assert not packer.fits(observation(1, infos={"a0": {"x": np.zeros(1)}}))
    assert not packer.fits(observation(1, global_state=np.zeros((1, 4), np.float32)))
    assert not packer.fits(m.EnvReset())
    finals_for_one = observation(1, finals=True)
    finals_for_one.final_observations.pop("a1")
    assert not packer.fits(finals_for_one)


def test_actions_of_another_kind_are_refused_when_packing():
    with pytest.raises(ValueError, match="expected int64 values, got float64"):
        layout().pack(m.EnvAction(step=1, actions={"a0": np.zeros((1, 2), np.float32), "a1": np.array([0.7])}))
    with pytest.raises(ValueError, match=r"expected a batch shaped \(K, ...\)"):
        layout().pack(m.EnvAction(step=1, actions={"a0": np.float32(0.0), "a1": np.array([1])}))


def test_spaces_without_a_fixed_layout_are_refused_with_the_reason():
    odd = {"a0": spaces.Dict({"x": spaces.Discrete(2)})}
    assert "a0's observation space Dict" in PackedLayout.refusal(["a0"], odd, ACTION_SPACES)
    with pytest.raises(ValueError, match="no fixed byte layout"):
        PackedLayout(["a0"], odd, ACTION_SPACES, ["a0"])


def test_observations_too_large_for_a_packed_frame_go_as_msgpack():
    """A packed body rides in the head frame, which receivers refuse past MAX_HEAD_BYTES: images
    (or many copies of a large vector) must take msgpack's buffer frames instead."""
    from types import SimpleNamespace

    from env_server.vector import packing_refusal

    def envs(shape: tuple[int, ...], copies: int) -> SimpleNamespace:
        space = spaces.Box(0, 255, shape, np.uint8)
        return SimpleNamespace(forward_infos=(), observation_spaces={"a0": space, "a1": space},
                               action_spaces={"a0": spaces.Discrete(3), "a1": spaces.Discrete(3)}, num_copies=copies)

    assert packing_refusal(envs((24,), 8), ["a0", "a1"]) is None
    refusal = packing_refusal(envs((457, 120, 3), 1), ["a0", "a1"])
    assert refusal is not None and f"over the {wire.MAX_PACKED_BODY_BYTES} a packed frame may carry" in refusal
    # The bound holds what a packed observation really takes, finals included.
    fits = envs((400,), 8)
    assert packing_refusal(fits, ["a0", "a1"]) is None
    full = PackedLayout(["a0", "a1"], fits.observation_spaces, fits.action_spaces, ["a0", "a1"])
    obs = {a: np.zeros((8, 400), np.uint8) for a in ("a0", "a1")}
    flags = {a: np.zeros(8, bool) for a in ("a0", "a1")}
    message = m.EnvObservation(step=3, observations=obs, rewards={a: np.zeros(8, np.float32) for a in obs},
                               terminated=flags, truncated=flags, final_observations=obs, active=flags,
                               episode_start=np.zeros(8, bool))
    assert len(full.pack(message)) <= PackedLayout.largest_observation_bytes(["a0", "a1"], fits.observation_spaces, 8)


# ------------------------------------------------------------------------------------------
# The envelope
# ------------------------------------------------------------------------------------------


def test_a_packed_envelope_decodes_to_its_type_sender_and_body():
    frames = wire.encode_packed("env.action", b"body", sender="agent_3", seq=7, identities=[b"id"])
    assert len(frames) == 2  # the routing id, then head and body in one frame
    envelope = wire.decode(frames)
    assert envelope.identities == (b"id",) and envelope.message == wire.Packed("env.action", b"body")
    assert (envelope.sender, envelope.msg_type, envelope.header.seq) == ("agent_3", "env.action", 7)
    assert abs(envelope.header.sent_at - time.time()) < 5


def test_the_signature_covers_a_packed_message_and_names_its_sender():
    keys = {"agent_3": b"k3" * 16, "agent_4": b"k4" * 16}
    frames = wire.encode_packed("env.observation", b"body", sender="agent_3", seq=1, key=keys["agent_3"])
    assert wire.decode(frames, key=keys.get).sender == "agent_3"
    with pytest.raises(SignatureError, match="the sender the header claims"):
        wire.decode([frames[0][:-1] + b"x"], key=keys.get)
    posing = wire.encode_packed("env.observation", b"body", sender="agent_4", seq=1, key=keys["agent_3"])
    with pytest.raises(SignatureError):
        wire.decode(posing, key=keys.get)
    with pytest.raises(SignatureError, match="missing signature"):
        wire.decode(wire.encode_packed("env.action", b"", sender="agent_3", seq=1), key=keys.get)


def test_a_malformed_packed_head_is_named():
    (head,) = wire.encode_packed("env.action", b"x", sender="agent_3", seq=1)
    payload_at = len(wire.MAGIC) + 1  # unsigned: no signature bytes
    bad_code = head[: payload_at + 1] + b"\x09" + head[payload_at + 2 :]
    with pytest.raises(MalformedPayload, match=r"type code 9; expected 0..3 \(env.observation, env.action, env.worker_step"):
        wire.decode([bad_code])
    with pytest.raises(MalformedPayload, match="a 7-byte sender name needs"):
        wire.decode([head[: payload_at + wire._PACKED_HEAD.size + 3]])
    with pytest.raises(FrameLayoutError, match="a packed message is one frame after the routing ids, got 2"):
        wire.decode([head, b"extra"])


# ------------------------------------------------------------------------------------------
# On real sockets
# ------------------------------------------------------------------------------------------


def first(hub: Hub, channel, timeout_s: float = 10.0):
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        if channel in hub.wait(left) and (envelope := channel.recv()) is not None:
            return envelope
    raise AssertionError("nothing arrived")


@pytest.mark.parametrize("transport", ["ipc", "tcp"])
def test_a_channel_with_a_layout_sends_packed_and_hands_over_messages(transport, hubs, tmp_path):
    keys_dir = generate_run_keys(tmp_path / "keys", ["env", "a0"])
    server_hub = hubs("env", keys=load_node_keys(keys_dir, "env"))
    inbox = server_hub.bind_router("tcp://127.0.0.1:0" if transport == "tcp" else f"ipc://{tmp_path}/env.sock", name="env")
    client_hub = hubs("a0", keys=load_node_keys(keys_dir, "a0"))
    client = client_hub.connect_dealer(inbox.endpoint, name="env", identity="a0")
    client.send(m.EnvReset())  # the ROUTER learns the routing id
    assert first(server_hub, inbox).sender == "a0"
    inbox.use_packed(layout(["a0"]), b"a0")
    client.use_packed(layout(["a0"]))

    sent = observation(3, agents=["a0"], finals=True)
    inbox.send(sent, to=b"a0")
    bytes_packed = inbox.stats.bytes_sent
    assert_same_message(first(client_hub, client).message, sent)
    client.send(m.EnvAction(step=41, actions={"a0": np.ones((3, 2), np.float32)}))
    action = first(server_hub, inbox)
    assert action.sender == "a0" and action.identities == (b"a0",) and isinstance(action.message, m.EnvAction)
    assert action.message.actions["a0"].tolist() == [[1.0, 1.0]] * 3

    # The same observation as msgpack (the peer's layout forgotten) is larger on the wire.
    inbox.forget_packed(b"a0")
    inbox.send(sent, to=b"a0")
    assert inbox.stats.bytes_sent - bytes_packed > bytes_packed
    assert_same_message(first(client_hub, client).message, sent)


def test_a_packed_message_from_a_peer_without_a_layout_is_dropped_and_counted(hubs, raw_dealer, tmp_path):
    server_hub = hubs("env")
    inbox = server_hub.bind_router(f"ipc://{tmp_path}/env.sock", name="env")
    raw = raw_dealer(inbox.endpoint, b"a0")
    raw.send_multipart(wire.encode_packed("env.action", b"\x00" * 13, sender="a0", seq=1))
    raw.send_multipart(wire.encode(m.EnvReset(), sender="a0", run_id="r", seq=2))
    assert isinstance(first(server_hub, inbox).message, m.EnvReset)
    assert inbox.stats.dropped_invalid == 1 and inbox.stats.received == 1


# ------------------------------------------------------------------------------------------
# The env server grants packing
# ------------------------------------------------------------------------------------------


class TwoAgentEnv:
    """Just enough of a ParallelEnv for the server to build its welcome."""

    possible_agents = ["a0", "a1"]

    def __init__(self, observation_space: spaces.Space) -> None:
        self._observation_space = observation_space

    def observation_space(self, agent):
        return self._observation_space

    def action_space(self, agent):
        return spaces.Discrete(3)

    def close(self):
        pass


@pytest.mark.parametrize(
    ("space", "forward_infos", "join", "granted"),
    [
        (spaces.Box(-1, 1, (4,), np.float32), (), {"packed": True}, True),
        (spaces.Box(-1, 1, (4,), np.float32), (), {}, False),  # not asked
        (spaces.Box(-1, 1, (4,), np.float32), ("landmark",), {"packed": True}, False),
        (spaces.Dict({"x": spaces.Discrete(2)}), (), {"packed": True}, False),
    ],
)
def test_the_server_grants_packing_only_where_nothing_else_travels(space, forward_infos, join, granted, hubs, tmp_path):
    envs = VectorizedParallelEnv(lambda: TwoAgentEnv(space), 1, autoreset=True, forward_infos=forward_infos)
    hub = hubs("env")
    server = EnvServer(envs, hub=hub, env_name="two", bind_address=f"ipc://{tmp_path}/env.sock",
                       rules=LockstepRules(max_steps=None, step_deadline_s=1.0, join_deadline_s=1.0),
                       seed=0, eval_seed=1, default_action_seed=2)
    if isinstance(space, spaces.Dict):  # no global view for such an env, but a server all the same
        assert not server.global_view.available and "concatenates Box observations" in server.global_view.unavailable_reason
    client_hub = hubs("c0")
    channel = client_hub.connect_dealer(server.endpoint, name="env", identity="c0")
    client = EnvClient("c0", agent_indices=[0], packed=join.get("packed", False))
    channel.send(client.join())
    deadline = time.monotonic() + 10
    welcome = None
    while welcome is None and time.monotonic() < deadline:
        server.poll_once(0.1)
        welcome = channel.wait_for(m.EnvWelcome, m.ErrorReply, timeout_s=0.05)
    assert isinstance(welcome, m.EnvWelcome), welcome
    assert welcome.packed is granted
    assert server.channel.packed_peers == ({b"c0"} if granted else set())
    client.on_welcome(welcome)
    assert (client.packed_layout is not None) is granted
    # A client that also asks for the global view gets its fields in msgpack (its layout is dropped).
    assert not server.bodies.grant_packed(b"c0", m.EnvJoin(client_id="c0", packed=True, global_view=True), ["a0"])
    assert server.channel.packed_peers == set()


def test_a_client_refuses_packing_it_did_not_ask_for():
    welcome = m.EnvWelcome(env_name="e", num_copies=1, agents=["a0"], possible_agents=["a0"],
                           observation_spaces={"a0": {"kind": "discrete", "n": 2, "start": 0, "dtype": "<i8"}},
                           action_spaces={"a0": {"kind": "discrete", "n": 2, "start": 0, "dtype": "<i8"}},
                           autoreset=True, max_steps=None, packed=True)
    with pytest.raises(EnvProtocolError, match="did not ask for"):
        EnvClient("a0", agent_indices=[0]).on_welcome(welcome)
    assert EnvClient("a0", agent_indices=[0], packed=True).join().packed
