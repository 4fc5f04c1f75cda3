"""The envelope: one frame layout for every Parley message (protocol version 2).

    [identity ...] head body [buffer ...]

- identity frames: routing ids added by ROUTER sockets (zero or more);
- head: `MAGIC` (b"PARLEY/2", which also marks where routing ends), one byte giving the
  signature's length (0 or 32), the signature, then one msgpack array `[header, parent_header]`:
  - signature: raw HMAC-SHA256 over the head's msgpack part, the body and every buffer frame
    when the channel has a key, empty otherwise. The key is the sender node's signing key
    (`protocols/net/auth.py`); a receiver that checks per-node keys passes `key` as a function of
    the sender the header claims, so a message signed by any other node is a `SignatureError`;
  - header: msgpack map `msg_id, msg_type, sender, run_id, version, seq, sent_at`;
  - parent_header: msgpack map, the header of the request this message answers (or empty);
- body: msgpack map of the dataclass fields; every numpy array in it is replaced by a msgpack
  extension (code 1) holding a fixed binary placeholder (see `pack_placeholder`: whole frame or
  slice, dtype code, buffer index, byte offset, shape), and its bytes travel in the raw buffer
  frames after the body.

Why this layout: every frame costs a few microseconds on both ends (a Python call into zmq and
a zmq message on each side), and the lockstep sends 2N messages per step. Version 1 sent
delimiter, signature, header, parent and body as five frames; version 2 folds them into two,
so a lockstep message is three frames (head, body, one buffer of packed small arrays) plus the
routing id. The header's constant part (sender, run id, version) and each message type's entry
are packed once per sender and reused (`_HeaderPrefix`). A peer still speaking version 1 is told
so (`VersionMismatch`), not left with a layout error.

**Packed messages** (protocols/codec/packed.py): the lockstep's env.observation and env.action, between
an env server and a client that agreed on a byte layout at join (and the env server's messages
with its copy workers, `PACKED_TYPES`), carry a struct header instead of msgpack, and the body in the same frame: the head's payload is `PACKED_MARK` (0xC1, the one byte
msgpack never uses, so it cannot be mistaken for a msgpack head), then type code, seq, sent_at and
the sender's name (`_PACKED_HEAD`), then the raw body. One frame instead of three saves a zmq
message part on both ends. The signature covers the whole payload. A packed message has no msg_id,
run id or parent (nothing refers to them; the run's keys authenticate it), and `decode` returns it
as `Packed(msg_type, data)`; the channel that holds the layout turns it into the message
(transport.py).

Arrays of 64 KiB and more get a frame each and are not copied on send (the frame points at the
array's memory); smaller ones are packed, 8-byte aligned, into one shared first buffer frame.
`decode` copies nothing (`np.frombuffer` over the frame it is given), which is why received
arrays are read-only; the transport hands it frames received as bytes (see transport.py).

`decode` checks, in this order: frame layout (a head of at most `MAX_HEAD_BYTES`), signature,
header and version, body msgpack (strict: no duplicate keys, string keys, size limits), then field
types via `messages.from_body`, then buffer dtypes and sizes. Whatever is wrong raises the matching
`ProtocolError` subclass and nothing else. Pickle never appears. The profile behind these choices
is bench/PROFILE.md.

**What a claimed sender costs.** The header's `sender` is a claim until the signature proves it.
With per-node keys, `decode` refuses a message without a signature (or with one of the wrong
length) before it reads the claim at all; then the claim must be a node id (`NODE_ID_FORM`, at
most `NODE_ID_MAX_CHARS` characters) before the key function is asked for it, and that function
answers only for the run's own nodes (`auth.signing_keys`: a fixed table, nothing cached per
claim). Every decoded header, signed or not, carries a sender of that form, so what a receiver
keys by sender (logs, counters) holds short names only. A made-up name is thus parsed once (at
most `MAX_HEAD_BYTES`) and dropped; nothing of it is kept.

**Duplicate keys.** msgpack's unpacker keeps the last value of a repeated key and has no option
to refuse it, so every map goes through `_map_without_duplicates` (msgpack's `object_pairs_hook`),
which refuses one. It costs ~0.3-0.5 us per map: +1.3-1.6 us on a heartbeat's decode of ~9 us,
+3.6-4.1 us on a msgpack env.observation of 4 agents x 8 copies (~47 us), +1.5 us on its
env.action (~15 us), in CPU time (bench/probes/duplicate_keys.py; docs/claimed_senders.md). The packed
lockstep messages carry no msgpack and pay nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import itertools
import math
import os
import re
import struct
import time
from typing import Any, Callable, NamedTuple, Sequence

import msgpack
import numpy as np

from protocols import PROTOCOL_VERSION
from protocols.codec.errors import (
    FieldError,
    FrameLayoutError,
    MalformedPayload,
    ProtocolError,
    SignatureError,
    VersionMismatch,
)
from protocols.codec.messages import WIRE_DTYPES, from_body, to_body

MAGIC = b"PARLEY/2"  # starts every head frame; the version digit changes with the layout
_MAGIC_FAMILY = b"PARLEY/"  # a head of another layout version starts with this too
V1_DELIMITER = b"<PARLEY|MSG>"  # version 1's delimiter frame: recognised only to name the version
SIGNATURE_BYTES = 32  # raw HMAC-SHA256
_ARRAY_EXT = 1  # msgpack extension code of an array placeholder
_HEADER_FIELDS = {"msg_id": str, "msg_type": str, "sender": str, "run_id": str, "version": int, "seq": int, "sent_at": float}
_MAX_MAP_LEN = 1 << 20
# A head holds two small maps (header, parent header) of short strings: a few hundred bytes. The
# bound keeps a made-up sender name (or any padding) from costing more than this to parse.
MAX_HEAD_BYTES = 16 * 1024
# The most a packed body (which travels in the head frame) may hold: the head's limit less the
# packed header, the sender's name and the signature, which together take well under 256 bytes.
MAX_PACKED_BODY_BYTES = MAX_HEAD_BYTES - 256
# What a sender (a node id) may look like: the run's node ids (`env`, `agent_3`, `learner`,
# `orchestrator`, ...), standalone clients' and copy workers' names. Checked before a sender is
# used for anything, a key lookup included.
NODE_ID_MAX_CHARS = 64
NODE_ID_FORM = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_.-]{{0,{NODE_ID_MAX_CHARS - 1}}}")
_is_node_id = NODE_ID_FORM.fullmatch
# Arrays below this size share one frame: pyzmq copies frames under 64 KiB anyway, and every
# extra frame costs several microseconds on both ends.
SMALL_ARRAY_BYTES = 1 << 16

# Array placeholder: kind (0: the whole buffer frame, 1: a slice of it), dtype code (index in
# WIRE_DTYPE_CODES), ndim, buffer index, byte offset; then ndim uint64 dimensions.
_PLACEHOLDER = struct.Struct("<BBBHQ")
_WHOLE, _SLICE = 0, 1
_MAX_NDIM = 32
# Fixed order: the code is what travels. Only ever append.
WIRE_DTYPE_CODES: tuple[str, ...] = tuple(
    np.dtype(name).str
    for name in ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                 "float16", "float32", "float64")
)
assert set(WIRE_DTYPE_CODES) == WIRE_DTYPES, "every wire dtype needs a code"
_DTYPE_OF_CODE = tuple(np.dtype(name) for name in WIRE_DTYPE_CODES)
_CODE_OF_DTYPE = {name: code for code, name in enumerate(WIRE_DTYPE_CODES)}
_CODE_OF_DTYPE_OBJECT = {np.dtype(name): code for code, name in enumerate(WIRE_DTYPE_CODES)}  # a dtype lookup is 10x cheaper than dtype.str
_SHAPES = [struct.Struct(f"<{n}Q") for n in range(_MAX_NDIM + 1)]
_PLACEHOLDERS = [struct.Struct(f"<BBBHQ{n}Q") for n in range(_MAX_NDIM + 1)]  # the whole placeholder, per ndim


class Header(NamedTuple):
    """A decoded header (a named tuple: built once per received message, so it must be cheap)."""

    msg_id: str
    msg_type: str
    sender: str
    run_id: str
    version: int
    seq: int
    sent_at: float

    def as_map(self) -> dict[str, Any]:
        return self._asdict()


class Envelope(NamedTuple):
    """A decoded message: who sent what, in answer to what, through which routing ids."""

    header: Header
    message: Any
    parent: dict[str, Any]
    identities: tuple[bytes, ...] = ()

    @property
    def msg_type(self) -> str:
        return self.header.msg_type

    @property
    def sender(self) -> str:
        return self.header.sender


def pack_placeholder(index: int, dtype_str: str, shape: Sequence[int], offset: int | None = None) -> bytes:
    """The extension data standing for one array: in frame `index` as a whole (`offset` None) or
    at byte `offset` of it. Public for tests that lay frames out by hand."""
    kind = _WHOLE if offset is None else _SLICE
    return _PLACEHOLDER.pack(kind, _CODE_OF_DTYPE[dtype_str], len(shape), index, offset or 0) + _SHAPES[len(shape)].pack(*shape)


PACKED_MARK = 0xC1  # first byte of a packed head's payload (msgpack's one unused byte)
# Type codes of packed messages: the code is what travels. Only ever append.
PACKED_TYPES: tuple[str, ...] = ("env.observation", "env.action", "env.worker_step", "env.worker_result")
PACKED_CODE = {msg_type: code for code, msg_type in enumerate(PACKED_TYPES)}
_PACKED_HEAD = struct.Struct("<BBQdB")  # mark, type code, seq, sent_at, length of the sender's name


class Packed(NamedTuple):
    """A packed message as it crossed the wire: its type and its raw body (protocols/codec/packed.py)."""

    msg_type: str
    data: Any


def encode_packed(
    msg_type: str, data: bytes, *, sender: str, seq: int, identities: Sequence[bytes] = (), key: bytes = b""
) -> list[Any]:
    """Frames of a packed message (module docstring): one frame, the head with the body after it."""
    name = sender.encode()
    payload = b"".join((_PACKED_HEAD.pack(PACKED_MARK, PACKED_CODE[msg_type], seq, time.time(), len(name)), name, data))
    head = b"".join((MAGIC, _SIGNED, _sign(key, payload), payload)) if key else _UNSIGNED_PREFIX + payload
    return [*identities, head]


def _decode_packed(frames: Sequence[Any], split: int, signature: Any, payload: Any,
                   key: bytes | Callable[[str], bytes]) -> Envelope:
    """A packed message's envelope (module docstring); `payload` is the head frame after the signature."""
    if len(frames) - split != 1:
        raise FrameLayoutError(f"a packed message is one frame after the routing ids, got {len(frames) - split}")
    if len(payload) < _PACKED_HEAD.size:
        raise MalformedPayload(f"packed head: {len(payload)} bytes, shorter than its {_PACKED_HEAD.size}-byte header")
    _, code, seq, sent_at, name_length = _PACKED_HEAD.unpack_from(payload)
    if code >= len(PACKED_TYPES):
        raise MalformedPayload(f"packed head: type code {code}; expected 0..{len(PACKED_TYPES) - 1} ({', '.join(PACKED_TYPES)})")
    body_at = _PACKED_HEAD.size + name_length
    if len(payload) < body_at:
        raise MalformedPayload(f"packed head: a {name_length}-byte sender name needs {body_at} bytes, got {len(payload)}")
    try:
        sender = bytes(payload[_PACKED_HEAD.size : body_at]).decode()
    except UnicodeDecodeError:
        raise MalformedPayload("packed head: the sender's name is not UTF-8") from None
    if key or signature:
        _check_signature(key, signature, (payload,), lambda: sender)
    if not _is_node_id(sender):  # (with per-node keys, refused above already)
        raise MalformedPayload(f"packed head: {_not_a_node_id(sender)}")
    header = Header("", PACKED_TYPES[code], sender, "", PROTOCOL_VERSION, seq, sent_at)
    identities = tuple(bytes(frame) for frame in frames[:split]) if split else ()
    return Envelope(header, Packed(header.msg_type, payload[body_at:]), {}, identities)


