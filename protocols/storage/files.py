"""Files written whole, and sealed: the one way Parley writes a file that must survive a kill.

`atomic_write` writes every such file (a node's checkpoints and replay buffer, the recorded
datasets, the files a remote backend ships home, a plugin's own state): the bytes go to a
temporary file in the target's directory, are fsynced, and the file is renamed over the target
(`os.replace` is atomic on POSIX), then the directory entry is fsynced. A reader, or a node
restarted after a kill mid-save, sees the previous file or the new one, never half of one. When
the file system refuses the write (a full disk, a read-only remount) it raises `FileWriteError`
naming the file and the cause; the previous file stays as it was.

**Sealed files.** A rename protects against a kill mid-save, not against a file damaged
afterwards (a disk error, a copy cut short, a user's mistake). So saved state is *sealed*:
`atomic_write(..., sealed=True)` appends a trailer (magic, format version, payload length,
CRC32 of the payload) and `read_sealed` checks it before anything parses the bytes. A file cut
short loses its trailer, random bytes have none, a flipped byte fails the CRC: each is a
`DamagedStateError` naming the file and what is wrong (protocols/storage/durable_state.py), not an
`[Errno 22]` from inside torch.load.
"""

from __future__ import annotations

import os
import struct
import tempfile
import zlib
from pathlib import Path
from typing import IO, Callable

from protocols.storage.durable_state import DamagedStateError
from protocols.storage.jsonlines import FileWriteError

# The trailer of a sealed file: magic, format version, payload length, CRC32 of the payload.
# At the end rather than the start: the payload (np.savez's zip) is written by seeking back.
SEAL_MAGIC = b"PARLEYSL"
SEAL_FORMAT_VERSION = 1
_SEAL = struct.Struct("<8sIQI")
_CRC_CHUNK = 1 << 20


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None], *, sealed: bool = False) -> None:
    """Create or replace `path` with what `write(file)` writes, atomically (see the module doc);
    `sealed`: with the trailer `read_sealed` checks.

    An OSError of the file system (ENOSPC, EROFS, EACCES, ...) comes out as `FileWriteError`
    naming `path`; anything else `write` raises comes out as it is."""
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=directory, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as error:
        raise FileWriteError.of(target, error) from None
    try:
        with os.fdopen(descriptor, "wb") as file:
            write(file)
            file.flush()
            if sealed:
                _append_seal(file)
            os.fsync(file.fileno())
        os.replace(temporary, target)
    except BaseException as error:
        # Leave nothing behind; the previous file at `target` (if any) is untouched.
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        if isinstance(error, OSError) and not isinstance(error, FileWriteError):
            raise FileWriteError.of(target, error) from None
        raise
    _fsync_directory(directory)


def _append_seal(file: IO[bytes]) -> None:
    # The CRC is read back from the file rather than computed while writing: zip writers
    # (np.savez) seek back to patch their headers, so the bytes written are not the file's.
    length = os.fstat(file.fileno()).st_size
    crc, offset = 0, 0
    while offset < length:
        chunk = os.pread(file.fileno(), min(_CRC_CHUNK, length - offset), offset)
        if not chunk:
            raise OSError(f"read back {offset} of {length} bytes")
        crc = zlib.crc32(chunk, crc)
        offset += len(chunk)
    file.seek(0, os.SEEK_END)
    file.write(_SEAL.pack(SEAL_MAGIC, SEAL_FORMAT_VERSION, length, crc))
    file.flush()


def is_sealed(data: bytes) -> bool:
    """Whether `data` ends in a Parley seal (its magic; whether the rest checks is `read_sealed`'s
    job). For readers of formats that were once written unsealed (datasets of format version 1)."""
    return len(data) >= _SEAL.size and data[len(data) - _SEAL.size : len(data) - _SEAL.size + len(SEAL_MAGIC)] == SEAL_MAGIC


def read_sealed(path: str | os.PathLike[str]) -> bytes:
    """The payload of the sealed file at `path`, verified; `DamagedStateError` naming the file and
    what is wrong when it is cut short, not sealed, of another format version or fails its CRC."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise DamagedStateError(path, f"cannot be read: {error.strerror or error}") from None
    if len(data) < _SEAL.size:
        raise DamagedStateError(path, f"{len(data)} bytes, shorter than its {_SEAL.size}-byte seal (cut short?)")
    magic, version, length, crc = _SEAL.unpack_from(data, len(data) - _SEAL.size)
    if magic != SEAL_MAGIC:
        raise DamagedStateError(
            path, f"no Parley seal at its end ({len(data)} bytes): cut short, overwritten, or not written by Parley"
        )
    if version != SEAL_FORMAT_VERSION:
        raise DamagedStateError(path, f"sealed in format version {version}, this Parley reads version {SEAL_FORMAT_VERSION}")
    payload = memoryview(data)[: len(data) - _SEAL.size]
    if length != len(payload):
        raise DamagedStateError(path, f"its seal says {length} bytes of payload, the file holds {len(payload)}")
    if zlib.crc32(payload) != crc:
        raise DamagedStateError(path, "its CRC32 does not match its contents (bytes changed after it was written)")
    return bytes(payload)


def _fsync_directory(directory: Path) -> None:
    # The rename is durable only once the directory entry itself reaches the disk.
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # some filesystems do not allow opening directories; the file itself is synced
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
