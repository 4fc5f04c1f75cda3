"""The same-host lockstep through shared memory: packed bodies in a mapped segment, a wake-up outside zmq.

An agent on the env server's machine need not send its lockstep bodies through zmq: the two
processes can share memory. This module is that path, below the channel, so nothing above it
changes: the barrier, the server's loop, the node and `RemoteParallelEnv` still send and receive
the same `EnvObservation` / `EnvAction` objects, and every rule of the lockstep (deadline,
default actions, absent and rejoin, take-over, step holds, evaluation copies, authentication of
who may join) is the zmq path's, because it is the same code.

**Who gets it.** A client that asks for packed bodies (protocols/codec/packed.py) also sends its
`host_key()` with env.join (`EnvJoin.shm_host`): the boot id of the kernel and the device and
inode of /dev/shm, so two containers on one host with private /dev/shm mounts do not match. The
server grants the shared-memory path when `env.transport` is `auto` or `shm`, packing was
granted, and the keys match (`ClientBodies.grant_shared_memory`, env_server/client_bodies.py); with `shm`, a client it cannot grant
is refused (`shm_unavailable`, naming why) and a server whose spaces cannot be packed, or that
forwards infos, does not start. `zmq` never grants it. The server logs its decision per client,
as it does for packing.

**The segment and its two wake-up pipes.** One segment per granted join (a take-over or a
restarted server makes a new one), made by the server: a file in /dev/shm (what `shm_open`
makes; `multiprocessing.shared_memory` is not used because on Python 3.11 its resource tracker
also "cleans up" segments a process merely attached to, bpo-39959), created with O_EXCL and mode
0600, named `parley-<run id>-<server pid>-<n>-<random>`, and beside it two named pipes (FIFOs,
mode 0600) with the same name and `.down` / `.up` appended: each side writes one byte into its
peer's pipe after each message it puts into the segment, and polls its own pipe with its zmq
sockets. The segment's name travels only in the welcome, which is signed (and, with CURVE,
encrypted) like every message: joining stays the signed zmq exchange it was. The client maps the
segment, opens both pipes and **unlinks all three at once**, before it sends env.reset; the
server unlinks them too when that reset arrives (whichever comes first wins, the other finds
nothing). From then on nothing is left in /dev/shm: the kernel frees the memory and the pipes
when the last process that holds them exits, so a `kill -9` of either side leaves nothing. What
the window between the welcome and the reset can leave (a server killed there) is removed by
the next server of the same run at its start and by the orchestrator when the run ends
(`reap_stale_segments`: names of this run whose server pid is dead, on that host), and a server
unlinks all of its own at close. Both sides open both pipes read-write and non-blocking, so no
open blocks, no write fails for want of a reader, and a wake-up nobody reads (a dead peer) fills
the pipe and is then skipped.

**Layout.** Two slots, one per direction: `down` (server to client: env.observation) and `up`
(client to server: env.action). Each slot is a 64-byte header (written, read, zmq messages
seen, and the message's length, type code and send time) and a body of a fixed capacity, the
largest packed body the client's layout can produce for the larger of the training and
evaluation copy counts. A body is exactly the packed body (protocols/codec/packed.py): step, flags,
missing mask, the arrays.

**One step.** The writer checks the slot was read (`read == written`), copies the body into it
(one copy of the packed body), writes the length, type code and send time, bumps `written` and
writes one byte into the peer's pipe. The reader, woken by its pipe, empties the pipe, and when
the slot holds a message it has not read, copies the body out (a few hundred bytes: the node may
hold an observation for several steps, the slot is reused next step), sets `read = written` and
unpacks it into the same message class a packed zmq frame gives. Before it goes back to its poll,
a reader also looks at every slot it reads (one read of the header each) and takes what was
written since the poll returned, emptying that pipe with it: the actions that reach the env server
while it handles the first need no wake-up of their own (1.5 instead of 2.7 a K=1 step at N = 4).
Nobody spins: the reader blocks in its usual poll, on its zmq sockets and its pipes together. A
message through shared memory costs no zmq call, no envelope and no signature on either side.

**Never a torn read, never a reordering, never a lost message.** Two paths between the same two
processes can reorder messages; two counters keep them in order. Every message the writer sends
its peer by zmq (env.reset, an error, the welcome of a take-over, or a lockstep body that could
not go through the segment) is counted by the writer (`sent_by_zmq`), and the reader counts
every zmq message it receives from that peer in the slot's header (`zmq seen`). The writer puts a
message into the segment only when the slot was read **and** the reader has seen every zmq
message sent before it; otherwise the message goes by zmq, as a packed frame. So a message in
the segment never overtakes a zmq message sent before it. And the reader, before it delivers a
zmq message from a peer, first delivers what that peer's slot holds unread: whatever is in the
slot was written before the zmq message was sent (the writer would otherwise have used the
slot), so a zmq message never overtakes a message in the segment either. The writer never
overwrites a slot that was not read (a client holding an observation past the deadline, a dead
client): that message goes by zmq. A zmq message that never reaches the reader leaves the link
on zmq for good: slower, nothing lost.

**No observation objects on the env server.** The server packs an observation straight from the
step's arrays into the client's slot (`Channel.write_packed`, called per client from the
barrier's broadcast through the server's `deliver` callback), without the per-client message.
An action read from a slot comes out of `Channel.recv` as the envelope of an `EnvAction`, at
the point in the stream where its zmq message would have been, and the server dispatches it as
it does one that came by zmq (one way in). Whatever cannot go through the slot (a slot not read
yet, an emulated link that is not ideal) falls back to the message and the rules above.

What this does not do: the barrier still keeps its rules per client and per agent, the server
packs and writes one body and one wake-up per client, and the client side builds its messages as
before; bench/PROFILE.md says what that leaves (docs/results/shm_lockstep.md measures it).
"""

