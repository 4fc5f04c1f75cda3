"""The same-host lockstep through shared memory: packed bodies in a mapped segment, a signal frame on zmq.

An agent on the env server's machine need not send its lockstep bodies through zmq: the two
processes can share memory. This module is that path, below the channel, so nothing above it
changes: the barrier, the server's loop, the node and `RemoteParallelEnv` still send and receive
the same `EnvObservation` / `EnvAction` objects, and every rule of the lockstep (deadline,
default actions, absent and rejoin, take-over, step holds, evaluation copies, authentication of
who may join) is the zmq path's, because it is the same code.

**Who gets it.** A client that asks for packed bodies (protocols/packed.py) also sends its
`host_key()` with env.join (`EnvJoin.shm_host`): the boot id of the kernel and the device and
inode of /dev/shm, so two containers on one host with private /dev/shm mounts do not match. The
server grants the shared-memory path when `env.transport` is `auto` or `shm`, packing was
granted, and the keys match (`EnvServer._grant_transport`); with `shm`, a client it cannot grant
is refused (`shm_unavailable`, naming why) and a server whose spaces cannot be packed, or that
forwards infos, does not start. `zmq` never grants it. The server logs its decision per client,
as it does for packing.

**The segment.** One per granted join (a take-over or a restarted server makes a new one), made
by the server: a file in /dev/shm (what `shm_open` makes; `multiprocessing.shared_memory` is not
used because on Python 3.11 its resource tracker also "cleans up" segments a process merely
attached to, bpo-39959), created with O_EXCL and mode 0600, named
`parley-<run id>-<server pid>-<n>-<random>`. Its name and a 16-byte token travel only in the
welcome, which is signed (and, with CURVE, encrypted) like every message: joining stays the
signed zmq exchange it was. The client maps it and **unlinks it at once**, before it sends
env.reset; the server unlinks it too when that reset arrives (whichever comes first wins, the
other finds nothing). From then on nothing is left in /dev/shm: the kernel frees the memory when
the last process that maps it exits, so a `kill -9` of either side leaves no segment. What the
window between the welcome and the reset can leave (a server killed there) is removed by the
next server of the same run at its start and by the orchestrator when the run ends
(`reap_stale_segments`: segments of this run whose server pid is dead, on that host), and a
server unlinks all of its own at close.

**Layout.** Two slots, one per direction: `down` (server to client: env.observation) and `up`
(client to server: env.action). Each slot is a 64-byte header (written u64, read u64, length
u64) and a body of a fixed capacity, the largest packed body the client's layout can produce for
the larger of the training and evaluation copy counts. A body is exactly the packed body
(protocols/packed.py): step, flags, missing mask, the arrays.

**One step.** The writer checks the slot was read (`read == written`), copies the body into it
(one copy of the packed body), bumps `written` to a new generation g and sends a
**signal frame** over the existing zmq socket: 4 magic bytes, the token, the message's type code,
g and the send time (37 bytes; no msgpack, no signature: the token proves it comes from whoever
read the welcome, and the socket is the one the join authenticated). The reader, on that frame,
checks the token and that the slot holds g, copies the body out (a few hundred bytes: the node
may hold an observation for several steps, the slot is reused next step), sets `read = g` and
unpacks it into the same message class a packed zmq frame gives. The wake-up is the zmq frame,
so the reader blocks in its usual poll: there is no busy-wait.

**Never a torn read, never a reordering, never a lost message.** The writer never overwrites a
slot that was not read: when the reader is behind (a client holding an observation past the
deadline, a dead client), the message goes as a packed zmq frame instead, on the same socket, so
it arrives after the signal of the one before it. A reader that gets such a frame marks the slot
read (everything written to it was signalled before that frame, so it has been delivered or lost
with the connection) and counts the frame in the slot's header (`fallbacks seen`). The writer
goes back to shared memory only once the reader has seen every zmq frame it sent: otherwise a
reader that caught up on the slot *before* reaching a zmq frame queued behind it would, on
reaching it, mark read a new generation whose signal is still on its way, and drop that message
as stale (seen in a run: the step's observation lost). A zmq frame that never reaches the reader
leaves the link on zmq for good: slower, nothing lost.

What this does not do: the server still builds one `EnvObservation` per client and the barrier
handles one `EnvAction` per client (the lockstep's rules live there); the per-step saving is the
envelope, the signature and the frame payloads, not the per-client Python. bench/PROFILE.md says
what that leaves (docs/results/shm_lockstep.md measures it).
"""

from __future__ import annotations

import hmac
import logging
import mmap
import os
import re
import secrets
import struct
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("protocols.shm")

