"""Tests of the message registry and body validation (`protocols/codec/messages.py`).

Messages registered here for the test are removed again by the `scratch_registry` fixture, so
the registry other tests see is the real one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from protocols.codec import messages
from protocols.codec.errors import FieldError, UnknownMessageType
from protocols.codec.messages import (
    MESSAGE_TYPES,
    WIRE_DTYPES,
    Status,
    from_body,
    message_class,
    register_message,
    require_array,
    to_body,
)

pytestmark = pytest.mark.timeout(20)


@pytest.fixture
def scratch_registry():
    before = dict(MESSAGE_TYPES)
    checkers_before = dict(messages._FIELD_CHECKERS)
    yield
    MESSAGE_TYPES.clear()
    MESSAGE_TYPES.update(before)
    messages._FIELD_CHECKERS.clear()
    messages._FIELD_CHECKERS.update(checkers_before)


# --------------------------------------------------------------------------- registration


def test_registering_a_non_frozen_dataclass_raises(scratch_registry) -> None:
    @dataclass
    class Mutable:
        x: int

    with pytest.raises(TypeError, match="Mutable must be a frozen dataclass"):
        register_message("test.mutable")(Mutable)
    assert "test.mutable" not in MESSAGE_TYPES


def test_registering_a_plain_class_raises(scratch_registry) -> None:
    class NotADataclass:
        x: int = 0

    with pytest.raises(TypeError, match="NotADataclass must be a frozen dataclass"):
        register_message("test.plain")(NotADataclass)
    assert "test.plain" not in MESSAGE_TYPES


def test_a_second_class_for_a_registered_type_raises_and_the_first_stays(scratch_registry) -> None:
    @register_message("test.once")
    @dataclass(frozen=True)
    class First:
        x: int

    @dataclass(frozen=True)
    class Second:
        y: int

    # A type registered here and a core type alike.
    for msg_type, first in (("test.once", First), ("control.status", Status)):
        with pytest.raises(ValueError, match=f"message type '{msg_type}' registered twice"):
            register_message(msg_type)(Second)
        assert MESSAGE_TYPES[msg_type] is first
    assert First.MSG_TYPE == "test.once"
    assert not hasattr(Second, "MSG_TYPE")


def test_message_class_of_an_unknown_type_lists_the_known_ones() -> None:
    assert message_class("control.status") is Status
    with pytest.raises(UnknownMessageType, match=r"unknown msg_type 'no\.such'; known: \[.*'control\.status'.*\]"):
        message_class("no.such")


def test_every_core_message_is_a_registered_frozen_dataclass() -> None:
    for msg_type, cls in MESSAGE_TYPES.items():
        assert cls.MSG_TYPE == msg_type
        assert cls.__dataclass_params__.frozen, msg_type


def test_wire_dtypes_are_native_numeric_and_bool_only() -> None:
    assert WIRE_DTYPES == {
        "|b1", "|i1", "<i2", "<i4", "<i8", "|u1", "<u2", "<u4", "<u8", "<f2", "<f4", "<f8",
    }


# --------------------------------------------------------------------------- from_body / to_body


def test_to_body_is_the_fields_in_order() -> None:
    status = Status("n", "running", 3, 1, extra={"a": 1.0})
    assert list(to_body(status)) == ["node_id", "state", "step", "episode", "last_return", "msgs_per_s", "extra"]
    assert to_body(status)["extra"] == {"a": 1.0}


def test_from_body_checks_nested_annotations(scratch_registry) -> None:
    @register_message("test.nested")
    @dataclass(frozen=True)
    class Nested:
        pairs: tuple[int, ...]
        fixed: tuple[str, float]
        table: dict[str, list[int]]
        blob: bytes
        maybe: int | None = None
        anything: Any = None
        items: list[str] = field(default_factory=list)

    body = {"pairs": [1, 2], "fixed": ["a", 1], "table": {"k": [1, 2]}, "blob": b"\x00", "anything": {"x": [1]}}
    message = from_body("test.nested", body)
    assert message == Nested(pairs=(1, 2), fixed=("a", 1.0), table={"k": [1, 2]}, blob=b"\x00", anything={"x": [1]})
    assert type(message.fixed[1]) is float

    bad_cases = {
        "pairs": ([1, "2"], r"test\.nested\.pairs\[1\]: expected int, got str"),
        "fixed": (["a", 1, 2], r"test\.nested\.fixed: expected tuple\[str, float\], got list"),
        "table": ({"k": [1, None]}, r"test\.nested\.table\['k'\]\[1\]: expected int, got NoneType"),
        "blob": ("text", r"test\.nested\.blob: expected bytes, got str"),
        "maybe": (1.5, r"test\.nested\.maybe: expected int \| None, got float"),
        "items": ({"a": 1}, r"test\.nested\.items: expected list\[str\], got dict"),
    }
    for name, (value, expected) in bad_cases.items():
        with pytest.raises(FieldError, match=expected):
            from_body("test.nested", {**body, name: value})


def test_unsupported_annotation_is_a_type_error_naming_the_field(scratch_registry) -> None:
    @register_message("test.unsupported")
    @dataclass(frozen=True)
    class Unsupported:
        tags: set[str]

    with pytest.raises(TypeError, match=r"test\.unsupported\.tags: unsupported annotation"):
        from_body("test.unsupported", {"tags": ["a"]})


def test_array_field_refuses_a_list() -> None:
    body = {
        "step": 1, "observations": {}, "rewards": {}, "terminated": {}, "truncated": {}, "active": {},
        "final_observations": {}, "episode_start": [True, False],
    }
    with pytest.raises(FieldError, match=r"env\.observation\.episode_start: expected a numpy array, got list"):
        from_body("env.observation", body)
    with pytest.raises(FieldError, match=r"env\.observation\.rewards\['a'\]: expected a numpy array, got float"):
        from_body("env.observation", {**body, "episode_start": np.zeros(1, bool), "rewards": {"a": 1.0}})


# --------------------------------------------------------------------------- require_array


def test_require_array_passes_and_returns_the_same_array() -> None:
    array = np.zeros((4, 3), dtype=np.float32)
    assert require_array(array, "obs", dtype=np.float32, shape=(4, 3)) is array
    assert require_array(array, "obs", dtype="float32", shape=(None, 3)) is array
    assert require_array(array, "obs", shape=(None, None)) is array
    assert require_array(array, "obs") is array


def test_require_array_wrong_dtype() -> None:
    with pytest.raises(FieldError, match=r"env\.action\.actions\['a'\]: expected dtype int64, got float32"):
        require_array(np.zeros(2, np.float32), "env.action.actions['a']", dtype=np.int64)


def test_require_array_wrong_number_of_dimensions() -> None:
    with pytest.raises(FieldError, match=r"obs: expected shape \(\*, 3\), got \(4, 3, 1\)"):
        require_array(np.zeros((4, 3, 1)), "obs", shape=(None, 3))
    with pytest.raises(FieldError, match=r"obs: expected shape \(\), got \(1,\)"):
        require_array(np.zeros(1), "obs", shape=())


def test_require_array_wrong_length() -> None:
    with pytest.raises(FieldError, match=r"obs: expected shape \(\*, 3\), got \(4, 2\)"):
        require_array(np.zeros((4, 2)), "obs", shape=(None, 3))
    with pytest.raises(FieldError, match=r"rewards: expected shape \(8,\), got \(7,\)"):
        require_array(np.zeros(7), "rewards", shape=(8,))


def test_require_array_checks_dtype_before_shape() -> None:
    with pytest.raises(FieldError, match="expected dtype bool"):
        require_array(np.zeros((2, 2), np.int8), "mask", dtype=bool, shape=(3,))


def test_checkers_are_per_class(scratch_registry) -> None:
    # Two classes with the same field name but different annotations must not share hints.
    @register_message("test.a")
    @dataclass(frozen=True)
    class A:
        value: int

    @register_message("test.b")
    @dataclass(frozen=True)
    class B:
        value: str

    assert from_body("test.a", {"value": 1}).value == 1
    assert from_body("test.b", {"value": "x"}).value == "x"
    with pytest.raises(FieldError):
        from_body("test.b", {"value": 1})


def test_the_task_spec_travels_as_a_typed_record_and_names_a_bad_field():
    from env_server.envs.reward_collection import parallel_env
    from protocols.codec import wire

    spec = parallel_env().task_spec()
    welcome = messages.EnvWelcome(
        env_name="reward_collection_v0", num_copies=1, agents=["agent_0"], possible_agents=["agent_0"],
        observation_spaces={}, action_spaces={}, autoreset=True, max_steps=None,
        task=messages.SiteCollectionTask(**spec),
    )
    received = wire.decode(wire.encode(welcome, sender="env", run_id="r", seq=1)).message
    assert isinstance(received.task, messages.SiteCollectionTask)
    assert received.task.as_spec() == spec
    body = to_body(welcome) | {"task": {**spec, "radius": "wide"}}
    with pytest.raises(FieldError, match=r"env.welcome.task.radius: expected float, got str"):
        from_body("env.welcome", body)
    body = to_body(welcome) | {"task": {k: v for k, v in spec.items() if k != "sites"}}
    with pytest.raises(FieldError, match=r"env.welcome.task: expected .*SiteCollectionTask \| None, got dict"):
        from_body("env.welcome", body)