def _check_signature(key: bytes | Callable[[str], bytes], signature: Any, parts: tuple[Any, ...],
                     claimed_sender: Callable[[], Any]) -> None:
    """Raise SignatureError unless `signature` (empty: none) is the HMAC of `parts` under `key`,
    or under `key(sender)` when the key depends on the sender the header claims.

    The claim costs nothing until it can be checked: a missing or wrong-length signature is
    refused before the claim is read, and a claim that is not a node id before `key` sees it
    (module docstring, "What a claimed sender costs")."""
    if not key:
        raise SignatureError("unexpected signature: this run is unsigned")
    if not signature:
        raise SignatureError("missing signature: this run signs every message")
    if len(signature) != SIGNATURE_BYTES:
        raise SignatureError(f"signature of {len(signature)} bytes; HMAC-SHA256 signatures have {SIGNATURE_BYTES}")
    mismatch = "signature does not match the run key"
    if callable(key):
        claimed = claimed_sender()
        if not isinstance(claimed, str):
            raise MalformedPayload(f"header field 'sender' must be str, got {_shown(claimed)}")
        if not _is_node_id(claimed):
            raise SignatureError(_not_a_node_id(claimed))
        key, mismatch = key(claimed), f"signature does not match the key of {claimed!r}, the sender the header claims"
        if not key:
            raise SignatureError(f"no signing key for {claimed!r}, the sender the header claims: not a node of this run")
    if not hmac.compare_digest(bytes(signature), _sign(key, *parts)):
        raise SignatureError(mismatch)


