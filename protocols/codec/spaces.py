"""Gymnasium spaces as plain maps, so the env server can tell agents what they will see and do.

When an agent joins, the env server answers with an `env.welcome` that carries the observation
and action space of every env agent. Pickle never crosses the wire, so each space is written as
a small map that msgpack can carry, with a `kind` tag and the numbers that define the space:

    Box            {"kind": "box", "shape": [..], "dtype": "<f4", "low": L, "high": H}
                   L and H are one number when every bound is the same (the common case:
                   Box(-inf, inf, (18,))) and a numpy array of the box's shape and dtype
                   otherwise; arrays travel as raw buffer frames like every array on the wire.
    Discrete       {"kind": "discrete", "n": 5, "start": 0, "dtype": "<i8"}
    MultiDiscrete  {"kind": "multi_discrete", "nvec": array, "start": array, "dtype": "<i8"}
    MultiBinary    {"kind": "multi_binary", "n": 4}   (or "n": [2, 3] for a shaped one)
    Dict           {"kind": "dict", "spaces": [[key, space], ...]}   (a list keeps key order)
    Tuple          {"kind": "tuple", "spaces": [space, ...]}

`decode_space` is the receiving boundary: it checks every key and raises `FieldError` naming the
path of the bad entry (`observation_spaces['agent_0'].spaces['pos'].low`) and what was expected.
Unknown extra keys are ignored, like unknown body fields. `encode_space` raises `FieldError` for a
space it cannot describe (Text, Graph, Sequence, OneOf, a Dict with non-string keys, a dtype
that cannot cross the wire), naming the supported kinds.

A space's random generator is not sent: the receiver seeds its own spaces. An integer Box
declared with infinite bounds arrives bounded at its dtype's limits, which is what gymnasium
already stores in `low` / `high` for it.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import gymnasium.spaces as spaces
import numpy as np

from protocols.codec.errors import FieldError
from protocols.codec.messages import WIRE_DTYPES

SPACE_KINDS = ("box", "discrete", "multi_discrete", "multi_binary", "dict", "tuple")

# Dict and Tuple nest; a received map deeper than this is refused before it can exhaust the stack.
MAX_NESTING = 32
# Box materializes its bounds at full shape: a declared shape is capped before anything is
# allocated (16 M entries is far above any observation these environments produce).
MAX_BOX_ENTRIES = 1 << 24


# --------------------------------------------------------------------------- encode


def is_image_space(space: spaces.Space) -> bool:
    """A Box of uint8 pixels shaped (height, width, channels) with 1, 3 or 4 channels (PettingZoo's
    convention for image observations: pistonball, cooperative_pong, ...)."""
    return (isinstance(space, spaces.Box) and len(space.shape) == 3 and space.dtype == np.uint8
            and space.shape[2] in (1, 3, 4))


def encode_space(space: spaces.Space, where: str = "space") -> dict[str, Any]:
    """A msgpack-able map describing `space` (numpy arrays inside are sent as wire buffers)."""
    if isinstance(space, spaces.Box):
        dtype = _wire_dtype_of(space.dtype, where)
        return {
            "kind": "box",
            "shape": [int(n) for n in space.shape],
            "dtype": dtype.str,
            "low": _bound_for_wire(space.low),
            "high": _bound_for_wire(space.high),
        }
    if isinstance(space, spaces.Discrete):
        return {
            "kind": "discrete",
            "n": int(space.n),
            "start": int(space.start),
            "dtype": _wire_dtype_of(space.dtype, where).str,
        }
    if isinstance(space, spaces.MultiDiscrete):
        dtype = _wire_dtype_of(space.dtype, where)
        return {
            "kind": "multi_discrete",
            "nvec": np.ascontiguousarray(space.nvec, dtype=dtype),
            "start": np.ascontiguousarray(space.start, dtype=dtype),
            "dtype": dtype.str,
        }
    if isinstance(space, spaces.MultiBinary):
        # Keep the int / sequence distinction: MultiBinary(4) and MultiBinary([4]) compare unequal.
        n = [int(d) for d in space.n] if isinstance(space.n, (tuple, list, np.ndarray)) else int(space.n)
        return {"kind": "multi_binary", "n": n}
    if isinstance(space, spaces.Dict):
        pairs = []
        for key, subspace in space.spaces.items():
            if not isinstance(key, str):
                raise FieldError(f"{where}: Dict space keys must be str to cross the wire, got {key!r}")
            pairs.append([key, encode_space(subspace, f"{where}.spaces[{key!r}]")])
        return {"kind": "dict", "spaces": pairs}
    if isinstance(space, spaces.Tuple):
        return {
            "kind": "tuple",
            "spaces": [encode_space(subspace, f"{where}.spaces[{i}]") for i, subspace in enumerate(space.spaces)],
        }
    raise FieldError(
        f"{where}: cannot encode {type(space).__name__}; supported spaces: "
        "Box, Discrete, MultiDiscrete, MultiBinary, Dict, Tuple"
    )


def _wire_dtype_of(dtype: Any, where: str) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype.str not in WIRE_DTYPES:
        raise FieldError(f"{where}: dtype {dtype.str!r} cannot cross the wire; expected one of {sorted(WIRE_DTYPES)}")
    return dtype


def _bound_for_wire(bound: np.ndarray) -> Any:
    """One Python number when the bound is uniform, else the whole array."""
    if bound.size > 0 and np.all(bound == bound.flat[0]):
        return bound.flat[0].item()
    return np.ascontiguousarray(bound)


# --------------------------------------------------------------------------- decode


def decode_space(encoded: Any, where: str = "space") -> spaces.Space:
    """Rebuild the gymnasium space described by `encoded`; FieldError (naming the path) if malformed."""
    return _decode(encoded, where, depth=0)


def _decode(encoded: Any, where: str, depth: int) -> spaces.Space:
    if depth > MAX_NESTING:
        raise FieldError(f"{where}: spaces nested deeper than {MAX_NESTING} levels")
    if not isinstance(encoded, dict):
        raise FieldError(f"{where}: expected a space map with a 'kind' key, got {type(encoded).__name__}")
    kind = _get(encoded, "kind", str, where)
    if kind == "box":
        return _decode_box(encoded, where)
    if kind == "discrete":
        dtype = _get_dtype(encoded, where, kinds="iu")
        n = _get(encoded, "n", int, where)
        start = _get(encoded, "start", int, where)
        if n < 1:
            raise FieldError(f"{where}.n: expected a positive int, got {n}")
        return _build(where, lambda: spaces.Discrete(n, start=start, dtype=dtype))
    if kind == "multi_discrete":
        dtype = _get_dtype(encoded, where, kinds="iu")
        nvec = _int_array(encoded, "nvec", dtype, where)
        start = _int_array(encoded, "start", dtype, where)
        if nvec.shape != start.shape:
            raise FieldError(f"{where}.start: expected shape {nvec.shape} like nvec, got {start.shape}")
        if not np.all(nvec > 0):
            raise FieldError(f"{where}.nvec: expected every entry positive, got {nvec.tolist()}")
        return _build(where, lambda: spaces.MultiDiscrete(np.array(nvec), dtype=dtype, start=np.array(start)))
    if kind == "multi_binary":
        n = _get(encoded, "n", (int, list), where)
        dims = n if isinstance(n, list) else [n]
        if not dims or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in dims):
            raise FieldError(f"{where}.n: expected a positive int or a non-empty list of positive ints, got {n!r}")
        return _build(where, lambda: spaces.MultiBinary(n))
    if kind == "dict":
        pairs = _get(encoded, "spaces", list, where)
        decoded: dict[str, spaces.Space] = {}
        for i, pair in enumerate(pairs):
            if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str)):
                raise FieldError(f"{where}.spaces[{i}]: expected a [str key, space] pair, got {pair!r:.80}")
            key, subspace = pair
            if key in decoded:
                raise FieldError(f"{where}.spaces: key {key!r} appears twice")
            decoded[key] = _decode(subspace, f"{where}.spaces[{key!r}]", depth + 1)
        # A list of pairs keeps the sender's key order (a plain dict would be sorted by gymnasium).
        return spaces.Dict(list(decoded.items()))
    if kind == "tuple":
        items = _get(encoded, "spaces", list, where)
        return spaces.Tuple([_decode(item, f"{where}.spaces[{i}]", depth + 1) for i, item in enumerate(items)])
    raise FieldError(f"{where}.kind: expected one of {list(SPACE_KINDS)}, got {kind!r}")


def _decode_box(encoded: dict[str, Any], where: str) -> spaces.Box:
    dtype = _get_dtype(encoded, where, kinds="iufb")
    shape_list = _get(encoded, "shape", list, where)
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape_list):
        raise FieldError(f"{where}.shape: expected a list of non-negative ints, got {shape_list!r:.80}")
    shape = tuple(shape_list)
    if math.prod(shape) > MAX_BOX_ENTRIES:
        raise FieldError(f"{where}.shape: at most {MAX_BOX_ENTRIES} entries allowed, got {list(shape)}")
    low = _bound_from_wire(encoded, "low", shape, dtype, where)
    high = _bound_from_wire(encoded, "high", shape, dtype, where)
    return _build(where, lambda: spaces.Box(low=low, high=high, shape=shape, dtype=dtype))


def _bound_from_wire(encoded: dict[str, Any], name: str, shape: tuple[int, ...], dtype: np.dtype, where: str) -> Any:
    bound = _get(encoded, name, (int, float, bool, np.ndarray), where)
    if isinstance(bound, np.ndarray):
        # The sender writes bounds in the box's dtype; anything else would be a silent cast here.
        if bound.dtype != dtype or bound.shape != shape:
            raise FieldError(
                f"{where}.{name}: expected an array {dtype}{list(shape)} like the box, "
                f"got {bound.dtype}{list(bound.shape)}"
            )
        # A writable copy: received arrays are read-only views and Box edits its bounds in place.
        return np.array(bound)
    if isinstance(bound, bool):
        return int(bound)  # Box takes 0 / 1 for a bool box's bounds, not True / False
    return bound


def _get(encoded: dict[str, Any], name: str, kinds: type | tuple[type, ...], where: str) -> Any:
    if name not in encoded:
        raise FieldError(f"{where}: required key {name!r} is missing")
    value = encoded[name]
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    # bool is an int subclass in Python, but True is never a valid count or size.
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        expected = " or ".join("ndarray" if k is np.ndarray else k.__name__ for k in kinds)
        raise FieldError(f"{where}.{name}: expected {expected}, got {type(value).__name__} {value!r:.60}")
    return value


def _get_dtype(encoded: dict[str, Any], where: str, kinds: str) -> np.dtype:
    dtype_str = _get(encoded, "dtype", str, where)
    allowed = sorted(s for s in WIRE_DTYPES if np.dtype(s).kind in kinds)
    if dtype_str not in allowed:
        raise FieldError(f"{where}.dtype: expected one of {allowed}, got {dtype_str!r}")
    return np.dtype(dtype_str)


def _int_array(encoded: dict[str, Any], name: str, dtype: np.dtype, where: str) -> np.ndarray:
    array = _get(encoded, name, np.ndarray, where)
    if array.dtype != dtype:
        raise FieldError(f"{where}.{name}: expected an array of the space's dtype {dtype}, got {array.dtype}")
    return array


def _build(where: str, make: Callable[[], spaces.Space]) -> spaces.Space:
    """Call a gymnasium constructor; its own checks (low <= high, ranges) become FieldErrors."""
    try:
        return make()
    except (ValueError, TypeError, AssertionError, OverflowError) as error:
        raise FieldError(f"{where}: {type(error).__name__}: {error}") from None
