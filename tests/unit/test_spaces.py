"""Tests of the space codec (`protocols/codec/spaces.py`).

Every round trip goes through the real wire (`wire.encode` / `wire.decode` of an `env.welcome`),
so arrays inside encoded spaces travel as buffer frames the way the env server sends them. The
comparison is exact (dtype, shape, bounds bit for bit, Dict key order), stricter than gymnasium's
own `==`, which uses `np.allclose` for Box bounds.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import gymnasium.spaces as spaces
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from protocols.codec import wire
from protocols.codec.errors import FieldError
from protocols.codec.messages import WIRE_DTYPES, EnvWelcome
from protocols.codec.spaces import MAX_BOX_ENTRIES, MAX_NESTING, SPACE_KINDS, decode_space, encode_space

pytestmark = pytest.mark.timeout(30)


# --------------------------------------------------------------------------- helpers


def through_the_wire(observation_spaces: dict[str, spaces.Space], action_spaces: dict[str, spaces.Space]) -> EnvWelcome:
    welcome = EnvWelcome(
        env_name="test_env",
        num_copies=2,
        agents=list(observation_spaces),
        possible_agents=list(observation_spaces),
        observation_spaces={agent: encode_space(space) for agent, space in observation_spaces.items()},
        action_spaces={agent: encode_space(space) for agent, space in action_spaces.items()},
        autoreset=True,
        max_steps=25,
    )
    frames = wire.encode(welcome, sender="env_server", run_id="run", seq=0, key=b"k")
    received = [memoryview(frame).tobytes() for frame in frames]
    return wire.decode(received, key=b"k").message


def round_trip(space: spaces.Space) -> spaces.Space:
    received = through_the_wire({"agent_0": space}, {"agent_0": space})
    decoded = decode_space(received.observation_spaces["agent_0"], "observation_spaces['agent_0']")
    assert_same_space(space, decode_space(received.action_spaces["agent_0"]))
    return decoded


def assert_same_space(expected: spaces.Space, actual: spaces.Space, where: str = "space") -> None:
    assert type(actual) is type(expected), f"{where}: {type(actual).__name__} != {type(expected).__name__}"
    if isinstance(expected, spaces.Box):
        assert actual.dtype == expected.dtype, where
        assert actual.shape == expected.shape, where
        for name in ("low", "high"):
            e, a = getattr(expected, name), getattr(actual, name)
            assert a.dtype == e.dtype and a.shape == e.shape, f"{where}.{name}"
            assert np.array_equal(a, e), f"{where}.{name}: {a} != {e}"
    elif isinstance(expected, spaces.Discrete):
        assert (actual.n, actual.start, actual.dtype) == (expected.n, expected.start, expected.dtype), where
    elif isinstance(expected, spaces.MultiDiscrete):
        assert actual.dtype == expected.dtype, where
        assert actual.nvec.dtype == expected.nvec.dtype and np.array_equal(actual.nvec, expected.nvec), where
        assert np.array_equal(actual.start, expected.start), where
    elif isinstance(expected, spaces.MultiBinary):
        assert actual.n == expected.n and type(actual.n) is type(expected.n), where
        assert actual.shape == expected.shape, where
    elif isinstance(expected, spaces.Dict):
        assert list(actual.spaces) == list(expected.spaces), f"{where}: key order {list(actual.spaces)}"
        for key in expected.spaces:
            assert_same_space(expected[key], actual[key], f"{where}[{key!r}]")
    elif isinstance(expected, spaces.Tuple):
        assert len(actual.spaces) == len(expected.spaces), where
        for index, (e, a) in enumerate(zip(expected.spaces, actual.spaces)):
            assert_same_space(e, a, f"{where}[{index}]")
    else:
        raise AssertionError(f"{where}: no comparison for {type(expected).__name__}")
    assert actual == expected, where


# --------------------------------------------------------------------------- round trips

EXAMPLES = {
    "box unbounded float32": spaces.Box(-np.inf, np.inf, (18,), np.float32),
    "box per-dimension float64": spaces.Box(np.array([-1.0, 0.0, 2.5]), np.array([1.0, 0.5, np.inf]), dtype=np.float64),
    "box half-open": spaces.Box(np.array([0.0, -np.inf], np.float32), np.array([np.inf, 0.0], np.float32)),
    "box uint8 image": spaces.Box(0, 255, (7, 7, 3), np.uint8),
    "box int64 extremes": spaces.Box(np.iinfo(np.int64).min, np.iinfo(np.int64).max - 1, (2,), np.int64),
    "box uint64 top": spaces.Box(0, 2**64 - 1, (2,), np.uint64),
    "box bool": spaces.Box(0, 1, (2, 2), bool),
    "box float16 scalar shape": spaces.Box(-1.0, 1.0, (), np.float16),
    "box empty": spaces.Box(0.0, 1.0, (0, 4), np.float32),
    "discrete": spaces.Discrete(5),
    "discrete start dtype": spaces.Discrete(3, start=-1, dtype=np.int8),
    "multi discrete": spaces.MultiDiscrete([3, 4, 5]),
    "multi discrete 2d start": spaces.MultiDiscrete(np.array([[2, 3], [4, 5]]), dtype=np.int32, start=[[0, 1], [-2, 7]]),
    "multi binary int": spaces.MultiBinary(6),
    "multi binary shaped": spaces.MultiBinary([2, 3]),
    "dict unsorted keys": spaces.Dict(
        {"zeta": spaces.Discrete(2), "alpha": spaces.Box(-1, 1, (2,)), "mid": spaces.MultiBinary(3)}, sort_keys=False
    ),
    "nested": spaces.Dict(
        [
            ("observation", spaces.Box(-np.inf, np.inf, (4,), np.float32)),
            ("goal", spaces.Tuple([spaces.Discrete(4), spaces.Dict([("b", spaces.Box(0, 1, (1,))), ("a", spaces.Discrete(2))])])),
            ("empty", spaces.Dict({})),
            ("nothing", spaces.Tuple([])),
        ]
    ),
}


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_round_trip_through_env_welcome(name: str) -> None:
    space = EXAMPLES[name]
    decoded = round_trip(space)
    assert_same_space(space, decoded)
    # The decoded space is usable: its samples belong to it and to the original.
    decoded.seed(0)
    sample = decoded.sample()
    assert decoded.contains(sample) and space.contains(sample)


def test_uniform_bounds_travel_as_one_number_and_others_as_arrays() -> None:
    uniform = encode_space(spaces.Box(-np.inf, np.inf, (18,), np.float32))
    assert uniform["low"] == -np.inf and type(uniform["low"]) is float
    assert uniform["high"] == np.inf
    assert uniform["dtype"] == "<f4" and uniform["shape"] == [18]
    mixed = encode_space(spaces.Box(np.array([0.0, 1.0], np.float32), np.array([1.0, 1.0], np.float32)))
    assert isinstance(mixed["low"], np.ndarray) and mixed["low"].dtype == np.float32
    assert mixed["high"] == 1.0
    integer = encode_space(spaces.Box(0, 255, (3,), np.uint8))
    assert (integer["low"], integer["high"]) == (0, 255) and type(integer["high"]) is int


def test_dict_keys_keep_the_senders_order_on_the_wire() -> None:
    encoded = encode_space(spaces.Dict({"b": spaces.Discrete(2), "a": spaces.Discrete(3)}, sort_keys=False))
    assert [key for key, _ in encoded["spaces"]] == ["b", "a"]


def test_decoded_box_bounds_are_writable_copies() -> None:
    # Received arrays are read-only views of the frame; the space must not depend on the frame.
    space = round_trip(spaces.Box(np.array([0.0, 1.0]), np.array([2.0, 3.0]), dtype=np.float64))
    assert space.low.flags.writeable and space.low.flags.owndata


box_dtypes = st.sampled_from(sorted(s for s in WIRE_DTYPES if np.dtype(s).kind in "iuf")).map(np.dtype)


@st.composite
def boxes(draw: st.DrawFn) -> spaces.Box:
    dtype = draw(box_dtypes)
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=3))
    if dtype.kind == "f":
        finite = st.floats(-1e4, 1e4, width=min(dtype.itemsize * 8, 64))
        elements = finite | st.sampled_from([-np.inf, np.inf]) if draw(st.booleans()) else finite
    else:
        info = np.iinfo(dtype)
        elements = st.integers(int(info.min), int(info.max))
    a = draw(hnp.arrays(dtype, shape, elements=elements))
    b = draw(hnp.arrays(dtype, shape, elements=elements))
    low, high = np.minimum(a, b), np.maximum(a, b)
    if draw(st.booleans()):  # uniform bounds, the common case
        low = np.full(shape, low.flat[0] if low.size else 0, dtype)
        high = np.full(shape, max(high.flat[0], low.flat[0]) if high.size else 1, dtype)
    return spaces.Box(low, high, shape, dtype)


leaf_spaces = st.one_of(
    boxes(),
    st.builds(spaces.Discrete, st.integers(1, 2**40), start=st.integers(-(2**40), 2**40)),
    st.lists(st.integers(1, 9), min_size=1, max_size=4).map(spaces.MultiDiscrete),
    st.integers(1, 8).map(spaces.MultiBinary),
)
any_spaces = st.recursive(
    leaf_spaces,
    lambda children: st.one_of(
        st.lists(children, max_size=3).map(spaces.Tuple),
        st.dictionaries(st.text(max_size=5), children, max_size=3).map(lambda d: spaces.Dict(d, sort_keys=False)),
    ),
    max_leaves=6,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(space=any_spaces)
def test_random_spaces_round_trip(space: spaces.Space) -> None:
    assert_same_space(space, round_trip(space))


# --------------------------------------------------------------------------- PettingZoo envs


def _env_spaces_round_trip(env: Any) -> None:
    observation_spaces = {agent: env.observation_space(agent) for agent in env.possible_agents}
    action_spaces = {agent: env.action_space(agent) for agent in env.possible_agents}
    received = through_the_wire(observation_spaces, action_spaces)
    assert list(received.observation_spaces) == env.possible_agents
    for agent in env.possible_agents:
        assert_same_space(observation_spaces[agent], decode_space(received.observation_spaces[agent]), agent)
        assert_same_space(action_spaces[agent], decode_space(received.action_spaces[agent]), agent)
    env.close()


def test_mpe2_simple_spread_spaces_round_trip() -> None:
    from mpe2 import simple_spread_v3

    _env_spaces_round_trip(simple_spread_v3.parallel_env(N=3))
    _env_spaces_round_trip(simple_spread_v3.parallel_env(N=2, continuous_actions=True))


def test_pursuit_spaces_round_trip() -> None:
    from pettingzoo.sisl import pursuit_v5

    _env_spaces_round_trip(pursuit_v5.parallel_env())


@pytest.mark.skipif(importlib.util.find_spec("Box2D") is None, reason="multiwalker needs Box2D, which is not installed")
def test_multiwalker_spaces_round_trip() -> None:
    from pettingzoo.sisl import multiwalker_v9

    _env_spaces_round_trip(multiwalker_v9.parallel_env())


# --------------------------------------------------------------------------- encode errors


@pytest.mark.parametrize(
    "space",
    [spaces.Text(5), spaces.Sequence(spaces.Discrete(2)), spaces.Graph(spaces.Box(0, 1, (2,)), None)],
    ids=["text", "sequence", "graph"],
)
def test_encode_refuses_unsupported_spaces(space: spaces.Space) -> None:
    with pytest.raises(FieldError, match=rf"cannot encode {type(space).__name__}; supported spaces: Box, Discrete"):
        encode_space(space)


def test_encode_names_the_path_of_an_unsupported_subspace() -> None:
    space = spaces.Dict({"inner": spaces.Tuple([spaces.Discrete(2), spaces.Text(3)])})
    with pytest.raises(FieldError, match=r"space\.spaces\['inner'\]\.spaces\[1\]: cannot encode Text"):
        encode_space(space)


def test_encode_refuses_non_string_dict_keys() -> None:
    with pytest.raises(FieldError, match="Dict space keys must be str to cross the wire, got 3"):
        encode_space(spaces.Dict({3: spaces.Discrete(2)}))


def test_encode_refuses_a_non_wire_dtype() -> None:
    with pytest.raises(FieldError, match=r"dtype '>f4' cannot cross the wire"):
        encode_space(spaces.Box(0.0, 1.0, (2,), np.dtype(">f4")))


# --------------------------------------------------------------------------- decode errors

GOOD_BOX = {"kind": "box", "shape": [2], "dtype": "<f4", "low": 0.0, "high": 1.0}


@pytest.mark.parametrize(
    ("encoded", "expected"),
    [
        ([1, 2], r"space: expected a space map with a 'kind' key, got list"),
        ({"n": 3}, r"space: required key 'kind' is missing"),
        ({"kind": 7}, r"space\.kind: expected str, got int"),
        ({"kind": "graph"}, r"space\.kind: expected one of \['box', 'discrete', 'multi_discrete', 'multi_binary', 'dict', 'tuple'\], got 'graph'"),
        ({**GOOD_BOX, "dtype": "<c8"}, r"space\.dtype: expected one of \[.*'<f4'.*\], got '<c8'"),
        ({**GOOD_BOX, "dtype": "|O"}, r"space\.dtype: expected one of .*got '\|O'"),
        ({k: v for k, v in GOOD_BOX.items() if k != "high"}, r"space: required key 'high' is missing"),
        ({**GOOD_BOX, "shape": [2, -1]}, r"space\.shape: expected a list of non-negative ints"),
        ({**GOOD_BOX, "shape": [True]}, r"space\.shape: expected a list of non-negative ints"),
        ({**GOOD_BOX, "shape": "2"}, r"space\.shape: expected list, got str"),
        ({**GOOD_BOX, "low": "0"}, r"space\.low: expected int or float or bool or ndarray, got str"),
        ({**GOOD_BOX, "low": 2.0}, r"space: ValueError: Box all low values must be less than or equal to high"),
        ({**GOOD_BOX, "low": float("nan")}, r"space: ValueError: No low value can be equal to `np.nan`"),
        ({**GOOD_BOX, "low": np.zeros(3, np.float32)}, r"space\.low: expected an array float32\[2\] like the box, got float32\[3\]"),
        ({**GOOD_BOX, "high": np.ones(2, np.float64)}, r"space\.high: expected an array float32\[2\] like the box, got float64\[2\]"),
        ({**GOOD_BOX, "dtype": "|u1", "low": -1}, r"space: ValueError: Box low is out of bounds"),
        ({"kind": "discrete", "n": 0, "start": 0, "dtype": "<i8"}, r"space\.n: expected a positive int, got 0"),
        ({"kind": "discrete", "n": True, "start": 0, "dtype": "<i8"}, r"space\.n: expected int, got bool"),
        ({"kind": "discrete", "n": 2.0, "start": 0, "dtype": "<i8"}, r"space\.n: expected int, got float"),
        ({"kind": "discrete", "n": 2, "dtype": "<i8"}, r"space: required key 'start' is missing"),
        ({"kind": "discrete", "n": 2, "start": 0, "dtype": "<f4"}, r"space\.dtype: expected one of \[.*'<i8'.*\], got '<f4'"),
        ({"kind": "discrete", "n": 2, "start": -1, "dtype": "|u1"}, r"space: OverflowError"),
        ({"kind": "multi_discrete", "nvec": [2, 3], "start": np.zeros(2, np.int64), "dtype": "<i8"}, r"space\.nvec: expected ndarray, got list"),
        ({"kind": "multi_discrete", "nvec": np.array([2, 3]), "start": np.zeros(3, np.int64), "dtype": "<i8"}, r"space\.start: expected shape \(2,\) like nvec, got \(3,\)"),
        ({"kind": "multi_discrete", "nvec": np.array([2, 0]), "start": np.zeros(2, np.int64), "dtype": "<i8"}, r"space\.nvec: expected every entry positive, got \[2, 0\]"),
        ({"kind": "multi_discrete", "nvec": np.array([2.0]), "start": np.zeros(1, np.int64), "dtype": "<i8"}, r"space\.nvec: expected an array of the space's dtype int64, got float64"),
        ({"kind": "multi_binary", "n": 0}, r"space\.n: expected a positive int or a non-empty list of positive ints, got 0"),
        ({"kind": "multi_binary", "n": []}, r"space\.n: expected a positive int or a non-empty list"),
        ({"kind": "multi_binary", "n": [2, "3"]}, r"space\.n: expected a positive int or a non-empty list"),
        ({"kind": "dict", "spaces": {"a": GOOD_BOX}}, r"space\.spaces: expected list, got dict"),
        ({"kind": "dict", "spaces": [["a", GOOD_BOX, 1]]}, r"space\.spaces\[0\]: expected a \[str key, space\] pair"),
        ({"kind": "dict", "spaces": [[1, GOOD_BOX]]}, r"space\.spaces\[0\]: expected a \[str key, space\] pair"),
        ({"kind": "dict", "spaces": [["a", GOOD_BOX], ["a", GOOD_BOX]]}, r"space\.spaces: key 'a' appears twice"),
        ({"kind": "tuple", "spaces": None}, r"space\.spaces: expected list, got NoneType"),
    ],
)
def test_malformed_space_maps_raise_field_error(encoded: Any, expected: str) -> None:
    with pytest.raises(FieldError, match=expected):
        decode_space(encoded)


def test_decode_error_names_the_nested_path() -> None:
    encoded = {
        "kind": "dict",
        "spaces": [
            ["position", GOOD_BOX],
            ["goal", {"kind": "tuple", "spaces": [GOOD_BOX, {**GOOD_BOX, "low": "zero"}]}],
        ],
    }
    with pytest.raises(FieldError, match=r"observation_spaces\['agent_1'\]\.spaces\['goal'\]\.spaces\[1\]\.low: expected"):
        decode_space(encoded, "observation_spaces['agent_1']")


def test_unknown_extra_keys_are_ignored() -> None:
    space = decode_space({**GOOD_BOX, "comment": "from a newer sender", "bounded": [True]})
    assert space == spaces.Box(0.0, 1.0, (2,), np.float32)


def test_huge_declared_box_shape_is_refused_before_allocating() -> None:
    with pytest.raises(FieldError, match=rf"space\.shape: at most {MAX_BOX_ENTRIES} entries allowed, got \[1048576, 1048576\]"):
        decode_space({**GOOD_BOX, "shape": [2**20, 2**20]})


def test_nesting_beyond_the_limit_is_refused() -> None:
    encoded: dict[str, Any] = {"kind": "discrete", "n": 2, "start": 0, "dtype": "<i8"}
    for _ in range(MAX_NESTING):
        encoded = {"kind": "tuple", "spaces": [encoded]}
    decode_space(encoded)  # exactly at the limit: fine
    with pytest.raises(FieldError, match=f"nested deeper than {MAX_NESTING} levels"):
        decode_space({"kind": "tuple", "spaces": [encoded]})


# Anything msgpack can carry, shaped roughly like a space map, must give a space or a FieldError.
_values = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=4),
        st.sampled_from(sorted(WIRE_DTYPES) + ["<c8", "|O"]),
        hnp.arrays(st.sampled_from(sorted(WIRE_DTYPES)).map(np.dtype), hnp.array_shapes(min_dims=0, max_dims=2, max_side=3)),
    ),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3),
    max_leaves=6,
)
_space_like = st.recursive(
    st.fixed_dictionaries(
        {"kind": st.sampled_from(SPACE_KINDS)},
        optional={name: _values for name in ("shape", "dtype", "low", "high", "n", "start", "nvec", "spaces")},
    ),
    lambda children: st.fixed_dictionaries(
        {"kind": st.sampled_from(["dict", "tuple"]), "spaces": st.lists(children | st.tuples(st.text(max_size=2), children).map(list), max_size=3)}
    ),
    max_leaves=4,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(encoded=_space_like)
def test_arbitrary_maps_give_a_space_or_a_field_error(encoded: dict[str, Any]) -> None:
    try:
        space = decode_space(encoded)
    except FieldError as error:
        assert str(error).startswith("space")
    else:
        assert isinstance(space, spaces.Space)
