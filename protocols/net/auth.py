"""Who may talk to a run: its keys, how a node proves who it is, and the limits on what it accepts.

A run has secrets that only its own processes can read: the orchestrator draws them at `up` and
writes them into `<run dir>/keys/` (directory 0700, every file 0600):

    keys/run.json            the run's HMAC key and the run's CURVE server key pair
    keys/public.json         the CURVE public key of every node of the run (and the server's)
    keys/nodes/<node>.json   that node's own CURVE key pair

A node loads `run.json`, `public.json` and its own `nodes/<node>.json` and nothing else, so a
backend that places nodes on other hosts ships exactly those three files to each host.

This module is pure (files, HMAC, limits; no zmq): `protocols/net/transport.py` draws the CURVE key
pairs (`generate_run_keys`), runs the ZAP handler and applies the keys where it makes sockets:

- **tcp**: every socket speaks ZeroMQ CURVE. Every ROUTER is a CURVE server with the run's server
  key pair; every DEALER is a CURVE client with its node's key pair and the run's server public
  key. A ZAP handler admits only the public keys in `public.json` and names each connection by
  the node whose key it presented (zmq's `User-Id`). A message whose header `sender` is not that
  node is dropped and counted. A stranger without a key of the run cannot complete the handshake:
  it can neither send nor receive anything.
- **ipc**: the socket directory is 0700 (other users cannot even connect), and every message is
  HMAC-SHA256-signed (the envelope's signature frame) with its sender's node key, derived from the
  run's HMAC key and the node id. A message whose signature does not match the key of the node its
  header names is dropped and counted. Only the run's own nodes (those of `public.json`) have a
  key, derived once at start (`signing_keys`); a message without a signature is refused before
  its claimed sender is read, and a claim that is no node id before any key is looked up, so a
  made-up sender name costs the receiver nothing it keeps (protocols/codec/wire.py).

What this does not defend against: a process of the run itself (it can read the run key), or
anything running as the same user with access to the run dir. Those can read the keys anyway.

The second half of the module bounds what a receiver accepts: `MessageLimits` (the largest frame
and message per message type) and `BadInputLog`, which turns a burst of bad input into one log
line per source every few seconds instead of one line per message.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pydantic import BaseModel, ConfigDict, Field

KEYS_DIRNAME = "keys"
RUN_KEYS_FILENAME = "run.json"
PUBLIC_KEYS_FILENAME = "public.json"
NODE_KEYS_DIRNAME = "nodes"
# The ZAP domain every Parley CURVE server announces; the handler answers only for it.
ZAP_DOMAIN = "parley"
_NODE_KEY_LABEL = b"parley node signing key\x00"


class KeyFileError(ValueError):
    """The run's key files are missing, unreadable or malformed (names the file and the problem)."""


# ------------------------------------------------------------------------------------------
# Keys on disk
# ------------------------------------------------------------------------------------------


