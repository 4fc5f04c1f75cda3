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
`decode` copies nothing (`np.frombuffer` over the frame it is given), which is why received
arrays are read-only; the transport hands it frames received as bytes (see transport.py).

This is the lockstep's hot path (every step encodes and decodes one message per agent), so the
codec reuses its msgpack packers and checks array placeholders with plain comparisons; the
profile behind that is in bench/PROFILE.md.

`decode` checks, in this order: frame layout, signature, header and version, body msgpack
(strict: no duplicate keys, string keys, size limits), then field types via `messages.from_body`,
then buffer dtypes and sizes. Whatever is wrong raises the matching `ProtocolError` subclass and
nothing else. Pickle never appears.
"""

from __future__ import annotations

import dataclasses
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
    """Frames for `socket.send_multipart(frames)`: bytes, and large arrays as they are."""
    header_bytes = _HEADER_PACKER.pack(
        {
            "msg_id": _next_msg_id(),
            "msg_type": message.MSG_TYPE,
            "sender": sender,
            "run_id": run_id,
            "version": PROTOCOL_VERSION,
            "seq": seq,
            "sent_at": time.time(),
        }
    )
    parent_bytes = _HEADER_PACKER.pack(parent.as_map()) if parent else _EMPTY_MAP
    body = to_body(message)
    # Optimistic single pass: small arrays go to buffer 0 (one shared frame). A message with
    # only large arrays is packed again with their indices starting at 0 (rare: no hot-path
    # message is made of large arrays only).
    body_bytes, buffers = _BODY_PACKER.pack_body(body, small_frame_first=True)
    if buffers and buffers[0] is None:
        body_bytes, buffers = _BODY_PACKER.pack_body(body, small_frame_first=False)
    signature = _sign(key, header_bytes, parent_bytes, body_bytes, *buffers) if key else b""
    # A C-contiguous array exposes the buffer protocol; zmq sends it without a copy.
    return [*identities, DELIMITER, signature, header_bytes, parent_bytes, body_bytes, *buffers]


class _BodyPacker:
    """One msgpack Packer reused for every body (building a Packer costs more than packing a
    small body), with the array placeholders of the module docstring. Not reentrant; a process
    encodes one message at a time."""

    def __init__(self) -> None:
        self._packer = msgpack.Packer(default=self._pack_array, use_bin_type=True)
        self._placeholders = msgpack.Packer(use_bin_type=True)
        self._small = bytearray()
        self._buffers: list[Any] = []
        self._small_index: int | None = None
        self._small_used = False

    def pack_body(self, body: dict[str, Any], *, small_frame_first: bool) -> tuple[bytes, list[Any]]:
        self._small = bytearray()
        self._small_index = 0 if small_frame_first else None
        self._small_used = False
        self._buffers = [self._small] if small_frame_first else []
        try:
            body_bytes = self._packer.pack(body)
        except BaseException:
            self._packer.reset()
            raise
        buffers = self._buffers
        if small_frame_first:
            if self._small_used:
                buffers[0] = bytes(self._small)  # immutable: in-process receivers get read-only arrays
            elif len(buffers) == 1:
                buffers = []  # no arrays at all
            else:
                buffers[0] = None  # only large arrays: the caller packs again without frame 0
        self._buffers = []
        return body_bytes, buffers

    def _pack_array(self, obj: Any) -> Any:
        if type(obj) is np.ndarray or isinstance(obj, np.ndarray):
            # np.ascontiguousarray would turn a 0-d array into shape (1,); only copy when needed.
            array = obj if obj.flags.c_contiguous else np.ascontiguousarray(obj)
            dtype_str = array.dtype.str
            if dtype_str not in WIRE_DTYPES:
                raise TypeError(f"arrays of dtype {array.dtype} cannot cross the wire")
            if array.nbytes < SMALL_ARRAY_BYTES and self._small_index is not None:
                self._small_used = True
                small = self._small
                offset = len(small)
                small += array.tobytes()
                padding = -len(small) % 8  # keep the next array aligned
                if padding:
                    small += _ZEROS[:padding]
                placeholder = [0, dtype_str, list(array.shape), offset]
            else:
                self._buffers.append(array)
                placeholder = [len(self._buffers) - 1, dtype_str, list(array.shape)]
            return msgpack.ExtType(_ARRAY_EXT, self._placeholders.pack(placeholder))
        if isinstance(obj, np.generic):  # numpy scalars become plain Python numbers
            return obj.item()
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):  # a nested typed record
            return to_body(obj)
        raise TypeError(f"cannot encode {type(obj).__name__} in a message body")


_HEADER_PACKER = msgpack.Packer(use_bin_type=True)
_BODY_PACKER = _BodyPacker()
_EMPTY_MAP = msgpack.packb({})
_ZEROS = bytes(8)
_WIRE_DTYPE_OBJECTS = {name: np.dtype(name) for name in WIRE_DTYPES}


def decode(frames: Sequence[Any], *, key: bytes | Callable[[str], bytes] = b"") -> Envelope:
    """Validate and decode received frames (bytes, memoryviews or anything with a buffer).

    `key`: the run's key, or `sender -> key` when every node signs with its own key (the header's
    `sender` is then read, and only it, before the signature is checked).
    """
    views = [memoryview(frame) for frame in frames]
    for split, view in enumerate(views):
        if view == DELIMITER:
            break
    else:
        raise FrameLayoutError(f"no delimiter frame {DELIMITER!r} among {len(views)} frames")
    content = views[split + 1 :]
    if len(content) < 4:
        raise FrameLayoutError(
            f"expected signature, header, parent and body after the delimiter, got {len(content)} frame(s)"
        )
    signature, header_view, parent_view, body_view, *buffer_views = content

    if key or signature.nbytes:  # an unsigned run skips hashing; a stray signature is refused
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
    parent = {} if parent_view == _EMPTY_MAP else _unpack_map(parent_view, "parent header")

    used_buffers: set[int] = set()

    def unpack_array(code: int, data: bytes) -> Any:
        if code != _ARRAY_EXT:
            raise MalformedPayload(f"unknown msgpack extension code {code} (expected {_ARRAY_EXT} for arrays)")
        placeholder = _unpack(data, "array placeholder")
        if not _is_placeholder(placeholder):
            raise MalformedPayload(
                f"array placeholder must be [index, dtype, shape] or [index, dtype, shape, offset], got {placeholder!r}"
            )
        index, dtype_str, shape = placeholder[:3]
        if not 0 <= index < len(buffer_views):
            raise FrameLayoutError(f"array refers to buffer {index} but {len(buffer_views)} buffer frame(s) arrived")
        dtype = _WIRE_DTYPE_OBJECTS.get(dtype_str)
        if dtype is None:
            raise FieldError(f"array dtype {dtype_str!r} is not allowed; expected one of {sorted(WIRE_DTYPES)}")
        # Python ints: np.prod would wrap around on a huge declared shape and could match a short buffer.
        count = math.prod(shape)
        nbytes = dtype.itemsize * count
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
        array = np.frombuffer(frame, dtype=dtype, count=count, offset=offset).reshape(shape)
        # Received zmq frames may be writable memory: make the zero-copy view read-only explicitly.
        array.flags.writeable = False
        return array

    body = _unpack(body_view, "body", ext_hook=unpack_array)
    if len(used_buffers) != len(buffer_views):
        raise FrameLayoutError(
            f"{len(buffer_views)} buffer frame(s) arrived but the body refers to {len(used_buffers)}"
        )
    message = from_body(header.msg_type, body)
    identities = tuple(bytes(v) for v in views[:split]) if split else ()
    return Envelope(header=header, message=message, parent=parent, identities=identities)


def _is_count(value: Any) -> bool:
    return type(value) is int and value >= 0  # type() is int: bool is refused


def _is_placeholder(value: Any) -> bool:
    """[index, dtype, shape] or [index, dtype, shape, offset] with counts where counts belong."""
    if type(value) is not list or len(value) not in (3, 4):
        return False
    index, dtype_str, shape = value[0], value[1], value[2]
    if not _is_count(index) or type(dtype_str) is not str or type(shape) is not list:
        return False
    for n in shape:
        if not _is_count(n):
            return False
    return len(value) == 3 or _is_count(value[3])


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


def _sign(key: bytes, *parts: Any) -> bytes:
    if not key:
        return b""
    mac = hmac.new(key, digestmod=hashlib.sha256)
    for part in parts:
        mac.update(part)
    return mac.hexdigest().encode()


def _unpack(data: Any, what: str, ext_hook=msgpack.ExtType) -> Any:
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_map_len=_MAX_MAP_LEN,
            max_array_len=_MAX_MAP_LEN,
            ext_hook=ext_hook,
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