def _not_a_node_id(sender: str) -> str:
    """Why `sender` is not a node id, quoting at most its start (a claim may be megabytes long)."""
    quoted = repr(sender[:NODE_ID_MAX_CHARS]) + (f" ... ({len(sender)} characters)" if len(sender) > NODE_ID_MAX_CHARS else "")
    return f"sender {quoted} is not a node id (expected {NODE_ID_FORM.pattern}, at most {NODE_ID_MAX_CHARS} characters)"


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
    header_bytes = _header_prefix(sender, run_id).pack(message.MSG_TYPE, _next_msg_id(), seq, time.time())
    head_payload = header_bytes + (_HEADER_PACKER.pack(parent.as_map()) if parent else _EMPTY_MAP)
    body = to_body(message)
    # Optimistic single pass: small arrays go to buffer 0 (one shared frame). A message with
    # only large arrays is packed again with their indices starting at 0 (rare: no hot-path
    # message is made of large arrays only).
    body_bytes, buffers = _BODY_PACKER.pack_body(body, small_frame_first=True)
    if buffers and buffers[0] is None:
        body_bytes, buffers = _BODY_PACKER.pack_body(body, small_frame_first=False)
    if key:
        head = b"".join((MAGIC, _SIGNED, _sign(key, head_payload, body_bytes, *buffers), head_payload))
    else:
        head = _UNSIGNED_PREFIX + head_payload
    # A C-contiguous array exposes the buffer protocol; zmq sends it without a copy.
    if identities:
        return [*identities, head, body_bytes, *buffers]
    return [head, body_bytes, *buffers]


