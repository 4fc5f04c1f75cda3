"""Property-based fuzzing of packed lockstep bodies (protocols/codec/packed.py) at the current protocol
version, the part of the wire decoder that tests/unit/test_wire.py's fuzz tests do not reach.

A packed body is raw bytes behind a small struct; the arrays in it are numpy views of the
received frame. So what must hold for any bytes a peer (or a bit flip) may send, whatever the
layout's dtypes and shapes: the body decodes to a message of its type whose arrays lie within the
body (never a read past its end), or `unpack` raises the decoder's own `FieldError` naming what
was expected, never another exception. Bodies come from valid ones, then mutated (cut short,
extended, bytes changed, the header's copy count, flags or return count replaced), and from
random bytes; layouts from random Box dtypes and shapes (zero-sized too), Discrete,
MultiDiscrete and MultiBinary spaces, and more possible agents than fit one mask byte. The same
bodies also go through a signed packed envelope (wire.encode_packed / wire.decode) and then the
layout, as a channel does (protocols/net/transport.py).
"""

from __future__ import annotations

import struct

import numpy as np
from gymnasium import spaces
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols.codec import messages as m
from protocols.codec import wire
from protocols.codec.errors import FieldError, ProtocolError
from protocols.codec.packed import PackedLayout, row_layout

KEY = b"k" * 32
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_DTYPES = [np.float16, np.float32, np.float64, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32]
_shapes = st.lists(st.integers(0, 3), min_size=0, max_size=3).map(tuple)


@st.composite
def fixed_spaces(draw: st.DrawFn) -> spaces.Space:
    kind = draw(st.sampled_from(["box", "discrete", "multidiscrete", "multibinary"]))
    if kind == "box":
        return spaces.Box(0, 1, draw(_shapes), draw(st.sampled_from(_DTYPES)))
    if kind == "discrete":
        return spaces.Discrete(draw(st.integers(1, 9)))
    if kind == "multidiscrete":
        return spaces.MultiDiscrete(draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)))
    return spaces.MultiBinary(draw(st.integers(1, 5)))


class Layout:
    """A `PackedLayout` with the spaces it was built from (to make bodies it accepts)."""

    def __init__(self, agents: list[str], observation_spaces: dict, action_spaces: dict, possible: list[str]) -> None:
        self.packed = PackedLayout(agents, observation_spaces, action_spaces, possible)
        self.agents, self.observation_spaces, self.action_spaces = agents, observation_spaces, action_spaces

    def __repr__(self) -> str:  # what hypothesis prints for a failing example
        return f"Layout({self.agents}, {self.observation_spaces}, {self.action_spaces})"


@st.composite
def layouts(draw: st.DrawFn) -> Layout:
    possible = [f"p{i}" for i in range(draw(st.integers(1, 11)))]  # past 8: a two-byte missing mask
    agents = draw(st.lists(st.sampled_from(possible), min_size=1, max_size=3, unique=True))
    observation_spaces = {agent: draw(fixed_spaces()) for agent in possible}
    action_spaces = {agent: draw(fixed_spaces()) for agent in possible}
    return Layout(agents, observation_spaces, action_spaces, possible)


def _values(space: spaces.Space, copies: int, rng: np.random.Generator) -> np.ndarray:
    dtype, shape = row_layout(space)
    return rng.integers(0, 2, (copies, *shape)).astype(dtype)


def valid_message(layout: Layout, msg_type: str, copies: int, finals: bool, seed: int):
    """A message of `msg_type` that `layout` packs, with `copies` copies."""
    rng = np.random.default_rng(seed)
    arrays = {agent: _values(layout.observation_spaces[agent], copies, rng) for agent in layout.agents}
    flags = {name: {agent: rng.integers(0, 2, copies).astype(dtype) for agent in layout.agents}
             for name, dtype in (("rewards", np.float32), ("terminated", bool), ("truncated", bool), ("active", bool))}
    step_fields = dict(observations=arrays, **flags, episode_start=rng.integers(0, 2, copies).astype(bool),
                       final_observations={agent: arrays[agent].copy() for agent in layout.agents} if finals else {})
    actions = {agent: _values(layout.action_spaces[agent], copies, rng) for agent in layout.agents}
    if msg_type == "env.observation":
        return m.EnvObservation(step=int(rng.integers(0, 10**6)), missing=[], **step_fields)
    if msg_type == "env.action":
        return m.EnvAction(step=int(rng.integers(0, 10**6)), actions=actions)
    if msg_type == "env.worker_step":
        return m.EnvWorkerStep(actions=actions)
    return m.EnvWorkerResult(**step_fields, episode_returns=rng.normal(size=int(rng.integers(0, 3))).tolist(), all_finished=False)


_HEADS = {"env.observation": struct.Struct("<qIB"), "env.action": struct.Struct("<qIB"),
          "env.worker_step": struct.Struct("<I"), "env.worker_result": struct.Struct("<IBI")}