def _write_private(path: Path, data: dict) -> None:
    """Create `path` with mode 0600 (never wider, whatever the umask) and write `data` as JSON."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        json.dump(data, file)
    os.chmod(path, 0o600)


def write_run_keys(
    keys_dir: str | Path,
    server_keypair: tuple[str, str],
    node_keypairs: dict[str, tuple[str, str]],
) -> Path:
    """Write the keys of a run into `keys_dir` (which must not exist yet): a fresh HMAC key, the
    run's CURVE server key pair and each node's CURVE key pair, all z85 `(public, secret)` pairs.

    The CURVE key pairs are drawn by `protocols.net.transport.generate_run_keys`, since drawing
    them takes zmq and this module stays free of it; this one only writes files.
    """
    keys_dir = Path(keys_dir)
    keys_dir.mkdir(mode=0o700)
    os.chmod(keys_dir, 0o700)  # mkdir's mode is filtered by the umask
    (keys_dir / NODE_KEYS_DIRNAME).mkdir(mode=0o700)
    os.chmod(keys_dir / NODE_KEYS_DIRNAME, 0o700)
    server_public, server_secret = server_keypair
    _write_private(
        keys_dir / RUN_KEYS_FILENAME,
        {"hmac_key": secrets.token_hex(32), "server_public": server_public, "server_secret": server_secret},
    )
    publics: dict[str, str] = {}
    for node, (public, secret) in node_keypairs.items():
        publics[node] = public
        _write_private(keys_dir / NODE_KEYS_DIRNAME / f"{node}.json", {"public": public, "secret": secret})
    _write_private(keys_dir / PUBLIC_KEYS_FILENAME, {"server_public": server_public, "nodes": publics})
    return keys_dir


def _read_json(path: Path, fields: tuple[str, ...]) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KeyFileError(f"key file {path} does not exist (the run's keys are written by `orchestrate up`)") from None
    except (OSError, ValueError) as error:
        raise KeyFileError(f"cannot read key file {path}: {error}") from None
    missing = [name for name in fields if not isinstance(data, dict) or name not in data]
    if missing:
        raise KeyFileError(f"key file {path}: expected fields {list(fields)}, missing {missing}")
    return data


@dataclass(frozen=True)
class NodeKeys:
    """What one node needs to prove who it is and to check everyone else."""

    node_id: str
    hmac_key: bytes  # the run's HMAC key: node signing keys derive from it
    server_public: bytes  # z85: the run's CURVE server key pair (every ROUTER of the run)
    server_secret: bytes
    public: bytes  # z85: this node's CURVE key pair (its DEALERs)
    secret: bytes
    node_publics: dict[str, bytes] = field(default_factory=dict)  # node id -> z85 public key

    def signing_key(self, node_id: str) -> bytes:
        return node_signing_key(self.hmac_key, node_id)

    def node_of_public_key(self) -> dict[bytes, str]:
        return {public: node for node, public in self.node_publics.items()}


def load_node_keys(keys_dir: str | Path, node_id: str) -> NodeKeys:
    """The keys of `node_id` from a run's key directory; KeyFileError names the file at fault."""
    keys_dir = Path(keys_dir)
    run = _read_json(keys_dir / RUN_KEYS_FILENAME, ("hmac_key", "server_public", "server_secret"))
    public = _read_json(keys_dir / PUBLIC_KEYS_FILENAME, ("server_public", "nodes"))
    own = _read_json(keys_dir / NODE_KEYS_DIRNAME / f"{node_id}.json", ("public", "secret"))
    if public["nodes"].get(node_id) != own["public"]:
        raise KeyFileError(f"{keys_dir / PUBLIC_KEYS_FILENAME}: the public key of {node_id!r} does not match its key file")
    try:
        hmac_key = bytes.fromhex(run["hmac_key"])
    except (TypeError, ValueError):
        raise KeyFileError(f"{keys_dir / RUN_KEYS_FILENAME}: hmac_key must be hex") from None
    return NodeKeys(
        node_id=node_id,
        hmac_key=hmac_key,
        server_public=run["server_public"].encode("ascii"),
        server_secret=run["server_secret"].encode("ascii"),
        public=own["public"].encode("ascii"),
        secret=own["secret"].encode("ascii"),
        node_publics={node: key.encode("ascii") for node, key in public["nodes"].items()},
    )


def node_signing_key(hmac_key: bytes, node_id: str) -> bytes:
    """The key node `node_id` signs its ipc messages with: HMAC(run key, label | node id)."""
    return hmac.new(hmac_key, _NODE_KEY_LABEL + node_id.encode(), hashlib.sha256).digest()


def signing_keys(keys: NodeKeys) -> Callable[[str], bytes]:
    """`sender -> key` for `wire.decode`: the key of the node a header claims to be, and b""
    (refused: "not a node of this run") for any name that is not one of the run's nodes.

    The keys of every node in `public.json` (all of the run's nodes, fixed at `up`) are derived
    once, here: a claim is looked up, never stored, so made-up names cost the receiver nothing
    (a cache filled by claims would grow with whatever names a stranger invents)."""
    known = {node: keys.signing_key(node) for node in keys.node_publics}

    def key_for(sender: str) -> bytes:
        return known.get(sender, b"")

    return key_for


# ------------------------------------------------------------------------------------------
# Limits
# ------------------------------------------------------------------------------------------

MIB = 1 << 20