class _HeaderPrefix:
    """A sender's header as msgpack, built once: the map's constant entries (sender, run id,
    version) and each message type's entry are packed the first time and reused; only msg_id,
    seq and sent_at are packed per message. Starts with the `[header, parent]` array marker."""

    def __init__(self, sender: str, run_id: str) -> None:
        packb = msgpack.Packer(use_bin_type=True).pack
        # fixarray of 2 (header, parent), then a fixmap of the 7 header entries.
        self._start = b"\x92\x87" + b"".join(
            packb(name) + packb(value) for name, value in (("sender", sender), ("run_id", run_id), ("version", PROTOCOL_VERSION))
        )
        self._types: dict[str, bytes] = {}
        self._msg_id_key, self._seq_key, self._sent_at_key = packb("msg_id"), packb("seq"), packb("sent_at")
        self._packb = packb

    def pack(self, msg_type: str, msg_id: str, seq: int, sent_at: float) -> bytes:
        start = self._types.get(msg_type)
        if start is None:
            start = self._types[msg_type] = self._start + self._packb("msg_type") + self._packb(msg_type)
        packb = self._packb
        return b"".join((start, self._msg_id_key, packb(msg_id), self._seq_key, packb(seq), self._sent_at_key, packb(sent_at)))


_HEADER_PREFIXES: dict[tuple[str, str], _HeaderPrefix] = {}