SHM_DIR = Path("/dev/shm")
SIGNAL_MAGIC = b"PSHM"
TOKEN_BYTES = 16
_SIGNAL_TAIL = struct.Struct("<BQd")  # packed type code, generation, sent_at
SIGNAL_BYTES = len(SIGNAL_MAGIC) + TOKEN_BYTES + _SIGNAL_TAIL.size
_TOKEN_END = len(SIGNAL_MAGIC) + TOKEN_BYTES
_HEADER_BYTES = 64  # per slot: written, read, length, fallbacks seen (u64), padded to a cache line
_HEAD = struct.Struct("<QQQQ")  # written, read, length, fallbacks seen (zmq frames the reader got instead)
_FIELD = struct.Struct("<Q")  # one of them, written alone (each side writes only its own fields)
_WRITTEN_AT, _READ_AT, _LENGTH_AT, _SEEN_AT = 0, 8, 16, 24
DOWN, UP = 0, 1  # the slots: server -> client, client -> server
_PREFIX = "parley-"


class ShmUnavailable(RuntimeError):
    """Shared memory cannot be used here (no /dev/shm, a segment that cannot be made or mapped)."""


def host_key() -> str:
    """What identifies this machine's shared memory: the kernel's boot id and /dev/shm's device
    and inode ("" when there is no /dev/shm: such a client never gets the shared-memory path)."""
    try:
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        stat = os.stat(SHM_DIR)
    except OSError:
        return ""
    return f"{boot_id}:{stat.st_dev}:{stat.st_ino}"


