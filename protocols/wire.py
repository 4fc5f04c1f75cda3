"""The envelope: one frame layout for every Parley message.

    [identity ...] DELIMITER signature header parent_header body [buffer ...]

- identity frames: routing ids added by ROUTER sockets (zero or more);
- DELIMITER: a fixed marker that separates routing from content;
- signature: HMAC-SHA256 (hex) over header, parent header, body and buffer frames when the
  channel has a key, empty otherwise. The key is the sender node's signing key
  (`protocols/auth.py`); a receiver that checks per-node keys passes `key` as a function of the
  sender the header claims, so a message signed by any other node is a `SignatureError`;
- header: msgpack map `msg_id, msg_type, sender, run_id, version, seq, sent_at`;
- parent_header: msgpack map, the header of the request this message answers (or empty);
- body: msgpack map of the dataclass fields; every numpy array in it is replaced by a msgpack
  extension `[buffer index, dtype, shape]` (the array is that whole frame) or
  `[buffer index, dtype, shape, offset]` (a slice of it), and its bytes travel in the raw
  buffer frames after the body.

Arrays of 64 KiB and more get a frame each and are not copied on send (the frame points at the
array's memory); smaller ones are packed, 8-byte aligned, into one shared first buffer frame.
Nothing is copied on receive (`np.frombuffer` over the received frame), which is why received
arrays are read-only.

`decode` checks, in this order: frame layout, signature, header and version, body msgpack
(strict: no duplicate keys, string keys, size limits), then field types via `messages.from_body`,
then buffer dtypes and sizes. Whatever is wrong raises the matching `ProtocolError` subclass and
nothing else. Pickle never appears.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
import itertools
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import msgpack
import numpy as np

from protocols import PROTOCOL_VERSION
from protocols.errors import (
    FieldError,
    FrameLayoutError,
    MalformedPayload,
    ProtocolError,
    SignatureError,
    VersionMismatch,
)
from protocols.messages import WIRE_DTYPES, from_body, to_body

DELIMITER = b"<PARLEY|MSG>"
_ARRAY_EXT = 1  # msgpack extension code of an array placeholder
_HEADER_FIELDS = {"msg_id": str, "msg_type": str, "sender": str, "run_id": str, "version": int, "seq": int, "sent_at": float}
_MAX_MAP_LEN = 1 << 20
# Arrays below this size share one frame: pyzmq copies frames under 64 KiB anyway, and every
# extra frame costs several microseconds on both ends.
SMALL_ARRAY_BYTES = 1 << 16


@dataclass(frozen=True)
class Header:
    msg_id: str
    msg_type: str
    sender: str
    run_id: str
    version: int
    seq: int
    sent_at: float

    def as_map(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _HEADER_FIELDS}


@dataclass(frozen=True)
class Envelope:
    """A decoded message: who sent what, in answer to what, through which routing ids."""

    header: Header
    message: Any
    parent: dict[str, Any] = field(default_factory=dict)
    identities: tuple[bytes, ...] = ()

    @property
    def msg_type(self) -> str:
        return self.header.msg_type

    @property
    def sender(self) -> str:
        return self.header.sender


def encode(
    message: Any,
    *,
    sender: str,
    run_id: str,
    seq: int,
    parent: Header | None = None,
    identities: Sequence[bytes] = (),
    key: bytes = b"",
) -> list[Any]:
    """Frames for `socket.send_multipart(frames, copy=False)`."""
    header = Header(
        msg_id=_next_msg_id(),
        msg_type=message.MSG_TYPE,
        sender=sender,
        run_id=run_id,
        version=PROTOCOL_VERSION,
        seq=seq,
        sent_at=time.time(),
    )
    body = to_body(message)
    # Small arrays are packed together into one frame (a frame costs more than a small copy);
    # large ones travel as frames of their own, without a copy. See `SMALL_ARRAY_BYTES`.
    small_blob = bytearray()
    buffers: list[Any] = [small_blob] if _has_small_arrays(body) else []

    def pack_array(obj: Any) -> Any:
        if isinstance(obj, np.ndarray):
            # np.ascontiguousarray would turn a 0-d array into shape (1,); only copy when needed.
            array = obj if obj.flags.c_contiguous else np.ascontiguousarray(obj)
            if array.dtype.str not in WIRE_DTYPES:
                raise TypeError(f"arrays of dtype {array.dtype} cannot cross the wire")
            if array.nbytes < SMALL_ARRAY_BYTES:
                offset = len(small_blob)
                small_blob.extend(array.tobytes())
                small_blob.extend(bytes(-len(small_blob) % 8))  # keep the next array aligned
                placeholder = [0, array.dtype.str, list(array.shape), offset]
            else:
                buffers.append(array)
                placeholder = [len(buffers) - 1, array.dtype.str, list(array.shape)]
            return msgpack.ExtType(_ARRAY_EXT, msgpack.packb(placeholder))
        if isinstance(obj, np.generic):  # numpy scalars become plain Python numbers
            return obj.item()
        raise TypeError(f"cannot encode {type(obj).__name__} in a message body")

    header_bytes = msgpack.packb(header.as_map())
    parent_bytes = msgpack.packb(parent.as_map() if parent else {})
    body_bytes = msgpack.packb(body, default=pack_array, use_bin_type=True)
    if buffers and buffers[0] is small_blob:
        buffers[0] = bytes(small_blob)  # immutable: receivers of an in-process copy get read-only arrays
    signature = _sign(key, header_bytes, parent_bytes, body_bytes, *buffers)
    # A C-contiguous array exposes the buffer protocol; zmq sends it without a copy.
    return [*identities, DELIMITER, signature, header_bytes, parent_bytes, body_bytes, *buffers]


def decode(frames: Sequence[Any], *, key: bytes | Callable[[str], bytes] = b"") -> Envelope:
    """Validate and decode received frames (bytes, memoryviews or anything with a buffer).

    `key`: the run's key, or `sender -> key` when every node signs with its own key (the header's
    `sender` is then read, and only it, before the signature is checked).
    """
    views = [memoryview(frame) for frame in frames]
    try:
        split = next(i for i, view in enumerate(views) if view == DELIMITER)
    except StopIteration:
        raise FrameLayoutError(
            f"no delimiter frame {DELIMITER!r} among {len(views)} frames"
        ) from None
    content = views[split + 1 :]
    if len(content) < 4:
        raise FrameLayoutError(
            f"expected signature, header, parent and body after the delimiter, got {len(content)} frame(s)"
        )
    signature, header_view, parent_view, body_view, *buffer_views = content

    mismatch = "signature does not match the run key"
    if callable(key):
        claimed = _unpack_map(header_view, "header").get("sender")
        if not isinstance(claimed, str):
            raise MalformedPayload(f"header field 'sender' must be str, got {claimed!r}")
        key, mismatch = key(claimed), f"signature does not match the key of {claimed[:64]!r}, the sender the header claims"
    expected = _sign(key, header_view, parent_view, body_view, *buffer_views)
    if not hmac.compare_digest(bytes(signature), expected):
        raise SignatureError(mismatch if key else "unexpected signature: this run is unsigned")

    header = _decode_header(header_view)
    parent = _unpack_map(parent_view, "parent header")

    used_buffers: set[int] = set()

    def unpack_array(code: int, data: bytes) -> Any:
        if code != _ARRAY_EXT:
            raise MalformedPayload(f"unknown msgpack extension code {code} (expected {_ARRAY_EXT} for arrays)")
        placeholder = _unpack(data, "array placeholder")
        if (
            not isinstance(placeholder, list)
            or len(placeholder) not in (3, 4)
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in placeholder[:1] + placeholder[3:])
            or not isinstance(placeholder[1], str)
            or not isinstance(placeholder[2], list)
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in placeholder[2])
        ):
            raise MalformedPayload(
                f"array placeholder must be [index, dtype, shape] or [index, dtype, shape, offset], got {placeholder!r}"
            )
        index, dtype_str, shape = placeholder[:3]
        if not 0 <= index < len(buffer_views):
            raise FrameLayoutError(f"array refers to buffer {index} but {len(buffer_views)} buffer frame(s) arrived")
        if dtype_str not in WIRE_DTYPES:
            raise FieldError(f"array dtype {dtype_str!r} is not allowed; expected one of {sorted(WIRE_DTYPES)}")
        dtype = np.dtype(dtype_str)
        # Python ints: np.prod would wrap around on a huge declared shape and could match a short buffer.
        nbytes = dtype.itemsize * math.prod(shape)
        frame = buffer_views[index]
        if len(placeholder) == 3:  # the array is the whole frame
            offset = 0
            if frame.nbytes != nbytes:
                raise FieldError(f"array {dtype}{shape} needs {nbytes} bytes, buffer {index} has {frame.nbytes}")
        else:  # the array is a slice of a frame of packed small arrays
            offset = placeholder[3]
            if offset + nbytes > frame.nbytes:
                raise FieldError(
                    f"array {dtype}{shape} at offset {offset} needs {nbytes} bytes, buffer {index} has {frame.nbytes}"
                )
        used_buffers.add(index)
        array = np.frombuffer(frame, dtype=dtype, count=nbytes // dtype.itemsize if dtype.itemsize else 0, offset=offset).reshape(tuple(shape))
        # Received zmq frames are writable memory: make the zero-copy view read-only explicitly.
        array.flags.writeable = False
        return array

    body = _unpack(body_view, "body", ext_hook=unpack_array)
    if len(used_buffers) != len(buffer_views):
        raise FrameLayoutError(
            f"{len(buffer_views)} buffer frame(s) arrived but the body refers to {len(used_buffers)}"
        )
    message = from_body(header.msg_type, body)
    return Envelope(header=header, message=message, parent=parent, identities=tuple(bytes(v) for v in views[:split]))


# Message ids: a random per-process prefix and a counter. Unique like a uuid4 (the prefix has
# 64 random bits), at a fraction of the cost per message. Re-drawn in a forked child.
_msg_id_prefix = os.urandom(8).hex()
_msg_id_counter = itertools.count()
_msg_id_pid = os.getpid()


def _next_msg_id() -> str:
    global _msg_id_prefix, _msg_id_counter, _msg_id_pid
    if os.getpid() != _msg_id_pid:
        _msg_id_prefix, _msg_id_counter, _msg_id_pid = os.urandom(8).hex(), itertools.count(), os.getpid()
    return f"{_msg_id_prefix}-{next(_msg_id_counter)}"


def _has_small_arrays(value: Any) -> bool:
    if isinstance(value, np.ndarray):
        return value.nbytes < SMALL_ARRAY_BYTES
    if isinstance(value, dict):
        return any(_has_small_arrays(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_has_small_arrays(v) for v in value)
    return False


def _sign(key: bytes, *parts: Any) -> bytes:
    if not key:
        return b""
    mac = hmac.new(key, digestmod=hashlib.sha256)
    for part in parts:
        mac.update(part)
    return mac.hexdigest().encode()


def _unpack(data: Any, what: str, ext_hook=None) -> Any:
    try:
        kwargs = {"ext_hook": ext_hook} if ext_hook else {}
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_map_len=_MAX_MAP_LEN,
            max_array_len=_MAX_MAP_LEN,
            **kwargs,
        )
    except ProtocolError:
        raise
    except Exception as error:  # msgpack raises several unrelated types for bad input
        raise MalformedPayload(f"{what} is not valid msgpack: {type(error).__name__}: {error}") from None


def _unpack_map(data: Any, what: str) -> dict[str, Any]:
    value = _unpack(data, what)
    if not isinstance(value, dict):
        raise MalformedPayload(f"{what} must be a msgpack map, got {type(value).__name__}")
    return value


def _decode_header(data: Any) -> Header:
    header = _unpack_map(data, "header")
    # The version is checked before anything else in the header: a newer peer may have
    # changed the other fields.
    version = header.get("version")
    if version != PROTOCOL_VERSION:
        raise VersionMismatch(f"expected protocol version {PROTOCOL_VERSION}, got {version!r}")
    for name, kind in _HEADER_FIELDS.items():
        value = header.get(name)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            header[name] = value = float(value)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise MalformedPayload(f"header field {name!r} must be {kind.__name__}, got {value!r}")
    return Header(**{name: header[name] for name in _HEADER_FIELDS})