def _header_prefix(sender: str, run_id: str) -> _HeaderPrefix:
    prefix = _HEADER_PREFIXES.get((sender, run_id))
    if prefix is None:
        if len(_HEADER_PREFIXES) > 1024:  # a process speaks as one or a few senders; never grow unbounded
            _HEADER_PREFIXES.clear()
        prefix = _HEADER_PREFIXES[(sender, run_id)] = _HeaderPrefix(sender, run_id)
    return prefix


class _BodyPacker:
    """One msgpack Packer reused for every body (building a Packer costs more than packing a
    small body), with the array placeholders of the module docstring. Not reentrant; a process
    encodes one message at a time."""

    def __init__(self) -> None:
        self._packer = msgpack.Packer(default=self._pack_array, use_bin_type=True)
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
            code = _CODE_OF_DTYPE_OBJECT.get(array.dtype)
            if code is None:
                raise TypeError(f"arrays of dtype {array.dtype} cannot cross the wire")
            shape = array.shape
            if len(shape) > _MAX_NDIM:
                raise TypeError(f"arrays of more than {_MAX_NDIM} dimensions cannot cross the wire, got {len(shape)}")
            if array.nbytes < SMALL_ARRAY_BYTES and self._small_index is not None:
                self._small_used = True
                small = self._small
                offset = len(small)
                small += array.tobytes()
                padding = -len(small) % 8  # keep the next array aligned
                if padding:
                    small += _ZEROS[:padding]
                data = _PLACEHOLDERS[len(shape)].pack(_SLICE, code, len(shape), 0, offset, *shape)
            else:
                self._buffers.append(array)
                data = _PLACEHOLDERS[len(shape)].pack(_WHOLE, code, len(shape), len(self._buffers) - 1, 0, *shape)
            # ExtType's own constructor re-checks its arguments in Python (4x the cost); these are right.
            return tuple.__new__(msgpack.ExtType, (_ARRAY_EXT, data))
        if isinstance(obj, np.generic):  # numpy scalars become plain Python numbers
            return obj.item()
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):  # a nested typed record
            return to_body(obj)
        raise TypeError(f"cannot encode {type(obj).__name__} in a message body")


_HEADER_PACKER = msgpack.Packer(use_bin_type=True)
_BODY_PACKER = _BodyPacker()
_EMPTY_MAP = msgpack.packb({})
_ZEROS = bytes(8)
_SIGNED = bytes([SIGNATURE_BYTES])
_UNSIGNED_PREFIX = MAGIC + b"\x00"
_HEAD_FIXED = len(MAGIC) + 1