class LimitsConfig(BaseModel):
    """`protocols.limits`: the largest frame and message a receiver accepts.

    A receiver must decode what it accepts, and a stranger's (or a buggy peer's) 8 MiB message
    costs the same to refuse after reading as to accept: these bounds make the cost of bad input
    bounded per message. `max_frame_bytes` is enforced by zmq itself before a frame is read
    (ZMQ_MAXMSGSIZE: a peer that sends a bigger frame is disconnected); `max_message_bytes` and
    `per_type` are checked on the received frames. The defaults leave room for the largest
    legitimate messages (observation batches of many env copies, consensus shares of GP models
    of some 10^5 parameters) and refuse the small control messages that grew absurdly large.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    # One frame: an array of a message (observation batches, model parameters) is one frame.
    max_frame_bytes: int = Field(256 * MIB, gt=0)
    # All frames of one message together, unless `per_type` says otherwise.
    max_message_bytes: int = Field(512 * MIB, gt=0)
    # Per message type (`msg_type` as on the wire). Control, membership and join messages carry
    # a few hundred bytes; 1 MiB is generous and keeps a flood of them cheap to refuse.
    per_type: dict[str, int] = {
        "membership.heartbeat": 64 * 1024,
        "control.register": 1 * MIB,
        "control.ready": 64 * 1024,
        "control.start": 64 * 1024,
        "control.status": 1 * MIB,
        "control.run_complete": 64 * 1024,
        "control.shutdown": 64 * 1024,
        "control.goodbye": 64 * 1024,
        "env.join": 64 * 1024,
        "env.reset": 64 * 1024,
    }
    # Consensus shares held for rounds that have not started yet (protocols/engines/consensus.py), in
    # bytes over all senders: a peer (or a stranger) cannot make a node hold more than this.
    max_pending_share_bytes: int = Field(64 * MIB, gt=0)  # = protocols.engines.consensus.DEFAULT_MAX_BUFFERED_BYTES

    def max_bytes_for(self, msg_type: str) -> int:
        return self.per_type.get(msg_type, self.max_message_bytes)


# ------------------------------------------------------------------------------------------
# Rate-limited, aggregated logging of bad input
# ------------------------------------------------------------------------------------------


class BadInputLog:
    """Counts dropped messages per source and reason; logs one aggregated line per source at most
    every `interval_s` ("dropped 10000 invalid messages from X in the last 5 s: 9990 bad
    signature, 10 oversized"). The first drop from a source is logged at once, with its detail.

    The rate limit is per node, not per source: at most `new_sources_per_interval` sources get
    that first line of their own in any `interval_s`. A stranger that takes a new identity for
    every connection would otherwise write one line per identity; past the limit, the drops of
    new sources are counted together under `NEW_SOURCES` ("dropped 190 invalid messages from 190
    new sources in the last 5 s: 190 bad signature").

    `totals` keeps the counts for the whole life of the process (for status and tests).

    Sources and reasons come from what arrived (a routing id, a message type), so what is kept of
    them is bounded in bytes, whatever arrives: a source or reason is cut to `MAX_NAME_CHARS`
    characters; at most `max_sources` sources get a first line of their own over the log's life
    and at most `max_sources` have a window open at once (the rest share one, `OTHER_SOURCES`);
    at most `MAX_REASONS` distinct reasons are counted (the rest as `OTHER_REASONS`), each kept
    once and shared by every counter. A window is forgotten once its line is logged. With the
    defaults that is under 1 MiB (measured in tests/unit/test_auth.py).
    """

    MAX_NAME_CHARS = 96
    MAX_REASONS = 64
    OTHER_SOURCES = "other sources"
    OTHER_REASONS = "other reasons"
    NEW_SOURCES = "new sources"  # the drops of sources past the first-line limit go under this name

    def __init__(
        self,
        logger: logging.Logger,
        where: str,
        interval_s: float = 5.0,
        clock=time.monotonic,
        one: str = "dropped an invalid message",
        many: str = "dropped {n} invalid messages",
        preposition: str = "from",
        max_sources: int = 1024,
        new_sources_per_interval: int = 3,
    ) -> None:
        self.logger = logger
        self.where = where
        self.one = one  # the first line of a source: "<where>: <one> from <source>: <reason>"
        self.many = many  # the aggregated line: "<where>: <many> from <source> in the last 5 s: ..."
        # "from" a peer for messages; "on" a socket for refused handshakes, whose peer is unknown.
        self.preposition = preposition
        self.interval_s = interval_s
        self.clock = clock
        self.max_sources = max_sources
        self.new_sources_per_interval = new_sources_per_interval
        self.totals: Counter[str] = Counter()
        self._window: dict[str, Counter[str]] = {}
        # When each open window started, and when each source's first line was logged (its first
        # window starts there): entries leave once `interval_s` has passed (`flush`).
        self._window_started: dict[str, float] = {}
        self._seen_sources: set[str] = set()
        self._reasons: dict[str, str] = {}  # each reason kept once, whatever string brought it
        self._first_lines: list[float] = []  # when each recent first line was written
        # Distinct sources counted under NEW_SOURCES in its open window (at most max_sources kept).
        self._new_sources_in_window: set[str] = set()
        self._new_sources_capped = False

    def record(self, source: str, reason: str, detail: str = "") -> None:
        now = self.clock()
        source = _bounded(source, self.MAX_NAME_CHARS)
        reason = self._reasons.get(reason) or self._reason(reason)
        self.totals[reason] += 1
        if source not in self._seen_sources:
            self._first_lines = [t for t in self._first_lines if now - t < self.interval_s]
            if len(self._first_lines) < self.new_sources_per_interval and len(self._seen_sources) < self.max_sources:
                self._first_lines.append(now)
                self._seen_sources.add(source)
                self.logger.warning("%s: %s %s %s: %s%s", self.where, self.one, self.preposition, source, reason,
                                    f": {detail}" if detail else "")
                self._window_started[source] = now
                return
            if len(self._new_sources_in_window) < self.max_sources:
                self._new_sources_in_window.add(source)
            else:
                self._new_sources_capped = True
            source = self.NEW_SOURCES
        window = self._window.get(source)
        if window is None:
            if len(self._window) >= self.max_sources:
                source = self.OTHER_SOURCES
                window = self._window.get(source)
            if window is None:
                window = self._window[source] = Counter()
                self._window_started.setdefault(source, now)
        window[reason] += 1
        if now - self._window_started[source] >= self.interval_s:
            self._flush_source(source, now)

    def _reason(self, reason: str) -> str:
        """The one kept copy of `reason` (or of `OTHER_REASONS` once `MAX_REASONS` are kept)."""
        reason = _bounded(reason, self.MAX_NAME_CHARS)
        if reason not in self._reasons:
            if len(self._reasons) >= self.MAX_REASONS:
                return self._reasons.setdefault(self.OTHER_REASONS, self.OTHER_REASONS)
            self._reasons[reason] = reason
        return self._reasons[reason]

    def flush(self, now: float | None = None, force: bool = False) -> None:
        """Log the sources whose window has run `interval_s` (all of them with `force`)."""
        now = self.clock() if now is None else now
        for source, started in list(self._window_started.items()):
            if force or now - started >= self.interval_s:
                self._flush_source(source, now)

    def _flush_source(self, source: str, now: float) -> None:
        started = self._window_started.pop(source)
        counts = self._window.pop(source, None)
        if counts is not None:  # (None: a first line with nothing after it in `interval_s`)
            total = sum(counts.values())
            reasons = ", ".join(f"{count} {reason}" for reason, count in counts.most_common())
            named = source
            if source == self.NEW_SOURCES:
                distinct = len(self._new_sources_in_window)
                named = f"{'at least ' if self._new_sources_capped else ''}{distinct} {self.NEW_SOURCES}"
                self._new_sources_in_window, self._new_sources_capped = set(), False
            self.logger.warning("%s: %s %s %s in the last %.0f s: %s", self.where, self.many.format(n=total),
                                self.preposition, named, max(now - started, 0.0), reasons)


def _bounded(text: str, limit: int) -> str:
    """`text`, or its start and how long it was when it has more than `limit` characters."""
    if len(text) <= limit:
        return text
    suffix = f"... ({len(text)} chars)"
    return text[: limit - len(suffix)] + suffix