@st.composite
def mutated(draw: st.DrawFn, body: bytes, msg_type: str) -> bytes:
    """`body` changed the ways a damaged or hostile body differs from a good one."""
    data = bytearray(body)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["cut", "extend", "flip", "head", "random"]))
        if kind == "cut":
            del data[draw(st.integers(0, len(data))):]
        elif kind == "extend":
            data += draw(st.binary(min_size=1, max_size=64))
        elif kind == "flip" and data:
            at = draw(st.integers(0, len(data) - 1))
            data[at] ^= draw(st.integers(1, 255))
        elif kind == "head":
            head = _HEADS[msg_type]
            fields = list(head.unpack_from(bytes(data).ljust(head.size, b"\0")))
            at = draw(st.integers(0, len(fields) - 1))
            fields[at] = draw(st.sampled_from([0, 1, 2, 255, 2**31 - 1, 2**32 - 1]))
            if head.format[1 + at] == "q":
                fields[at] = draw(st.integers(-(2**63), 2**63 - 1))
            elif head.format[1 + at] == "B":
                fields[at] &= 0xFF
            data[: head.size] = head.pack(*fields)
        else:
            data = bytearray(draw(st.binary(max_size=len(data) + 16)))
    return bytes(data)


def assert_decodes_within_the_body_or_is_refused(layout: PackedLayout, msg_type: str, body: bytes) -> None:
    try:
        message = layout.unpack(msg_type, body)
    except FieldError as error:
        assert str(error), "a FieldError without a message"
        return
    assert type(message).MSG_TYPE == msg_type
    # Every array is a view of the body: within it, read-only, none past its end.
    arrays = []
    for name in ("observations", "rewards", "terminated", "truncated", "active", "final_observations", "actions"):
        arrays += list((getattr(message, name, None) or {}).values())
    if hasattr(message, "episode_start"):
        arrays.append(message.episode_start)
    total = 0
    for array in arrays:
        assert isinstance(array, np.ndarray) and not array.flags.writeable
        total += array.nbytes
    assert total <= len(body)


@st.composite
def cases(draw: st.DrawFn) -> tuple[PackedLayout, str, bytes]:
    layout = draw(layouts())
    msg_type = draw(st.sampled_from(sorted(_HEADS)))
    message = valid_message(layout, msg_type, draw(st.integers(1, 4)), draw(st.booleans()), draw(st.integers(0, 99)))
    good = layout.packed.pack(message)
    body = draw(st.one_of(st.just(good), mutated(good, msg_type), st.binary(max_size=96)))
    return layout.packed, msg_type, body


@FUZZ
@given(case=cases())
def test_a_packed_body_decodes_within_its_bytes_or_is_a_field_error(case) -> None:
    assert_decodes_within_the_body_or_is_refused(*case)


@FUZZ
@given(case=cases(), seq=st.integers(0, 2**63 - 1))
def test_a_signed_packed_envelope_with_any_body_gives_a_message_or_a_protocol_error(case, seq) -> None:
    layout, msg_type, body = case
    frames = wire.encode_packed(msg_type, body, sender="agent_0", seq=seq, key=KEY)
    try:
        envelope = wire.decode(frames, key=KEY)
    except ProtocolError as error:  # over the packed body's bound, say
        assert str(error)
        return
    assert type(envelope.message) is wire.Packed and envelope.msg_type == msg_type
    assert_decodes_within_the_body_or_is_refused(layout, msg_type, bytes(envelope.message.data))


def test_a_good_body_of_every_type_decodes_back(seed: int = 3) -> None:
    """The fuzz tests' generator makes bodies the layout accepts (else they would test refusals only)."""
    layout = Layout(["p0", "p2"], {f"p{i}": spaces.Box(-1, 1, (2, 3), np.float16) for i in range(10)},
                    {f"p{i}": spaces.MultiDiscrete([2, 3]) for i in range(10)}, [f"p{i}" for i in range(10)])
    for msg_type in _HEADS:
        sent = valid_message(layout, msg_type, 3, True, seed)
        got = layout.packed.unpack(msg_type, layout.packed.pack(sent))
        assert type(got) is type(sent)
        assert_decodes_within_the_body_or_is_refused(layout.packed, msg_type, layout.packed.pack(sent))


def test_bodies_claiming_ever_new_copy_counts_do_not_grow_the_layouts_memory() -> None:
    layout = PackedLayout(["p0"], {"p0": spaces.Discrete(3)}, {"p0": spaces.Discrete(3)}, ["p0"])
    head = struct.Struct("<qIB")
    for copies in range(1, 5000):
        try:
            layout.unpack("env.observation", head.pack(1, copies, 0) + b"\0" * 9)
        except FieldError:
            pass
    assert len(layout._observation_plans) <= 16