def decode(frames: Sequence[Any], *, key: bytes | Callable[[str], bytes] = b"") -> Envelope:
    """Validate and decode received frames (bytes, memoryviews or anything with a buffer).

    `key`: the run's key, or `sender -> key` when every node signs with its own key (the header's
    `sender` is then read, and only it, before the signature is checked).
    """
    split = _find_head(frames)
    head = frames[split]
    head = head if type(head) is bytes else memoryview(head).cast("B")
    signature_length = head[len(MAGIC)]
    if signature_length not in (0, SIGNATURE_BYTES):
        raise FrameLayoutError(f"head: signature length must be 0 or {SIGNATURE_BYTES}, got {signature_length}")
    payload_at = _HEAD_FIXED + signature_length
    if len(head) < payload_at:
        raise FrameLayoutError(f"head: {len(head)} bytes, too short for a {signature_length}-byte signature")
    if len(head) > MAX_HEAD_BYTES:
        raise FrameLayoutError(f"head: {len(head)} bytes, over the {MAX_HEAD_BYTES} bytes a head may have")
    head_payload = head[payload_at:]
    if head_payload and head_payload[0] == PACKED_MARK:
        return _decode_packed(frames, split, head[_HEAD_FIXED:payload_at], head_payload, key)
    if len(frames) - split < 2:
        raise FrameLayoutError(f"expected a body frame after the head, got {len(frames) - split - 1} frame(s)")
    body_frame = frames[split + 1]
    buffer_frames = frames[split + 2 :]
    if key or signature_length:  # an unsigned run skips hashing; a stray signature is refused
        _check_signature(key, head[_HEAD_FIXED:payload_at], (head_payload, body_frame, *buffer_frames),
                         lambda: _unpack_head(head_payload)[0].get("sender"))

    header_map, parent = _unpack_head(head_payload)
    header = _decode_header(header_map)
    buffer_views = [frame if type(frame) is bytes else memoryview(frame).cast("B") for frame in buffer_frames]
    used_buffers = [False] * len(buffer_views)

    def unpack_array(code: int, data: bytes) -> Any:
        if code != _ARRAY_EXT:
            raise MalformedPayload(f"unknown msgpack extension code {code} (expected {_ARRAY_EXT} for arrays)")
        ndim = data[2] if len(data) >= _PLACEHOLDER.size else -1
        if not 0 <= ndim <= _MAX_NDIM or len(data) != _PLACEHOLDER.size + 8 * ndim or data[0] > _SLICE:
            kind = data[0] if data else None
            raise MalformedPayload(
                f"array placeholder must be kind (0 or 1), dtype, ndim (<= {_MAX_NDIM}), buffer, offset and ndim "
                f"dimensions; got kind {kind}, ndim {ndim} in {len(data)} bytes"
            )
        kind, dtype_code, _, index, offset, *shape = _PLACEHOLDERS[ndim].unpack_from(data)
        if index >= len(buffer_views):
            raise FrameLayoutError(f"array refers to buffer {index} but {len(buffer_views)} buffer frame(s) arrived")
        if dtype_code >= len(_DTYPE_OF_CODE):
            raise FieldError(f"array dtype code {dtype_code} is not allowed; expected 0..{len(_DTYPE_OF_CODE) - 1} ({', '.join(WIRE_DTYPE_CODES)})")
        dtype = _DTYPE_OF_CODE[dtype_code]
        # Python ints: np.prod would wrap around on a huge declared shape and could match a short buffer.
        count = math.prod(shape)
        nbytes = dtype.itemsize * count
        frame = buffer_views[index]
        if kind == _WHOLE:
            if offset:
                raise FieldError(f"array {dtype}{list(shape)} fills buffer {index}: its offset must be 0, got {offset}")
            if len(frame) != nbytes:
                raise FieldError(f"array {dtype}{list(shape)} needs {nbytes} bytes, buffer {index} has {len(frame)}")
        elif offset + nbytes > len(frame):
            raise FieldError(
                f"array {dtype}{list(shape)} at offset {offset} needs {nbytes} bytes, buffer {index} has {len(frame)}"
            )
        used_buffers[index] = True
        array = np.frombuffer(frame, dtype=dtype, count=count, offset=offset)
        if ndim != 1:
            array = array.reshape(shape)
        if type(frame) is not bytes:  # a bytes frame is read-only already; other memory may be writable
            array.flags.writeable = False
        return array

    body = _unpack(body_frame, "body", ext_hook=unpack_array)
    if not all(used_buffers):
        raise FrameLayoutError(
            f"{len(buffer_views)} buffer frame(s) arrived but the body refers to {sum(used_buffers)}"
        )
    message = from_body(header.msg_type, body)
    identities = tuple(bytes(frame) for frame in frames[:split]) if split else ()
    return Envelope(header, message, parent, identities)


def _find_head(frames: Sequence[Any]) -> int:
    """Index of the head frame (the first frame starting with MAGIC); version 1's delimiter or
    another version's head is a `VersionMismatch`, anything else a `FrameLayoutError`."""
    for index, frame in enumerate(frames):
        if type(frame) is not bytes:
            frame = memoryview(frame).cast("B")
        prefix = bytes(frame[: len(MAGIC)])
        if prefix == MAGIC:
            if len(frame) < _HEAD_FIXED:
                raise FrameLayoutError(f"head frame of {len(frame)} bytes: too short for the signature length byte")
            return index
        if prefix.startswith(_MAGIC_FAMILY) or (prefix == V1_DELIMITER[: len(MAGIC)] and bytes(frame) == V1_DELIMITER):
            other = prefix[len(_MAGIC_FAMILY):] if prefix.startswith(_MAGIC_FAMILY) else b"1 (a delimiter frame)"
            raise VersionMismatch(
                f"expected protocol version {PROTOCOL_VERSION} (a head frame starting {MAGIC!r}), got an envelope of version {other.decode(errors='replace')}"
            )
    raise FrameLayoutError(f"no head frame (starting {MAGIC!r}) among {len(frames)} frames")