from __future__ import annotations

import logging
import mmap
import os
import re
import secrets
import struct
import time
from pathlib import Path

log = logging.getLogger("protocols.shm")

SHM_DIR = Path("/dev/shm")
_HEADER_BYTES = 64  # per slot, padded to a cache line
# written, read, zmq messages the reader has seen from the writer, then the message: length, type
# code (u64) and sent_at (f64). The writer writes `written` and the message, the reader the rest.
_HEAD = struct.Struct("<QQQQQd")
_FIELD = struct.Struct("<Q")
_COUNTERS = struct.Struct("<QQ")  # written, read: a slot holds an unread message when they differ
_MESSAGE = struct.Struct("<QQd")  # length, type code, sent_at: written before `written` moves
_WRITTEN_AT, _READ_AT, _SEEN_AT, _MESSAGE_AT = 0, 8, 16, 24
DOWN, UP = 0, 1  # the slots: server -> client, client -> server
_PIPE_SUFFIXES = (".down", ".up")  # the wake-up pipes: the client reads .down, the server reads .up
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
    """Unlink this run's segments and wake-up pipes whose server is dead (a server killed between
    a welcome and the client's mapping of it); returns their names."""
    pattern = re.compile(re.escape(f"{_PREFIX}{_run_tag(run_id)}-") + r"(\d+)-\d+-[0-9a-f]+(\.down|\.up)?$")
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
    """One client's segment and wake-up pipes, from one side: writes its own slot, reads the
    other's (module docstring).

    `peer_sender` is the node name messages read from the segment are attributed to (the client's
    id on the server, the server's on the client). `wake_fd` is the pipe to poll: readable when the
    peer has written a message (or wrote one that was already read; `take` sorts that out).
    """

    def __init__(self, name: str, memory: mmap.mmap, pipes: tuple[int, int], *, writes: int, peer_sender: str,
                 capacities: tuple[int, int], owner: bool) -> None:
        self.name = name
        self.peer_sender = peer_sender
        self.owner = owner  # the server: it unlinks the names if the client has not
        self._memory = memory
        self._view = memoryview(memory)
        body_at = 2 * _HEADER_BYTES
        down, up = capacities
        bodies = {DOWN: (body_at, down), UP: (body_at + _aligned(down), up)}
        self._write_head, self._read_head = writes * _HEADER_BYTES, (1 - writes) * _HEADER_BYTES
        self._write_body, self._read_body = bodies[writes], bodies[1 - writes]
        # pipes[DOWN] wakes the client, pipes[UP] the server: this side polls the one it reads.
        self._pipes = pipes
        self.wake_fd, self._notify_fd = pipes[1 - writes], pipes[writes]
        self.closed = False
        self.sent_by_shm = self.sent_by_zmq = 0  # how this side's messages to the peer went
        self.received_by_shm = 0

    # ------------------------------------------------------------------ making and mapping

    @classmethod
    def create(cls, run_id: str, number: int, *, capacities: tuple[int, int], peer_sender: str) -> ShmLink:
        """The server's side of a new segment and its pipes (mode 0600, names nobody else holds)."""
        name = segment_name(run_id, number)
        size = _segment_bytes(capacities)
        try:
            fd = os.open(SHM_DIR / name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as error:
            raise ShmUnavailable(f"cannot create a shared-memory segment in {SHM_DIR}: {error}") from error
        try:
            os.ftruncate(fd, size)
            memory = mmap.mmap(fd, size)
            for suffix in _PIPE_SUFFIXES:
                os.mkfifo(SHM_DIR / (name + suffix), 0o600)
            pipes = _open_pipes(name)
        except OSError as error:
            _unlink_all(name)
            raise ShmUnavailable(f"cannot size, map or make the pipes of shared-memory segment {name} ({size} bytes): {error}") from error
        finally:
            os.close(fd)
        return cls(name, memory, pipes, writes=DOWN, peer_sender=peer_sender, capacities=capacities, owner=True)

    @classmethod
    def attach(cls, name: str, *, capacities: tuple[int, int], peer_sender: str) -> ShmLink:
        """The client's side: map the segment the welcome named and open its pipes, then unlink
        all three names."""
        if "/" in name or not name.startswith(_PREFIX):
            raise ShmUnavailable(f"the welcome names shared-memory segment {name!r}, not one of Parley's ({_PREFIX}...)")
        size = _segment_bytes(capacities)
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
        try:
            pipes = _open_pipes(name)
        except OSError as error:
            memory.close()
            raise ShmUnavailable(f"cannot open the wake-up pipes of shared-memory segment {name}: {error}") from error
        _unlink_all(name)  # mapped and opened: nothing needs the names any more (module docstring)
        return cls(name, memory, pipes, writes=UP, peer_sender=peer_sender, capacities=capacities, owner=False)

    def unlink(self) -> None:
        """Remove the names (both sides may: the second finds nothing). The mapping stays."""
        _unlink_all(self.name)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.owner:
            self.unlink()
        for fd in self._pipes:
            os.close(fd)
        self._view.release()
        try:
            self._memory.close()
        except BufferError:  # an array still views it (a received message): the GC unmaps it later
            pass

    # ------------------------------------------------------------------ the hot path

    def write(self, code: int, body: bytes) -> bool:
        """Copy a packed body into this side's slot and wake the peer. False when the slot is
        still unread, the peer has not seen every zmq message sent to it, or the body does not
        fit: the caller sends it by zmq instead (and counts it, `sent_zmq`)."""
        memory, head_at = self._memory, self._write_head
        written, read, zmq_seen = _HEAD.unpack_from(memory, head_at)[:3]
        at, capacity = self._write_body
        size = len(body)
        if read != written or zmq_seen != self.sent_by_zmq or size > capacity:
            return False
        self._view[at : at + size] = body
        # Length, type and time, then the new generation: the reader trusts the slot once it moved.
        _MESSAGE.pack_into(memory, head_at + _MESSAGE_AT, size, code, time.time())
        _FIELD.pack_into(memory, head_at + _WRITTEN_AT, written + 1)
        self.sent_by_shm += 1
        try:
            os.write(self._notify_fd, b"\x01")
        except BlockingIOError:
            pass  # the pipe is full: the peer has not read for 64 KiB of wake-ups (dead); nothing to wake
        return True

    def sent_zmq(self) -> None:
        """This side sent its peer a message by zmq (any message): see the module docstring."""
        self.sent_by_zmq += 1

    def drain_wake(self) -> None:
        """Empty this side's wake-up pipe; call it before `take`, so a message written after the
        drain wakes the poll again."""
        try:
            while len(os.read(self.wake_fd, 4096)) == 4096:
                pass
        except BlockingIOError:
            pass

    def unread(self) -> bool:
        """Whether the peer's slot holds a message this side has not taken (one read of the
        header: cheap enough to ask of every link before going back to the poll)."""
        written, read = _COUNTERS.unpack_from(self._memory, self._read_head)
        return written != read

    def take(self) -> tuple[int, float, bytes] | None:
        """(type code, sent_at, a copy of the body) of the message the peer's slot holds unread,
        or None; ValueError if the slot announces more than it can hold."""
        memory, head_at = self._memory, self._read_head
        written, read, _, length, code, sent_at = _HEAD.unpack_from(memory, head_at)
        if written == read:
            return None
        at, capacity = self._read_body
        if length > capacity:
            raise ValueError(f"a shared-memory body of {length} bytes in a slot of {capacity}")
        body = self._view[at : at + length].tobytes()
        _FIELD.pack_into(memory, head_at + _READ_AT, written)
        self.received_by_shm += 1
        return code, sent_at, body

    def saw_zmq(self) -> None:
        """A zmq message from the peer was received: counted where the peer's writer checks it."""
        head_at = self._read_head
        (seen,) = _FIELD.unpack_from(self._memory, head_at + _SEEN_AT)
        _FIELD.pack_into(self._memory, head_at + _SEEN_AT, seen + 1)


def _segment_bytes(capacities: tuple[int, int]) -> int:
    return 2 * _HEADER_BYTES + _aligned(capacities[0]) + _aligned(capacities[1])


def _open_pipes(name: str) -> tuple[int, int]:
    """Both wake-up pipes, read-write and non-blocking (module docstring): (down, up)."""
    down = os.open(SHM_DIR / (name + _PIPE_SUFFIXES[DOWN]), os.O_RDWR | os.O_NONBLOCK)
    try:
        up = os.open(SHM_DIR / (name + _PIPE_SUFFIXES[UP]), os.O_RDWR | os.O_NONBLOCK)
    except OSError:
        os.close(down)
        raise
    return down, up


def _unlink_all(name: str) -> None:
    for suffix in ("", *_PIPE_SUFFIXES):
        _unlink(name + suffix)


def _aligned(size: int) -> int:
    return (size + 63) // 64 * 64
