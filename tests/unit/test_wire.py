"""Tests of the envelope codec (`protocols/codec/wire.py`): round trips and the receiving boundary.

Two kinds of test live here:

- property tests (hypothesis): every registered message type, filled with values drawn from its
  own field annotations (numpy arrays of every wire dtype, 0-d and empty arrays, nested maps of
  arrays), survives `decode(encode(msg))` exactly; and any mangled frame set (bytes flipped,
  deleted or inserted, frames dropped, duplicated or swapped, garbage msgpack) is refused with a
  `ProtocolError` subclass and never any other exception;
- example tests: each specific way a frame can be wrong gives the matching error class, and its
  message says what was expected.

Bad frames are built by hand here (msgpack + hmac written out in this file, not through the
codec's private helpers), so a codec that signs or lays out frames differently from the spec
fails these tests.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import importlib
import math
import pkgutil
import types
import typing
from typing import Any

import msgpack
import numpy as np
import pytest
import struct
import time
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import protocols
from protocols import PROTOCOL_VERSION
from protocols.codec import wire
from protocols.codec.errors import (
    FieldError,
    FrameLayoutError,
    MalformedPayload,
    ProtocolError,
    SignatureError,
    UnknownMessageType,
    VersionMismatch,
)
from protocols.codec.messages import MESSAGE_TYPES, WIRE_DTYPES, EnvObservation, Status

# Every module of the package registers its own messages (the engines register theirs next to
# the engine, e.g. protocols/engines/consensus.py). Importing whatever modules exist today makes the round
# trip cover every message type without a hard-coded list that could go stale.
for _module in pkgutil.walk_packages(protocols.__path__, "protocols."):
    importlib.import_module(_module.name)

pytestmark = pytest.mark.timeout(60)

ALL_MSG_TYPES = sorted(MESSAGE_TYPES)
KEY = b"run-key-0123456789abcdef"
FAST = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow], report_multiple_bugs=False
)

# --------------------------------------------------------------------------- strategies

wire_dtypes = st.sampled_from(sorted(WIRE_DTYPES)).map(np.dtype)


def _maybe_strided(array: np.ndarray) -> np.ndarray:
    # A reversed view is not C-contiguous: the encoder must copy it and still send the right bytes.
    return array[::-1] if array.ndim >= 1 else array


wire_arrays = st.one_of(
    wire_dtypes.flatmap(
        lambda dtype: hnp.arrays(dtype, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
    ),
    wire_dtypes.flatmap(lambda dtype: hnp.arrays(dtype, st.integers(0, 5))).map(_maybe_strided),
)

# msgpack carries integers from -2**63 to 2**64 - 1.
wire_ints = st.integers(min_value=-(2**63), max_value=2**64 - 1)
short_text = st.text(max_size=12)

wire_scalars = st.one_of(
    st.none(), st.booleans(), wire_ints, st.floats(), short_text, st.binary(max_size=12)
)
any_values = st.recursive(
    st.one_of(wire_scalars, wire_arrays),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)


def strategy_for(hint: Any) -> st.SearchStrategy:
    """Values of the annotation `hint`, covering what `messages._check` accepts."""
    if hint is Any:
        return any_values
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return st.one_of([strategy_for(option) for option in args])
    if hint is type(None):
        return st.none()
    if hint is float:
        return st.floats()
    if hint is int:
        return wire_ints
    if hint is str:
        return short_text
    if hint is bool:
        return st.booleans()
    if hint is bytes:
        return st.binary(max_size=16)
    if hint is np.ndarray:
        return wire_arrays
    if origin is list:
        return st.lists(strategy_for(args[0]), max_size=3)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return st.lists(strategy_for(args[0]), max_size=3).map(tuple)
        return st.tuples(*(strategy_for(arg) for arg in args))
    if origin is dict:
        return st.dictionaries(strategy_for(args[0]), strategy_for(args[1]), max_size=3)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):  # a nested typed record
        return record_strategy(hint)
    raise TypeError(f"test strategy: no strategy for annotation {hint!r}; teach strategy_for about it")


def message_strategy(msg_type: str) -> st.SearchStrategy:
    return record_strategy(MESSAGE_TYPES[msg_type])


def record_strategy(cls: type) -> st.SearchStrategy:
    hints = typing.get_type_hints(cls)
    fields = {f.name: strategy_for(hints[f.name]) for f in dataclasses.fields(cls)}
    return st.fixed_dictionaries(fields).map(lambda values: cls(**values))


identity_frames = st.lists(
    st.binary(min_size=1, max_size=8).filter(lambda frame: not frame.startswith(b"PARLEY/")), max_size=3
)
keys = st.sampled_from([b"", KEY])

# --------------------------------------------------------------------------- helpers


def assert_same(expected: Any, actual: Any, where: str = "message") -> None:
    """Exact structural equality: same types, dtypes, shapes, key order, NaN equal to NaN."""
    if dataclasses.is_dataclass(expected):
        assert type(actual) is type(expected), where
        for f in dataclasses.fields(expected):
            assert_same(getattr(expected, f.name), getattr(actual, f.name), f"{where}.{f.name}")
    elif isinstance(expected, np.ndarray):
        assert isinstance(actual, np.ndarray), f"{where}: got {type(actual).__name__}"
        assert actual.dtype == expected.dtype, f"{where}: dtype {actual.dtype} != {expected.dtype}"
        assert actual.shape == expected.shape, f"{where}: shape {actual.shape} != {expected.shape}"
        assert np.array_equal(actual, expected, equal_nan=expected.dtype.kind == "f"), where
    elif isinstance(expected, float):
        assert type(actual) is float, f"{where}: got {type(actual).__name__}"
        if math.isnan(expected):
            assert math.isnan(actual), where
        else:
            assert actual == expected and math.copysign(1, actual) == math.copysign(1, expected), where
    elif isinstance(expected, dict):
        assert type(actual) is dict, where
        assert list(actual) == list(expected), f"{where}: keys {list(actual)} != {list(expected)}"
        for key in expected:
            assert_same(expected[key], actual[key], f"{where}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        assert type(actual) is type(expected), f"{where}: {type(actual).__name__} != {type(expected).__name__}"
        assert len(actual) == len(expected), where
        for index, (e, a) in enumerate(zip(expected, actual)):
            assert_same(e, a, f"{where}[{index}]")
    else:
        assert type(actual) is type(expected) and actual == expected, f"{where}: {actual!r} != {expected!r}"


def arrays_in_wire_order(value: Any) -> list[np.ndarray]:
    """Arrays in the order msgpack packs them: fields, then map values and list items in order."""
    if dataclasses.is_dataclass(value):
        return [a for f in dataclasses.fields(value) for a in arrays_in_wire_order(getattr(value, f.name))]
    if isinstance(value, np.ndarray):
        return [value]
    if isinstance(value, dict):
        return [a for item in value.values() for a in arrays_in_wire_order(item)]
    if isinstance(value, (list, tuple)):
        return [a for item in value for a in arrays_in_wire_order(item)]
    return []


def as_bytes_frames(frames: list[Any]) -> list[bytes]:
    return [memoryview(frame).tobytes() for frame in frames]


def as_memoryview_frames(frames: list[Any]) -> list[memoryview]:
    """Each frame copied into one writable bytearray at an odd offset, like received zmq frames
    (writable memory, no alignment promise), and handed over as memoryview slices."""
    raw = as_bytes_frames(frames)
    arena = bytearray(1 + sum(len(frame) + 1 for frame in raw))
    views, offset = [], 1
    for frame in raw:
        arena[offset : offset + len(frame)] = frame
        views.append(memoryview(arena)[offset : offset + len(frame)])
        offset += len(frame) + 1
    return views


def sign(key: bytes, head_payload: bytes, body: bytes, *buffers: bytes) -> bytes:
    """The spec's signature: raw HMAC-SHA256 over the head's msgpack part, the body and every buffer frame."""
    if not key:
        return b""
    return hmac.new(key, head_payload + body + b"".join(buffers), hashlib.sha256).digest()


def head_frame(signature: bytes, head_payload: bytes) -> bytes:
    """The spec's head frame: b"PARLEY/2", the signature's length (one byte), the signature, msgpack [header, parent]."""
    return b"PARLEY/2" + bytes([len(signature)]) + signature + head_payload


def header_map(msg_type: str = "control.status", **changes: Any) -> dict[str, Any]:
    header = {
        "msg_id": "0123abcd",
        "msg_type": msg_type,
        "sender": "agent_0",
        "run_id": "run-1",
        "version": PROTOCOL_VERSION,
        "seq": 7,
        "sent_at": 1234.5,
    }
    header.update(changes)
    return header


def build_frames(
    body: Any,
    *,
    header: Any = None,
    buffers: tuple[bytes, ...] = (),
    key: bytes = b"",
    raw_body: bytes | None = None,
    raw_header: bytes | None = None,
) -> list[bytes]:
    """Frames laid out by hand as the spec says: head (magic, signature, [header, parent]), body, buffers.
    `raw_header` replaces the header's msgpack bytes inside the head's array of two."""
    header_bytes = raw_header if raw_header is not None else msgpack.packb(header or header_map())
    head_payload = b"\x92" + header_bytes + msgpack.packb({})
    body_bytes = raw_body if raw_body is not None else msgpack.packb(body, use_bin_type=True)
    return [head_frame(sign(key, head_payload, body_bytes, *buffers), head_payload), body_bytes, *buffers]


# The spec's dtype codes, in their fixed order.
DTYPE_CODES = ["|b1", "|i1", "<i2", "<i4", "<i8", "|u1", "<u2", "<u4", "<u8", "<f2", "<f4", "<f8"]


def placeholder_bytes(kind: int, dtype_code: int, index: int, offset: int, shape: list[int], ndim: int | None = None) -> bytes:
    """The spec's placeholder: kind, dtype code, ndim (uint8 each), buffer index (uint16), byte
    offset (uint64), then ndim uint64 dimensions, little-endian."""
    ndim = len(shape) if ndim is None else ndim
    return struct.pack("<BBBHQ", kind, dtype_code, ndim, index, offset) + struct.pack(f"<{len(shape)}Q", *shape)


def array_ext(index: int, dtype: str, shape: list[int], offset: int | None = None) -> msgpack.ExtType:
    """An array placeholder: the whole of buffer `index`, or the slice at `offset`."""
    kind = 0 if offset is None else 1
    return msgpack.ExtType(1, placeholder_bytes(kind, DTYPE_CODES.index(dtype), index, offset or 0, shape))


STATUS_BODY = {"node_id": "agent_0", "state": "running", "step": 3, "episode": 1}


def observation_body(episode_start: Any) -> dict[str, Any]:
    empty: dict[str, Any] = {}
    return {
        "step": 1,
        "observations": empty,
        "rewards": empty,
        "terminated": empty,
        "truncated": empty,
        "active": empty,
        "final_observations": empty,
        "episode_start": episode_start,
    }


# --------------------------------------------------------------------------- round trips


def test_every_registered_type_is_covered() -> None:
    # The lead's core messages are always there; engines' messages join when their modules exist.
    assert {"env.observation", "env.welcome", "control.status", "error"} <= set(ALL_MSG_TYPES)
    for msg_type in ALL_MSG_TYPES:
        message_strategy(msg_type)  # raises if an annotation has no strategy


@pytest.mark.parametrize("msg_type", ALL_MSG_TYPES)
@FAST
@given(data=st.data())
def test_round_trip_is_exact_and_zero_copy(msg_type: str, data: st.DataObject) -> None:
    message = data.draw(message_strategy(msg_type), label="message")
    identities = data.draw(identity_frames, label="identities")
    key = data.draw(keys, label="key")
    parent = wire.decode(wire.encode(Status("n", "s", 0, 0), sender="peer", run_id="r", seq=1)).header
    frames = wire.encode(message, sender="agent_3", run_id="run-9", seq=42, parent=parent, identities=identities, key=key)

    for variant, received in (
        ("as encoded", frames),
        ("bytes", as_bytes_frames(frames)),
        ("memoryview", as_memoryview_frames(frames)),
    ):
        envelope = wire.decode(received, key=key)
        assert_same(message, envelope.message, f"{variant}: {msg_type}")
        assert envelope.msg_type == msg_type
        assert envelope.sender == "agent_3"
        assert (envelope.header.run_id, envelope.header.seq, envelope.header.version) == ("run-9", 42, PROTOCOL_VERSION)
        assert envelope.parent == parent.as_map()
        assert envelope.identities == tuple(identities)

        # Zero-copy on receive: every array is a read-only view into one of the received buffer
        # frames (small arrays share the first frame, see wire.SMALL_ARRAY_BYTES).
        got = arrays_in_wire_order(envelope.message)
        assert len(got) == len(arrays_in_wire_order(message))
        buffers = [np.frombuffer(frame, dtype=np.uint8) for frame in received[len(identities) + 2 :]]
        for index, array in enumerate(got):
            assert not array.flags.writeable, f"{variant}: received array {index} is writable"
            if array.size:
                assert any(np.shares_memory(array, buffer) for buffer in buffers), f"{variant}: array {index} was copied"


@FAST
@given(message=message_strategy("env.observation"), key=keys)
def test_wrong_key_is_a_signature_error(message: Any, key: bytes) -> None:
    frames = wire.encode(message, sender="a", run_id="r", seq=0, key=key)
    other_key = b"another-key" if key else KEY
    with pytest.raises(SignatureError):
        wire.decode(frames, key=other_key)


def _observation_with(observations: dict[str, Any]) -> EnvObservation:
    return EnvObservation(
        step=1,
        observations=observations,
        rewards={},
        terminated={},
        truncated={},
        active={},
        final_observations={},
        episode_start=np.zeros(2, bool),
    )


def test_large_arrays_get_their_own_frame_without_a_copy() -> None:
    large = np.arange(wire.SMALL_ARRAY_BYTES // 8, dtype=np.float64).reshape(-1, 16)  # exactly the threshold
    also_large = np.ones((2, wire.SMALL_ARRAY_BYTES), dtype=np.uint8)[:, ::2].copy()
    small = np.arange(5, dtype=np.int32)
    message = _observation_with({"large": large, "small": small, "also_large": also_large})
    frames = wire.encode(message, sender="s", run_id="r", seq=0)
    buffers = frames[2:]  # after head and body
    # One shared frame for the small arrays (episode_start and `small`), one per large array.
    assert len(buffers) == 3
    assert buffers[1] is large, "a large contiguous array must be sent as is, not copied"
    assert np.shares_memory(buffers[2], also_large)

    received_frames = as_memoryview_frames(frames)
    received = wire.decode(received_frames).message
    assert_same(message, received)
    for name, frame_index in (("large", 1), ("also_large", 2), ("small", 0)):
        array = received.observations[name]
        assert np.shares_memory(array, np.frombuffer(received_frames[2 + frame_index], np.uint8)), name
        assert not array.flags.writeable


def test_small_arrays_are_packed_aligned_into_one_frame() -> None:
    arrays = {f"a{i}": np.full(i + 1, i, dtype=np.uint8) for i in range(5)}
    arrays["f"] = np.arange(3, dtype=np.float64)
    frames = wire.encode(_observation_with(arrays), sender="s", run_id="r", seq=0)
    assert len(frames) == 3  # head, body, one packed frame
    received = wire.decode(as_bytes_frames(frames)).message
    assert_same(arrays, received.observations)
    blob = np.frombuffer(as_bytes_frames(frames)[2], np.uint8)
    for name, array in received.observations.items():
        offset = array.__array_interface__["data"][0] - blob.__array_interface__["data"][0]
        assert offset % 8 == 0, f"{name} starts at offset {offset}"


def test_zero_dimensional_and_empty_arrays_keep_their_shape() -> None:
    scalar = np.array(2.5, dtype=np.float32)
    empty = np.zeros((0, 3), dtype=np.int16)
    message = EnvObservation(
        step=1,
        observations={"a": {"scalar": scalar, "empty": empty}},
        rewards={},
        terminated={},
        truncated={},
        active={},
        final_observations={},
        episode_start=np.array(True),
    )
    received = wire.decode(as_bytes_frames(wire.encode(message, sender="s", run_id="r", seq=0))).message
    assert received.observations["a"]["scalar"].shape == ()
    assert received.observations["a"]["scalar"][()] == np.float32(2.5)
    assert received.observations["a"]["empty"].shape == (0, 3)
    assert received.observations["a"]["empty"].dtype == np.int16
    assert received.episode_start.shape == () and received.episode_start.dtype == np.bool_


def test_encode_refuses_arrays_that_cannot_cross_the_wire() -> None:
    for bad in (np.array([object()], dtype=object), np.arange(3, dtype=">f4"), np.array(["ab"]), np.zeros(2, complex)):
        message = EnvObservation(1, {"a": bad}, {}, {}, {}, {}, {}, np.zeros(1, bool))
        with pytest.raises(TypeError, match="cannot cross the wire"):
            wire.encode(message, sender="s", run_id="r", seq=0)


def test_numpy_scalars_travel_as_python_numbers() -> None:
    message = Status("n", "s", 1, 2, extra={"loss": np.float32(0.5)})
    received = wire.decode(wire.encode(message, sender="s", run_id="r", seq=0)).message
    assert received.extra == {"loss": 0.5} and type(received.extra["loss"]) is float


# --------------------------------------------------------------------------- body leniency


def test_unknown_extra_body_fields_are_ignored() -> None:
    body = {**STATUS_BODY, "from_the_future": [1, 2, {"x": b"y"}]}
    message = wire.decode(build_frames(body)).message
    assert message == Status("agent_0", "running", 3, 1)


def test_missing_required_field_names_it() -> None:
    body = {k: v for k, v in STATUS_BODY.items() if k != "step"}
    with pytest.raises(FieldError, match=r"control\.status: required field 'step' is missing"):
        wire.decode(build_frames(body))


def test_missing_defaulted_field_takes_its_default() -> None:
    message = wire.decode(build_frames(STATUS_BODY)).message
    assert message.last_return is None and message.msgs_per_s == 0.0 and message.extra == {}


def test_float_field_accepts_an_int_and_stores_a_float() -> None:
    message = wire.decode(build_frames({**STATUS_BODY, "msgs_per_s": 3, "last_return": -2})).message
    assert message.msgs_per_s == 3.0 and type(message.msgs_per_s) is float
    assert message.last_return == -2.0 and type(message.last_return) is float


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("step", "3", r"control\.status\.step: expected int, got str '3'"),
        ("step", 3.0, r"control\.status\.step: expected int, got float"),
        ("step", True, r"control\.status\.step: expected int, got bool"),
        ("node_id", b"agent_0", r"control\.status\.node_id: expected str, got bytes"),
        ("msgs_per_s", "fast", r"control\.status\.msgs_per_s: expected float, got str"),
        ("extra", [1.0], r"control\.status\.extra: expected dict\[str, float\], got list"),
        ("extra", {"loss": "high"}, r"control\.status\.extra\['loss'\]: expected float, got str"),
        ("last_return", "x", r"control\.status\.last_return: expected float \| None, got str"),
    ],
)
def test_body_field_of_wrong_type_names_the_field(field: str, value: Any, expected: str) -> None:
    with pytest.raises(FieldError, match=expected):
        wire.decode(build_frames({**STATUS_BODY, field: value}))


def test_array_where_a_number_is_expected_is_a_field_error() -> None:
    body = {**STATUS_BODY, "step": array_ext(0, "<i8", [1])}
    with pytest.raises(FieldError, match=r"control\.status\.step: expected int, got array int64\[1\]"):
        wire.decode(build_frames(body, buffers=(np.int64(3).tobytes(),)))


def test_body_that_is_not_a_map_is_a_field_error() -> None:
    with pytest.raises(FieldError, match="control.status: body must be a map, got list"):
        wire.decode(build_frames([1, 2, 3]))


# --------------------------------------------------------------------------- frame layout


def test_missing_head_is_a_frame_layout_error() -> None:
    frames = [b"identity", *build_frames(STATUS_BODY)[1:]]
    with pytest.raises(FrameLayoutError, match=r"no head frame \(starting b'PARLEY/2'\) among 2 frames"):
        wire.decode(frames)


def test_head_without_a_body_is_a_frame_layout_error() -> None:
    frames = [b"identity", build_frames(STATUS_BODY)[0]]
    with pytest.raises(FrameLayoutError, match=r"expected a body frame after the head, got 0 frame"):
        wire.decode(frames)


@pytest.mark.parametrize("head", [b"PARLEY/2", b"PARLEY/2\x20" + b"s" * 31])
def test_head_too_short_for_its_signature(head: bytes) -> None:
    with pytest.raises(FrameLayoutError, match="too short for"):
        wire.decode([head, msgpack.packb(STATUS_BODY)])


def test_signature_length_must_be_0_or_32() -> None:
    frames = build_frames(STATUS_BODY)
    frames[0] = b"PARLEY/2\x05" + b"12345" + frames[0][9:]
    with pytest.raises(FrameLayoutError, match="signature length must be 0 or 32, got 5"):
        wire.decode(frames)


def test_a_version_1_envelope_is_a_version_mismatch() -> None:
    # Version 1: [identity] delimiter, signature, header, parent, body, buffers.
    header = msgpack.packb(header_map(version=1))
    frames = [b"id", b"<PARLEY|MSG>", b"", header, msgpack.packb({}), msgpack.packb(STATUS_BODY)]
    with pytest.raises(VersionMismatch, match=r"expected protocol version 2 \(a head frame starting b'PARLEY/2'\), got an envelope of version 1"):
        wire.decode(frames)


def test_a_head_of_another_layout_version_is_a_version_mismatch() -> None:
    frames = build_frames(STATUS_BODY)
    frames[0] = b"PARLEY/3" + frames[0][8:]
    with pytest.raises(VersionMismatch, match="got an envelope of version 3"):
        wire.decode(frames)


def test_head_that_is_not_an_array_of_two_maps() -> None:
    for payload, expected in (
        (msgpack.packb({"a": 1}), "head must be a msgpack array \\[header, parent header\\], got dict"),
        (msgpack.packb([{}, {}, {}]), "head must be a msgpack array \\[header, parent header\\], got an array of 3"),
        (b"\x92\xc1", "head is not valid msgpack"),
    ):
        with pytest.raises(MalformedPayload, match=expected):
            wire.decode([head_frame(b"", payload), msgpack.packb(STATUS_BODY)])


def test_unreferenced_buffer_frame_is_a_frame_layout_error() -> None:
    with pytest.raises(FrameLayoutError, match=r"1 buffer frame\(s\) arrived but the body refers to 0"):
        wire.decode(build_frames(STATUS_BODY, buffers=(b"spare",)))


def test_array_placeholder_past_the_buffers() -> None:
    body = observation_body(array_ext(3, "|b1", [2]))
    with pytest.raises(FrameLayoutError, match=r"array refers to buffer 3 but 1 buffer frame\(s\) arrived"):
        wire.decode(build_frames(body, buffers=(b"\x00\x01",)))


def test_buffer_size_must_match_dtype_and_shape() -> None:
    body = observation_body(array_ext(0, "<f4", [2, 2]))
    with pytest.raises(FieldError, match=r"array float32\[2, 2\] needs 16 bytes, buffer 0 has 12"):
        wire.decode(build_frames(body, buffers=(bytes(12),)))
    with pytest.raises(FieldError, match=r"array float32\[2, 2\] needs 16 bytes, buffer 0 has 20"):
        wire.decode(build_frames(body, buffers=(bytes(20),)))


def test_whole_frame_placeholder_with_an_offset_is_refused() -> None:
    body = observation_body(msgpack.ExtType(1, placeholder_bytes(0, DTYPE_CODES.index("<f4"), 0, 4, [2])))
    with pytest.raises(FieldError, match=r"array float32\[2\] fills buffer 0: its offset must be 0, got 4"):
        wire.decode(build_frames(body, buffers=(bytes(12),)))


def test_packed_array_must_fit_in_its_frame() -> None:
    placeholder = array_ext(0, "<f4", [2], offset=8)
    with pytest.raises(FieldError, match=r"array float32\[2\] at offset 8 needs 8 bytes, buffer 0 has 12"):
        wire.decode(build_frames(observation_body(placeholder), buffers=(bytes(12),)))
    # The same slice in a 16-byte frame is fine.
    frames = build_frames(
        observation_body(placeholder), header=header_map("env.observation"), buffers=(bytes(8) + np.float32([1, 2]).tobytes(),)
    )
    received = wire.decode(frames)
    assert received.message.episode_start.tolist() == [1.0, 2.0]


def test_huge_packed_shape_cannot_wrap_around() -> None:
    placeholder = array_ext(0, "<f8", [2**61, 8], offset=0)
    with pytest.raises(FieldError, match=r"at offset 0 needs 147573952589676412928 bytes, buffer 0 has 8"):
        wire.decode(build_frames(observation_body(placeholder), buffers=(bytes(8),)))


def test_huge_declared_shape_cannot_wrap_around_to_match_a_short_buffer() -> None:
    # 2**32 * 2**32 bytes would overflow a 64-bit product to 0 and "match" an empty buffer.
    body = observation_body(array_ext(0, "|u1", [2**32, 2**32]))
    with pytest.raises(FieldError, match=r"needs 18446744073709551616 bytes, buffer 0 has 0"):
        wire.decode(build_frames(body, buffers=(b"",)))


@pytest.mark.parametrize("code", [12, 13, 99, 255])
def test_dtype_code_outside_the_whitelist_is_refused(code: int) -> None:
    body = observation_body(msgpack.ExtType(1, placeholder_bytes(0, code, 0, 0, [1])))
    with pytest.raises(FieldError, match=rf"array dtype code {code} is not allowed; expected 0..11 \(\|b1, "):
        wire.decode(build_frames(body, buffers=(bytes(8),)))


def test_dtype_codes_follow_the_spec() -> None:
    assert list(wire.WIRE_DTYPE_CODES) == DTYPE_CODES and set(DTYPE_CODES) == WIRE_DTYPES


@pytest.mark.parametrize(
    "placeholder",
    [
        b"",
        b"\x00\x0a",
        placeholder_bytes(0, 10, 0, 0, [1])[:-1],  # a dimension cut short
        placeholder_bytes(0, 10, 0, 0, [1]) + b"\x00",  # a byte too many
        placeholder_bytes(0, 10, 0, 0, [1], ndim=2),  # ndim says 2, one dimension follows
        placeholder_bytes(2, 10, 0, 0, [1]),  # kind 2 does not exist
        placeholder_bytes(0, 10, 0, 0, [1] * 33),  # over 32 dimensions
        msgpack.packb([0, "<f4", [1]]),  # version 1's msgpack placeholder
    ],
)
def test_malformed_array_placeholder(placeholder: bytes) -> None:
    body = observation_body(msgpack.ExtType(1, placeholder))
    with pytest.raises(MalformedPayload, match=r"array placeholder must be kind \(0 or 1\), dtype, ndim"):
        wire.decode(build_frames(body, buffers=(bytes(4),)))


def test_extension_type_with_another_code() -> None:
    body = observation_body(msgpack.ExtType(5, b"whatever"))
    with pytest.raises(MalformedPayload, match=r"unknown msgpack extension code 5 \(expected 1 for arrays\)"):
        wire.decode(build_frames(body))
    # Negative codes are reserved by msgpack; ExtType cannot build them, so write the bytes:
    # a map {"step": fixext1(code -5, 0x00)}.
    raw_body = b"\x81" + msgpack.packb("step") + b"\xd4\xfb\x00"
    with pytest.raises(MalformedPayload, match="unknown msgpack extension code -5"):
        wire.decode(build_frames(None, raw_body=raw_body))


def test_too_many_dimensions_is_a_protocol_error() -> None:
    body = observation_body(array_ext(0, "|u1", [1] * 100))
    with pytest.raises(ProtocolError):
        wire.decode(build_frames(body, buffers=(b"\x01",)))


# --------------------------------------------------------------------------- signature


def test_signed_frames_decode_with_the_key() -> None:
    assert wire.decode(build_frames(STATUS_BODY, key=KEY), key=KEY).message.step == 3


def test_tampered_body_breaks_the_signature() -> None:
    frames = build_frames(STATUS_BODY, key=KEY)
    frames[1] = msgpack.packb({**STATUS_BODY, "step": 4})
    with pytest.raises(SignatureError, match="signature does not match the run key"):
        wire.decode(frames, key=KEY)


def test_signature_from_another_key() -> None:
    with pytest.raises(SignatureError, match="does not match the run key"):
        wire.decode(build_frames(STATUS_BODY, key=b"intruder"), key=KEY)


def test_unsigned_frames_to_a_keyed_receiver() -> None:
    with pytest.raises(SignatureError, match="missing signature: this run signs every message"):
        wire.decode(build_frames(STATUS_BODY), key=KEY)


def test_headers_packed_once_per_sender_stay_apart() -> None:
    # The header's constant part is cached per (sender, run id) and per message type: messages
    # from several senders and of several types, interleaved, each decode to their own header.
    cases = [("agent_0", "run-a", Status("n", "s", 1, 1)), ("agent_1", "run-a", m_reset()),
             ("agent_0", "run-b", m_reset()), ("agent_0", "run-a", m_reset()), ("agent_1", "run-a", Status("n", "s", 2, 1))]
    for seq, (sender, run_id, message) in enumerate(cases * 2):
        header = wire.decode(wire.encode(message, sender=sender, run_id=run_id, seq=seq)).header
        assert (header.sender, header.run_id, header.msg_type, header.seq) == (sender, run_id, message.MSG_TYPE, seq)
        assert header.version == PROTOCOL_VERSION and type(header.sent_at) is float


def m_reset() -> Any:
    from protocols.codec.messages import EnvReset

    return EnvReset(seed=3)


def test_signed_frames_to_an_unsigned_receiver() -> None:
    with pytest.raises(SignatureError, match="unexpected signature: this run is unsigned"):
        wire.decode(build_frames(STATUS_BODY, key=KEY))


def test_signature_is_checked_before_the_payload_is_parsed() -> None:
    # Garbage under a bad signature must be reported as a signature problem: an unauthenticated
    # peer gets no feedback about what the parser thought of its bytes.
    frames = build_frames(None, raw_body=b"\xc1\xc1", key=b"intruder")
    with pytest.raises(SignatureError):
        wire.decode(frames, key=KEY)


# --------------------------------------------------------------------------- header


def test_other_protocol_version() -> None:
    with pytest.raises(VersionMismatch, match=f"expected protocol version {PROTOCOL_VERSION}, got 999"):
        wire.decode(build_frames(STATUS_BODY, header=header_map(version=999)))


def test_missing_version_is_a_version_mismatch() -> None:
    header = header_map()
    del header["version"]
    with pytest.raises(VersionMismatch, match="got None"):
        wire.decode(build_frames(STATUS_BODY, header=header))


def test_version_is_checked_before_other_header_fields() -> None:
    # A newer peer may have changed the other header fields: it must hear about the version.
    with pytest.raises(VersionMismatch):
        wire.decode(build_frames(STATUS_BODY, header={"version": PROTOCOL_VERSION + 1, "totally": "different"}))


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("msg_id", None, "header field 'msg_id' must be str, got None"),
        ("seq", "7", "header field 'seq' must be int, got '7'"),
        ("seq", True, "header field 'seq' must be int, got True"),
        ("sent_at", "now", "header field 'sent_at' must be float, got 'now'"),
        ("sender", 5, "header field 'sender' must be str, got 5"),
    ],
)
def test_header_field_of_wrong_type(name: str, value: Any, expected: str) -> None:
    with pytest.raises(MalformedPayload, match=expected):
        wire.decode(build_frames(STATUS_BODY, header=header_map(**{name: value})))


def test_header_sent_at_accepts_an_int() -> None:
    envelope = wire.decode(build_frames(STATUS_BODY, header=header_map(sent_at=12)))
    assert envelope.header.sent_at == 12.0 and type(envelope.header.sent_at) is float


def test_header_that_is_not_a_map() -> None:
    with pytest.raises(MalformedPayload, match="header must be a msgpack map, got list"):
        wire.decode(build_frames(STATUS_BODY, raw_header=msgpack.packb([1, 2])))


def test_unknown_message_type_names_it_and_the_known_ones() -> None:
    with pytest.raises(UnknownMessageType, match=r"unknown msg_type 'env\.teleport'; known: \[.*'control\.status'"):
        wire.decode(build_frames(STATUS_BODY, header=header_map("env.teleport")))


# --------------------------------------------------------------------------- msgpack strictness


@pytest.mark.parametrize(
    ("raw_body", "what"),
    [
        (b"", "empty"),
        (b"\xc1", "reserved byte 0xc1"),
        (msgpack.packb(STATUS_BODY)[:-1], "truncated"),
        (msgpack.packb(STATUS_BODY) + b"\x00", "trailing data"),
        (b"\x81\xa1a\xdb\xff\xff\xff\xff", "string longer than the frame"),
        (b"\xdd\xff\xff\xff\xff", "array of 2**32-1 items declared"),
        (b"\xdf\xff\xff\xff\xff", "map of 2**32-1 pairs declared"),
        (b"\x91" * 100_000 + b"\xc0", "100k nested arrays"),
        (b"\x81\xa1s\xa2\xff\xfe", "invalid utf-8 in a str"),
    ],
)
def test_bad_body_msgpack_is_malformed_payload(raw_body: bytes, what: str) -> None:
    with pytest.raises(MalformedPayload, match="body is not valid msgpack"):
        wire.decode(build_frames(None, raw_body=raw_body))


@pytest.mark.parametrize("bad_key", [1, 2.5, None, True])
def test_non_string_map_keys_are_malformed(bad_key: Any) -> None:
    raw_body = msgpack.packb({**STATUS_BODY, "extra": {bad_key: 1.0}}, strict_types=False)
    with pytest.raises(MalformedPayload, match="body is not valid msgpack"):
        wire.decode(build_frames(None, raw_body=raw_body))
    raw_header = msgpack.packb({**header_map(), bad_key: 1})
    with pytest.raises(MalformedPayload, match="head is not valid msgpack"):  # header and parent travel in the head
        wire.decode(build_frames(STATUS_BODY, raw_header=raw_header))


def test_bytes_map_key_in_a_typed_map_is_a_field_error() -> None:
    with pytest.raises(FieldError, match=r"control\.status\.extra key: expected str, got bytes"):
        wire.decode(build_frames({**STATUS_BODY, "extra": {b"loss": 1.0}}))


def test_bad_parent_header() -> None:
    header = msgpack.packb(header_map())
    frames = [head_frame(b"", b"\x92" + header + b"\x93"), msgpack.packb(STATUS_BODY)]  # an array of 3 with no items
    with pytest.raises(MalformedPayload, match="head is not valid msgpack"):
        wire.decode(frames)
    frames[0] = head_frame(b"", b"\x92" + header + msgpack.packb("parent"))
    with pytest.raises(MalformedPayload, match="parent header must be a msgpack map, got str"):
        wire.decode(frames)


# --------------------------------------------------------------------------- fuzzing


def _valid_frames(draw: st.DrawFn) -> tuple[list[bytes], int, bytes]:
    msg_type = draw(st.sampled_from(ALL_MSG_TYPES), label="msg_type")
    message = draw(message_strategy(msg_type), label="message")
    identities = draw(identity_frames, label="identities")
    key = draw(keys, label="key")
    frames = as_bytes_frames(wire.encode(message, sender="s", run_id="r", seq=1, identities=identities, key=key))
    return frames, len(identities), key


@st.composite
def mangled_frames(draw: st.DrawFn) -> tuple[list[bytes], list[bytes], int, bytes]:
    frames, n_identities, key = _valid_frames(draw)
    original = list(frames)
    for _ in range(draw(st.integers(1, 3), label="mutations")):
        kind = draw(st.sampled_from(["flip", "delete", "insert", "truncate", "drop", "duplicate", "add", "swap", "replace"]))
        index = draw(st.integers(0, max(len(frames) - 1, 0)))
        if not frames:
            frames.append(draw(st.binary(max_size=16)))
            continue
        frame = bytearray(frames[index])
        if kind in ("flip", "delete", "truncate") and not frame:
            kind = "insert"  # nothing to flip, delete or cut in an empty frame
        if kind == "flip":
            position = draw(st.integers(0, len(frame) - 1))
            frame[position] ^= draw(st.integers(1, 255))
            frames[index] = bytes(frame)
        elif kind == "delete":
            position = draw(st.integers(0, len(frame) - 1))
            del frame[position]
            frames[index] = bytes(frame)
        elif kind == "insert":
            position = draw(st.integers(0, len(frame)))
            frame[position:position] = draw(st.binary(min_size=1, max_size=4))
            frames[index] = bytes(frame)
        elif kind == "truncate":
            frames[index] = bytes(frame[: draw(st.integers(0, len(frame) - 1))])
        elif kind == "drop":
            del frames[index]
        elif kind == "duplicate":
            frames.insert(index, frames[index])
        elif kind == "add":
            frames.insert(draw(st.integers(0, len(frames))), draw(st.binary(max_size=24)))
        elif kind == "swap":
            other = draw(st.integers(0, len(frames) - 1))
            frames[index], frames[other] = frames[other], frames[index]
        else:
            frames[index] = draw(st.binary(max_size=32))
    return frames, original, n_identities, key


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=mangled_frames())
def test_mangled_frames_give_a_protocol_error_and_nothing_else(case: tuple) -> None:
    frames, original, n_identities, key = case
    try:
        envelope = wire.decode(frames, key=key)
    except ProtocolError as error:
        assert str(error), f"{type(error).__name__} without a message"
        return
    # Some changes leave a valid message (a flipped bit inside a string or an array buffer, an
    # added identity frame). With a key, though, nothing signed may have changed.
    assert envelope.msg_type in MESSAGE_TYPES
    if key:
        split = next(i for i, frame in enumerate(frames) if frame.startswith(b"PARLEY/2"))
        signed = original[n_identities : n_identities + 2]
        assert frames[split : split + 2] == signed, "a changed head or body passed the signature check"


@settings(max_examples=200, deadline=None)
@given(
    frames=st.lists(st.binary(max_size=40), max_size=8),
    head_at=st.none() | st.integers(0, 8),
    head_rest=st.binary(max_size=40),
    key=keys,
)
def test_random_frames_give_a_protocol_error(frames: list[bytes], head_at: int | None, head_rest: bytes, key: bytes) -> None:
    if head_at is not None:
        frames.insert(min(head_at, len(frames)), b"PARLEY/2" + head_rest)
    with pytest.raises(ProtocolError):
        wire.decode(frames, key=key)


# Arbitrary msgpack content for a body: values of every msgpack type, including extension types
# with random codes, array placeholders with random index/dtype/shape, and maps keyed by the
# message's own field names so that type checking (not just "unknown field") is exercised.
_placeholders = st.builds(
    lambda kind, code, index, offset, shape: msgpack.ExtType(1, placeholder_bytes(kind, code, index, offset, shape)),
    st.integers(0, 3),
    st.integers(0, 14),
    st.integers(0, 4),
    st.integers(0, 16) | st.just(2**40),
    st.lists(st.integers(0, 5) | st.just(2**40), max_size=4),
) | st.builds(msgpack.ExtType, st.just(1), st.binary(max_size=40))
_random_msgpack = st.recursive(
    st.one_of(
        wire_scalars,
        st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=12)),
        st.builds(msgpack.Timestamp, st.integers(0, 2**34 - 1), st.integers(0, 999_999_999)),
        _placeholders,
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=10,
)


@st.composite
def random_bodies(draw: st.DrawFn) -> tuple[str, bytes, list[bytes]]:
    msg_type = draw(st.sampled_from(ALL_MSG_TYPES))
    names = [f.name for f in dataclasses.fields(MESSAGE_TYPES[msg_type])]
    field_names = st.sampled_from(names) | st.text(max_size=4) if names else st.text(max_size=4)
    body = draw(st.dictionaries(field_names, _random_msgpack, max_size=len(names) + 2))
    buffers = draw(st.lists(st.binary(max_size=48), max_size=3))
    return msg_type, msgpack.packb(body, use_bin_type=True), buffers


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=random_bodies(), key=keys)
def test_random_bodies_give_a_message_or_a_protocol_error(case: tuple, key: bytes) -> None:
    msg_type, raw_body, buffers = case
    frames = build_frames(None, header=header_map(msg_type), raw_body=raw_body, buffers=tuple(buffers), key=key)
    try:
        envelope = wire.decode(frames, key=key)
    except ProtocolError as error:
        assert str(error)
    else:
        assert type(envelope.message) is MESSAGE_TYPES[msg_type]


# --------------------------------------------------------------------------- duplicate keys and claimed senders


def raw_map(pairs: list[tuple[Any, Any]]) -> bytes:
    """A msgpack map written out pair by pair, so a key may repeat (msgpack.packb of a dict cannot)."""
    assert len(pairs) < 16
    return bytes([0x80 | len(pairs)]) + b"".join(msgpack.packb(k) + msgpack.packb(v, use_bin_type=True) for k, v in pairs)


def test_a_repeated_body_key_is_malformed_and_named() -> None:
    body = raw_map([("node_id", "agent_0"), ("state", "running"), ("step", 3), ("episode", 1), ("step", 4)])
    with pytest.raises(MalformedPayload, match="body: a msgpack map repeats the key 'step'; keys must be unique"):
        wire.decode(build_frames(None, raw_body=body))


def test_a_repeated_key_in_a_nested_map_is_malformed() -> None:
    nested = raw_map([("agent_0", 1.0), ("agent_0", 2.0)])
    body = bytes([0x82]) + msgpack.packb("step") + msgpack.packb(1) + msgpack.packb("rewards") + nested
    with pytest.raises(MalformedPayload, match="repeats the key 'agent_0'"):
        wire.decode(build_frames(None, header=header_map("env.observation"), raw_body=body))


def test_a_repeated_header_key_is_malformed_even_when_signed() -> None:
    # Two `sender` entries: whichever one a reader took, it would not be the one the other took.
    header = raw_map([*header_map().items(), ("sender", "agent_1")])
    frames = build_frames(STATUS_BODY, raw_header=header, key=KEY)
    with pytest.raises(MalformedPayload, match="head: a msgpack map repeats the key 'sender'"):
        wire.decode(frames, key=KEY)


def test_a_head_over_its_bound_is_refused_before_it_is_parsed() -> None:
    frames = build_frames(STATUS_BODY, header=header_map(sender="x" * wire.MAX_HEAD_BYTES))
    with pytest.raises(FrameLayoutError, match=f"over the {wire.MAX_HEAD_BYTES} bytes a head may have"):
        wire.decode(frames, key=lambda sender: pytest.fail(f"key asked for a {len(sender)}-character sender"))


@pytest.mark.parametrize("sender", ["", "x" * 65, "agent 0", "agent_0\n", "../env", "~agent_0", "ägent"])
def test_a_sender_that_is_not_a_node_id_is_malformed(sender: str) -> None:
    with pytest.raises(MalformedPayload, match="is not a node id"):
        wire.decode(build_frames(STATUS_BODY, header=header_map(sender=sender)))


def test_the_refusal_of_a_long_sender_quotes_only_its_start() -> None:
    with pytest.raises(MalformedPayload) as refused:
        wire.decode(build_frames(STATUS_BODY, header=header_map(sender="y" * 10_000)))
    assert "(10000 characters)" in str(refused.value) and len(str(refused.value)) < 400


class KeyCalls:
    """A per-node key function that records what it was asked (what `auth.signing_keys` gives)."""

    def __init__(self, nodes: dict[str, bytes]) -> None:
        self.nodes = nodes
        self.asked: list[str] = []

    def __call__(self, sender: str) -> bytes:
        self.asked.append(sender)
        return self.nodes.get(sender, b"")


def test_an_unsigned_message_is_refused_before_the_claimed_sender_is_looked_up() -> None:
    keys = KeyCalls({"agent_0": KEY})
    for sender in ("agent_0", "agent_99", "z" * 8000):
        with pytest.raises(SignatureError, match="missing signature"):
            wire.decode(build_frames(STATUS_BODY, header=header_map(sender=sender)), key=keys)
    assert keys.asked == []


def test_a_signed_claim_is_looked_up_only_when_it_is_a_node_id() -> None:
    keys = KeyCalls({"agent_0": KEY})
    with pytest.raises(SignatureError, match="is not a node id"):
        wire.decode(build_frames(STATUS_BODY, header=header_map(sender="z" * 8000), key=b"forged" * 6), key=keys)
    assert keys.asked == []
    with pytest.raises(SignatureError, match="no signing key for 'agent_99', the sender the header claims: not a node of this run"):
        wire.decode(build_frames(STATUS_BODY, header=header_map(sender="agent_99"), key=b"forged" * 6), key=keys)
    assert wire.decode(build_frames(STATUS_BODY, key=KEY), key=keys).sender == "agent_0"
    assert keys.asked == ["agent_99", "agent_0"]


def test_a_packed_claim_is_checked_like_a_header() -> None:
    keys = KeyCalls({"agent_0": KEY})
    with pytest.raises(SignatureError, match="missing signature"):
        wire.decode(wire.encode_packed("env.action", b"", sender="w" * 200, seq=1), key=keys)
    with pytest.raises(SignatureError, match="is not a node id"):
        wire.decode(wire.encode_packed("env.action", b"", sender="w" * 200, seq=1, key=KEY), key=keys)
    assert keys.asked == []
    with pytest.raises(MalformedPayload, match="packed head: sender 'a b' is not a node id"):
        wire.decode(wire.encode_packed("env.action", b"", sender="a b", seq=1))


_claims = st.one_of(
    st.text(max_size=80),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz_0123456789.-", min_size=1, max_size=70),
    st.integers(1, 15_000).map(lambda size: "n" * size),
    st.sampled_from(["agent_0", "agent_1", "env"]),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(claimed=_claims, signer=st.sampled_from(["agent_0", "agent_1", "env", "nobody"]),
       duplicate=st.sampled_from([None, "head", "body"]))
def test_fuzzed_claims_and_duplicate_keys_give_a_protocol_error_or_an_honest_sender(claimed: str, signer: str, duplicate: str | None) -> None:
    """Any claimed sender, signed by anyone or nobody, with or without a repeated key in the
    header or the body: the key function sees only node ids and only when a signature came, and
    what passes was signed by the node it names and repeats no key."""
    node_keys = {node: hashlib.sha256(node.encode()).digest() for node in ("agent_0", "agent_1", "env")}
    keys = KeyCalls(node_keys)
    header = raw_map([*header_map(sender=claimed).items(), *([("seq", 8)] if duplicate == "head" else [])])
    body = raw_map([*STATUS_BODY.items(), *([("state", "paused")] if duplicate == "body" else [])])
    frames = build_frames(None, raw_header=header, raw_body=body, key=node_keys.get(signer, b""))
    try:
        envelope = wire.decode(frames, key=keys)
    except ProtocolError as error:
        assert str(error) and len(str(error)) < 1000  # a claim of 15,000 characters is not echoed back
    else:
        assert envelope.sender == claimed == signer and not duplicate
    assert all(wire.NODE_ID_FORM.fullmatch(asked) for asked in keys.asked)
    assert len(keys.asked) <= (signer != "nobody")


def test_a_packed_sender_under_the_run_key_must_be_a_node_id_too() -> None:
    with pytest.raises(MalformedPayload, match="packed head: sender 'a b' is not a node id"):
        wire.decode(wire.encode_packed("env.action", b"", sender="a b", seq=1, key=KEY), key=KEY)

# --------------------------------------------------------------------------- fuzzing past the signature
# The fuzz above changes signed frames, so with a key the decoder stops at the signature. Here the
# changed body and buffers are signed again with the run's key (what a node of the run, or a
# bug in one, could send): the decoder must get past the header and the signature and still
# refuse bad array placeholders, dtypes, shapes, offsets and msgpack bombs with a ProtocolError.

MSGPACK_BOMBS = [
    b"\xdd\xff\xff\xff\xff",  # an array of 4 G elements, none present
    b"\xdf\xff\xff\xff\xff",  # a map of 4 G pairs
    b"\xc6\xff\xff\xff\xff",  # 4 GiB of bin
    b"\xc9\xff\xff\xff\xff\x01",  # an ext of 4 GiB
    b"\x91" * 100_000 + b"\xc0",  # 100,000 nested arrays
    b"\x81\xa1k" * 50_000 + b"\xc0",  # 50,000 nested maps
    b"\x81\xa4step" + b"\xdc\xff\xff" + b"\xc0" * 0xFFFF,  # 65,535 nils where a number belongs
]


def _resigned(frames: list[bytes], n_identities: int, key: bytes) -> list[bytes]:
    head = frames[n_identities]
    payload = head[len(b"PARLEY/2") + 1 + head[len(b"PARLEY/2")] :]
    body, buffers = frames[n_identities + 1], frames[n_identities + 2 :]
    return [*frames[:n_identities], head_frame(sign(key, payload, body, *buffers), payload), body, *buffers]


def _placeholders(value: Any) -> list[msgpack.ExtType]:
    if isinstance(value, msgpack.ExtType):
        return [value]
    if isinstance(value, dict):
        return [found for item in value.values() for found in _placeholders(item)]
    if isinstance(value, list):
        return [found for item in value for found in _placeholders(item)]
    return []


def _replace(value: Any, old: msgpack.ExtType, new: msgpack.ExtType) -> Any:
    if value is old:
        return new
    if isinstance(value, dict):
        return {name: _replace(item, old, new) for name, item in value.items()}
    if isinstance(value, list):
        return [_replace(item, old, new) for item in value]
    return value


@st.composite
def resigned_bodies(draw: st.DrawFn) -> list[bytes]:
    msg_type = draw(st.sampled_from(ALL_MSG_TYPES), label="msg_type")
    message = draw(message_strategy(msg_type), label="message")
    frames = as_bytes_frames(wire.encode(message, sender="s", run_id="r", seq=1, key=KEY))
    body = msgpack.unpackb(frames[1], raw=False, strict_map_key=False, ext_hook=msgpack.ExtType)
    placeholders = _placeholders(body)
    kinds = ["bomb", "flip_body", "flip_buffer", "field"] + (["placeholder"] if placeholders else [])
    kind = draw(st.sampled_from(kinds), label="kind")
    if kind == "bomb":
        frames[1] = draw(st.sampled_from(MSGPACK_BOMBS))
    elif kind == "flip_body" and frames[1]:
        body_bytes = bytearray(frames[1])
        body_bytes[draw(st.integers(0, len(body_bytes) - 1))] ^= draw(st.integers(1, 255))
        frames[1] = bytes(body_bytes)
    elif kind == "flip_buffer" and len(frames) > 2 and frames[2]:
        buffer = bytearray(frames[2])
        buffer[draw(st.integers(0, len(buffer) - 1))] ^= draw(st.integers(1, 255))
        frames[2] = bytes(buffer)
    elif kind == "field" and isinstance(body, dict) and body:
        name = draw(st.sampled_from(sorted(body, key=str)))
        body[name] = draw(st.one_of(st.none(), st.integers(-(2**63), 2**64 - 1), st.floats(), st.text(max_size=8),
                                    st.binary(max_size=8), st.lists(st.integers(-(2**63), 2**64 - 1), max_size=3)))
        frames[1] = msgpack.packb(body, use_bin_type=True)
    elif kind == "placeholder":
        old = draw(st.sampled_from(placeholders))
        data = bytearray(old.data)
        # kind, dtype code, ndim (one byte each), buffer index (2 bytes), offset (8), then ndim dimensions (8 each)
        position = draw(st.sampled_from([0, 1, 2, 3, 5, *range(13, len(data), 8)]))
        width = 1 if position < 3 else 2 if position == 3 else 8
        value = draw(st.integers(0, 2 ** (8 * width) - 1))
        data[position : position + width] = value.to_bytes(width, "little")
        code = draw(st.sampled_from([old.code, old.code, 0, 2, 127]))
        frames[1] = msgpack.packb(_replace(body, old, msgpack.ExtType(code, bytes(data))), use_bin_type=True)
    return _resigned(frames, 0, KEY)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(frames=resigned_bodies())
def test_a_re_signed_bad_body_is_a_protocol_error_past_the_signature(frames: list[bytes]) -> None:
    try:
        envelope = wire.decode(frames, key=KEY)
    except SignatureError as error:  # the frames were signed again: the signature must pass
        raise AssertionError(f"re-signed frames failed the signature check: {error}") from None
    except ProtocolError as error:
        assert str(error), f"{type(error).__name__} without a message"
        return
    # Some changes leave a valid message (a flipped bit inside an array buffer or a string).
    assert envelope.msg_type in MESSAGE_TYPES


@pytest.mark.parametrize("bomb", MSGPACK_BOMBS, ids=range(len(MSGPACK_BOMBS)))
def test_msgpack_bombs_in_a_signed_body_are_refused_quickly(bomb: bytes) -> None:
    frames = _resigned(as_bytes_frames(wire.encode(Status("n", "s", 1, 1), sender="s", run_id="r", seq=1, key=KEY)), 0, KEY)
    frames = _resigned([frames[0], bomb], 0, KEY)
    started = time.monotonic()
    with pytest.raises((MalformedPayload, FieldError)):
        wire.decode(frames, key=KEY)
    assert time.monotonic() - started < 1.0