def _run_tag(run_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", run_id)[:40] or "run"


def segment_name(run_id: str, number: int) -> str:
    return f"{_PREFIX}{_run_tag(run_id)}-{os.getpid()}-{number}-{secrets.token_hex(4)}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def reap_stale_segments(run_id: str) -> list[str]:
    """Unlink this run's segments whose server is dead (a server killed between a welcome and
    the client's mapping of it); returns their names."""
    pattern = re.compile(re.escape(f"{_PREFIX}{_run_tag(run_id)}-") + r"(\d+)-\d+-[0-9a-f]+$")
    reaped = []
    try:
        entries = list(SHM_DIR.iterdir())
    except OSError:
        return reaped
    for path in entries:
        match = pattern.match(path.name)
        if match and not _pid_alive(int(match.group(1))):
            try:
                path.unlink()
                reaped.append(path.name)
            except OSError:
                pass
    if reaped:
        log.warning("removed %d shared-memory segment(s) left by a dead env server of this run: %s", len(reaped), reaped)
    return reaped


def _unlink(name: str) -> None:
    try:
        (SHM_DIR / name).unlink()
    except FileNotFoundError:
        pass


class ShmLink:
    """One client's segment, from one side: writes its own slot, reads the other's (module docstring).

    `peer_sender` is the node name messages read from the segment are attributed to (the client's
    id on the server, the server's on the client); `token` authenticates signal frames.
    """

    def __init__(self, name: str, memory: mmap.mmap, *, writes: int, token: bytes, peer_sender: str,
                 capacities: tuple[int, int], owner: bool) -> None:
        self.name = name
        self.token = token
        self.peer_sender = peer_sender
        self.owner = owner  # the server: it unlinks the name if the client has not
        self._memory = memory
        self._view = memoryview(memory)
        body_at = 2 * _HEADER_BYTES
        down, up = capacities
        bodies = {DOWN: (body_at, down), UP: (body_at + _aligned(down), up)}
        self._write_head, self._read_head = writes * _HEADER_BYTES, (1 - writes) * _HEADER_BYTES
        self._write_body, self._read_body = bodies[writes], bodies[1 - writes]
        self._signal_prefix = SIGNAL_MAGIC + token
        self.closed = False
        self.sent_by_shm = self.sent_by_zmq = 0  # how this side's messages went (for tests and logs)
        self.received_by_shm = 0

    # ------------------------------------------------------------------ making and mapping

    @classmethod
    def create(cls, run_id: str, number: int, *, capacities: tuple[int, int], peer_sender: str) -> ShmLink:
        """The server's side of a new segment (mode 0600, a name nobody else holds)."""
        name = segment_name(run_id, number)
        size = 2 * _HEADER_BYTES + _aligned(capacities[0]) + _aligned(capacities[1])
        try:
            fd = os.open(SHM_DIR / name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as error:
            raise ShmUnavailable(f"cannot create a shared-memory segment in {SHM_DIR}: {error}") from error
        try:
            os.ftruncate(fd, size)
            memory = mmap.mmap(fd, size)
        except OSError as error:
            _unlink(name)
            raise ShmUnavailable(f"cannot size or map the shared-memory segment {name} ({size} bytes): {error}") from error
        finally:
            os.close(fd)
        return cls(name, memory, writes=DOWN, token=secrets.token_bytes(TOKEN_BYTES), peer_sender=peer_sender,
                   capacities=capacities, owner=True)

    @classmethod
    def attach(cls, name: str, token: bytes, *, capacities: tuple[int, int], peer_sender: str) -> ShmLink:
        """The client's side: map the segment the welcome named, then unlink its name."""
        if "/" in name or not name.startswith(_PREFIX):
            raise ShmUnavailable(f"the welcome names shared-memory segment {name!r}, not one of Parley's ({_PREFIX}...)")
        if len(token) != TOKEN_BYTES:
            raise ShmUnavailable(f"the welcome's shared-memory token has {len(token)} bytes, expected {TOKEN_BYTES}")
        size = 2 * _HEADER_BYTES + _aligned(capacities[0]) + _aligned(capacities[1])
        try:
            fd = os.open(SHM_DIR / name, os.O_RDWR)
        except OSError as error:
            raise ShmUnavailable(f"cannot open the env server's shared-memory segment {name}: {error}") from error
        try:
            if os.fstat(fd).st_size != size:
                raise ShmUnavailable(f"shared-memory segment {name}: {os.fstat(fd).st_size} bytes, the layout needs {size}")
            memory = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        _unlink(name)  # mapped: nothing needs the name any more (module docstring)
        return cls(name, memory, writes=UP, token=token, peer_sender=peer_sender, capacities=capacities, owner=False)

    def unlink(self) -> None:
        """Remove the name (both sides may: the second finds nothing). The mapping stays."""
        _unlink(self.name)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.owner:
            self.unlink()
        self._view.release()
        try:
            self._memory.close()
        except BufferError:  # an array still views it (a received message): the GC unmaps it later
            pass

    # ------------------------------------------------------------------ the hot path

    def write(self, code: int, body: bytes) -> bytes | None:
        """Copy a packed body into this side's slot; the signal frame to send, or None when the
        slot is still unread, a zmq frame sent before is still unseen, or the body does not fit
        (send it by zmq instead)."""
        memory, head_at = self._memory, self._write_head
        written, read, _, fallbacks_seen = _HEAD.unpack_from(memory, head_at)
        at, capacity = self._write_body
        size = len(body)
        if read != written or fallbacks_seen != self.sent_by_zmq or size > capacity:
            self.sent_by_zmq += 1  # the caller sends it as a packed zmq frame, which the reader counts
            return None
        self._view[at : at + size] = body
        # The length and the new generation after the body: the reader acts on the signal, which follows.
        _FIELD.pack_into(memory, head_at + _LENGTH_AT, size)
        _FIELD.pack_into(memory, head_at + _WRITTEN_AT, written + 1)
        self.sent_by_shm += 1
        return self._signal_prefix + _SIGNAL_TAIL.pack(code, written + 1, time.time())

    def read(self, signal: Any) -> tuple[int, float, bytes]:
        """(type code, sent_at, a copy of the body) for a signal frame; ValueError if the frame
        is not a signal of this link or the slot does not hold what it announces."""
        if len(signal) != SIGNAL_BYTES or not hmac.compare_digest(bytes(signal[:_TOKEN_END]), self._signal_prefix):
            raise ValueError("a shared-memory signal frame with a wrong token")
        code, generation, sent_at = _SIGNAL_TAIL.unpack_from(signal, _TOKEN_END)
        memory, head_at = self._memory, self._read_head
        written, read, length, _ = _HEAD.unpack_from(memory, head_at)
        if written != generation or read >= generation:
            raise ValueError(f"a shared-memory signal for generation {generation}; the slot holds {written} (read up to {read})")
        at, capacity = self._read_body
        if length > capacity:
            raise ValueError(f"a shared-memory body of {length} bytes in a slot of {capacity}")
        body = self._view[at : at + length].tobytes()
        _FIELD.pack_into(memory, head_at + _READ_AT, generation)
        self.received_by_shm += 1
        return code, sent_at, body

    def skip_unread(self) -> None:
        """A packed zmq frame came from the peer: whatever it wrote before was signalled before
        that frame, so the slot counts as read, and the frame counts as seen (module docstring).
        (The peer writes nothing new to the slot while one of its zmq frames is unseen, so
        `written` is what it was when that frame was sent.)"""
        written, _, _, fallbacks_seen = _HEAD.unpack_from(self._memory, self._read_head)
        _FIELD.pack_into(self._memory, self._read_head + _READ_AT, written)
        _FIELD.pack_into(self._memory, self._read_head + _SEEN_AT, fallbacks_seen + 1)


def is_signal(frame: Any) -> bool:
    return len(frame) == SIGNAL_BYTES and bytes(frame[:4]) == SIGNAL_MAGIC


def _aligned(size: int) -> int:
    return (size + 63) // 64 * 64