# Message ids: a random per-process prefix and a counter. Unique like a uuid4 (the prefix has
# 64 random bits), at a fraction of the cost per message. Re-drawn in a forked child (by a fork
# hook, not a pid check per message: `os.getpid` is a system call).
def _draw_msg_id_prefix() -> None:
    global _msg_id_prefix, _msg_id_counter
    _msg_id_prefix, _msg_id_counter = os.urandom(8).hex() + "-", itertools.count()


_draw_msg_id_prefix()
os.register_at_fork(after_in_child=_draw_msg_id_prefix)


def _next_msg_id() -> str:
    return _msg_id_prefix + str(next(_msg_id_counter))


def _sign(key: bytes, *parts: Any) -> bytes:
    """Raw HMAC-SHA256 (32 bytes) over `parts` in order."""
    mac = hmac.new(key, digestmod=hashlib.sha256)
    for part in parts:
        mac.update(part)
    return mac.digest()


class _DuplicateKey(Exception):
    pass


def _map_without_duplicates(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    """A decoded msgpack map, refused when a key repeats (msgpack would keep the last value)."""
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[Any] = set()
        raise _DuplicateKey(next(k for k, _ in pairs if k in seen or seen.add(k)))
    return result


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
            object_pairs_hook=_map_without_duplicates,
        )
    except ProtocolError:
        raise
    except _DuplicateKey as duplicate:
        key = duplicate.args[0]
        shown = repr(key[:NODE_ID_MAX_CHARS]) + ("..." if len(key) > NODE_ID_MAX_CHARS else "")
        raise MalformedPayload(f"{what}: a msgpack map repeats the key {shown}; keys must be unique") from None
    except Exception as error:  # msgpack raises several unrelated types for bad input
        raise MalformedPayload(f"{what} is not valid msgpack: {type(error).__name__}: {error}") from None


def _unpack_head(data: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    value = _unpack(data, "head")
    if type(value) is not list or len(value) != 2:
        raise MalformedPayload(f"head must be a msgpack array [header, parent header], got {_describe(value)}")
    header, parent = value
    if type(header) is not dict:
        raise MalformedPayload(f"header must be a msgpack map, got {type(header).__name__}")
    if type(parent) is not dict:
        raise MalformedPayload(f"parent header must be a msgpack map, got {type(parent).__name__}")
    return header, parent


def _describe(value: Any) -> str:
    return f"an array of {len(value)}" if type(value) is list else type(value).__name__


def _decode_header(header: dict[str, Any]) -> Header:
    # The version is checked before anything else in the header: a newer peer may have
    # changed the other fields.
    version = header.get("version")
    if version != PROTOCOL_VERSION or type(version) is not int:
        raise VersionMismatch(f"expected protocol version {PROTOCOL_VERSION}, got {version!r}")
    msg_id, msg_type, sender, run_id = header.get("msg_id"), header.get("msg_type"), header.get("sender"), header.get("run_id")
    seq, sent_at = header.get("seq"), header.get("sent_at")
    # The common case in one test; the loop below only runs to name what is wrong.
    if not (type(msg_id) is str and type(msg_type) is str and type(sender) is str and type(run_id) is str
            and type(seq) is int and type(sent_at) is float):
        for name, kind in _HEADER_FIELDS.items():
            value = header.get(name)
            if kind is float and type(value) is int:
                continue  # an int where a float is expected is accepted (converted below)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise MalformedPayload(f"header field {name!r} must be {kind.__name__}, got {_shown(value)}")
        sent_at = float(sent_at)
    if not _is_node_id(sender):
        raise MalformedPayload(f"header field 'sender': {_not_a_node_id(sender)}")
    return Header(msg_id, msg_type, sender, run_id, version, seq, sent_at)


def _shown(value: Any) -> str:
    """`repr(value)`, cut short: an error message must not carry a peer's megabytes."""
    text = repr(value)
    return text if len(text) <= 2 * NODE_ID_MAX_CHARS else f"{text[:2 * NODE_ID_MAX_CHARS]}... ({len(text)} characters)"
