"""One agent process of `bench/consensus.py`: synchronous consensus rounds on a ring, two ways.

    python bench/consensus_worker.py --index I --ring N --socket-dir DIR --control ENDPOINT
                                     [--tcp-hosts ADDR,ADDR,... --keys-dir DIR]

Spawned by `bench/consensus.py`, never by hand. The process owns node `agent_I` of a ring of `N`
and can run the same averaging rounds two ways, so both are measured in the same processes,
interleaved, under the same load:

- `parley`: a `SyncConsensus` engine with its Metropolis row, a ROUTER inbox and one DEALER per
  neighbour (identity = this node's id), every share encoded and decoded by `Channel` (the real
  envelope codec), waiting on its hub until the engine's next deadline: the path an
  agent node takes;
- `raw`: the same exchange written directly with pyzmq on its own sockets of the same kinds: the
  tensor's buffer sent zero-copy after a 16-byte header `(run, round)`, the same weighted sum in
  numpy, no envelope and no engine: the floor a hand-written exchange reaches.

By default the neighbours talk over ipc in `--socket-dir`. With `--tcp-hosts` (node i at the
i-th address; `bench/consensus.py --hosts N` starts each worker in its own network namespace)
they talk over tcp with CURVE on both socket sets, with the keys of a run in `--keys-dir`: the
Parley hub as an agent node uses it (CURVE servers behind the ZAP allow-list of the run's keys),
the raw sockets with the same key pairs set by hand (CURVE encryption on every frame; no ZAP
handler, which only acts at the handshake). Each run then also reports the bytes this namespace
sent on its network interfaces, headers and CURVE's overhead included.

Conversation with the parent, over a DEALER (identity = node id) to the parent's ROUTER, one
JSON object per message:
    worker -> parent  {"event": "ready"}   after binding, connecting and a hello with every
                                            neighbour on both socket sets
    parent -> worker  {"cmd": "run", "mode": "parley"|"raw", "size": S, "rounds": R, "run": K,
                       "profile": bool}
    worker -> parent  {"event": "done", "run": K, "elapsed_s": ..., "s_per_round": ...,
                       "cpu_s_per_round": ..., "max_abs_diff_vs_other_mode": float | null,
                       "tx_bytes_per_round": float | null, "profile": str | null}
    parent -> worker  {"cmd": "quit"}
    worker -> parent  {"event": "error", "message": traceback}   then the worker exits with 1
Every wait has a deadline; every socket is closed with linger 0.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import math
import pstats
import struct
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import zmq

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(REPO))

from agent_node.peers import PeerMesh  # noqa: E402
from protocols.net.auth import NodeKeys, load_node_keys  # noqa: E402
from protocols.engines.consensus import ConsensusRequest, SyncConsensus  # noqa: E402
from protocols.codec.messages import Heartbeat  # noqa: E402
from protocols.engines.topology import metropolis_weights, ring  # noqa: E402
from protocols.net.transport import Hub  # noqa: E402

RUN_ID = "bench-consensus"
# Generous on purpose: a healthy run never reaches it, and a round that does is reported as an
# error rather than timed (a timed-out round would measure the timeout, not the exchange).
ROUND_TIMEOUT_S = 30.0
# The mesh's heartbeat period here: the first heartbeats are the handshake's hello, and none
# follows while runs are timed (a bench run lasts minutes, far below this).
HELLO_ONLY_HEARTBEAT_S = 3600.0
HANDSHAKE_TIMEOUT_S = 120.0  # 2x8 Python processes importing numpy on 2 loaded cores
COMMAND_TIMEOUT_S = 600.0  # the parent may be busy with another mode's runs for a while
RAW_HEADER = struct.Struct("<qq")  # (run number, round); round -1 marks the hello
RAW_HELLO_ROUND = -1
# With --tcp-hosts every worker has a namespace (and so a port space) of its own: one fixed
# port per socket set on each address.
TCP_PORTS = {"parley": 47100, "raw": 47101}


def initial_tensor(node_index: int, size: int) -> np.ndarray:
    """Node `node_index`'s starting tensor: the same in both modes, so their results must agree."""
    return np.random.default_rng([node_index, size]).standard_normal(size, dtype=np.float32)


class PeerAddresses:
    """Where node `node`'s inbox of socket set `mode` listens: an ipc file in `socket_dir`, or
    with `tcp_hosts` (node id -> address) a fixed port of that node's address."""

    def __init__(self, socket_dir: str, tcp_hosts: dict[str, str] | None) -> None:
        self.socket_dir = socket_dir
        self.tcp_hosts = tcp_hosts

    def endpoint(self, mode: str, node: str) -> str:
        if self.tcp_hosts is None:
            return f"ipc://{self.socket_dir}/{mode}-{node}.sock"
        return f"tcp://{self.tcp_hosts[node]}:{TCP_PORTS[mode]}"


def sent_bytes() -> int | None:
    """Bytes sent so far on this network namespace's interfaces other than loopback (with
    `ip netns exec`, /sys/class/net is the namespace's own); None outside Linux."""
    interfaces = [path for path in Path("/sys/class/net").glob("*") if path.name != "lo"]
    if not interfaces:
        return None
    return sum(int((path / "statistics" / "tx_bytes").read_text()) for path in interfaces)


def close_socket(socket: zmq.Socket) -> None:
    socket.close(linger=0)


# ------------------------------------------------------------------------------------------
# Parley: engine + Channel
# ------------------------------------------------------------------------------------------


class ParleyPeer:
    """This node's side of Parley consensus: one `SyncConsensus` per run, shares through `Channel`."""

    def __init__(
        self, node: str, neighbour_weights: dict[str, float], self_weight: float, addresses: PeerAddresses, keys: NodeKeys | None
    ) -> None:
        self.node = node
        self.neighbour_weights = neighbour_weights
        self.self_weight = self_weight
        self.hub = Hub(sender=node, run_id=RUN_ID, keys=keys)  # keys: CURVE on every tcp socket
        self.inbox = self.hub.bind_router(addresses.endpoint("parley", node), name="inbox", zero_copy=True)  # as an agent node's
        links = {
            neighbour: self.hub.connect_dealer(addresses.endpoint("parley", neighbour), name=neighbour, identity=None)
            for neighbour in sorted(neighbour_weights)
        }
        # The agent node's peer mesh; its heartbeats serve as the hello of the handshake, and
        # their period is long enough that none goes out during the timed runs.
        self.mesh = PeerMesh(node, links, heartbeat_every_s=HELLO_ONLY_HEARTBEAT_S, timeout_s=2 * HELLO_ONLY_HEARTBEAT_S,
                              refusals=self.hub.refusals)

    def handshake(self, timeout_s: float) -> None:
        """Say hello to every neighbour and wait for theirs: afterwards both directions of every
        link carry messages (a DEALER queues what it sends until the peer has bound)."""
        self.mesh.set_state("ready")
        self.mesh.start(time.monotonic())
        deadline = time.monotonic() + timeout_s
        while (waiting_for := set(self.mesh.neighbours) - set(self.mesh.alive_peers())):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self.node} (parley): no hello from {sorted(waiting_for)} within {timeout_s} s")
            if self.inbox in self.hub.wait(remaining):
                for envelope in self.inbox.recv_all():
                    accepted, _ = self.mesh.accept(envelope.sender, envelope.message, time.monotonic())
                    if accepted is None or not isinstance(envelope.message, Heartbeat):
                        raise RuntimeError(f"{self.node} (parley): expected a hello, got {envelope.msg_type} from {envelope.sender!r}")

    def run(self, tensor: np.ndarray, rounds: int, run_number: int) -> tuple[np.ndarray, float]:
        """`rounds` synchronous rounds from `tensor`; returns the result and the seconds taken."""
        engine = SyncConsensus(self.node, self.neighbour_weights, self.self_weight, rounds, ROUND_TIMEOUT_S)
        start = time.monotonic()
        self.mesh.send(engine.start(ConsensusRequest({"x": tensor}, run_number), now=start))
        while not engine.done:
            if self.inbox in self.hub.wait(max(0.0, engine.next_deadline() - time.monotonic())):
                for envelope in self.inbox.recv_all():
                    # Send the next round's shares as soon as a round completes, not after the batch.
                    now = time.monotonic()
                    accepted, _ = self.mesh.accept(envelope.sender, envelope.message, now)
                    if accepted is not None:
                        self.mesh.send(engine.on_message(accepted.sender, accepted.message, now))
            self.mesh.send(engine.on_timer(time.monotonic()))
        elapsed = time.monotonic() - start
        late = [(r, missing) for r, missing in enumerate(engine.missing_by_round) if missing]
        if late:
            raise RuntimeError(f"{self.node} (parley): rounds closed by their deadline without {late}")
        if engine.counters["rejected"] or self.inbox.stats.dropped_invalid:
            raise RuntimeError(
                f"{self.node} (parley): {engine.counters['rejected']} share(s) rejected (last: {engine.last_rejection}), "
                f"{self.inbox.stats.dropped_invalid} invalid message(s) dropped"
            )
        return engine.result["x"], elapsed

    def close(self) -> None:
        self.hub.close()


# ------------------------------------------------------------------------------------------
# Raw pyzmq: header + buffer, numpy weighted sum
# ------------------------------------------------------------------------------------------


class RawPeer:
    """The same rounds with bare pyzmq: what the envelope, the validation and the engine cost
    is the difference between this and `ParleyPeer`."""

    def __init__(
        self, context: zmq.Context, node: str, neighbour_weights: dict[str, float], self_weight: float,
        addresses: PeerAddresses, keys: NodeKeys | None,
    ) -> None:
        self.node = node
        self.neighbour_weights = neighbour_weights
        self.self_weight = self_weight
        self.poller = zmq.Poller()
        self.inbox = context.socket(zmq.ROUTER)
        self.inbox.setsockopt(zmq.LINGER, 0)
        if keys is not None:  # the run's server key pair, as every Parley ROUTER has
            self.inbox.curve_server = True
            self.inbox.curve_secretkey = keys.server_secret
            self.inbox.curve_publickey = keys.server_public
        self.inbox.bind(addresses.endpoint("raw", node))
        self.poller.register(self.inbox, zmq.POLLIN)
        self.dealers: dict[str, zmq.Socket] = {}
        for neighbour in sorted(neighbour_weights):
            dealer = context.socket(zmq.DEALER)
            dealer.setsockopt(zmq.LINGER, 0)
            dealer.setsockopt(zmq.IDENTITY, node.encode())
            if keys is not None:  # this node's own key pair, as its Parley DEALERs
                dealer.curve_serverkey = keys.server_public
                dealer.curve_publickey = keys.public
                dealer.curve_secretkey = keys.secret
            dealer.connect(addresses.endpoint("raw", neighbour))
            self.dealers[neighbour] = dealer

    def handshake(self, timeout_s: float) -> None:
        for dealer in self.dealers.values():
            dealer.send_multipart([RAW_HEADER.pack(0, RAW_HELLO_ROUND), b""])
        waiting_for = set(self.dealers)
        deadline = time.monotonic() + timeout_s
        while waiting_for:
            sender, run_number, round_, _ = self._receive(deadline, f"a hello from {sorted(waiting_for)}")
            if round_ != RAW_HELLO_ROUND or sender not in waiting_for:
                raise RuntimeError(f"{self.node} (raw): expected a hello, got run {run_number} round {round_} from {sender!r}")
            waiting_for.discard(sender)

    def run(self, tensor: np.ndarray, rounds: int, run_number: int) -> tuple[np.ndarray, float]:
        start = time.monotonic()
        own = tensor
        early: dict[tuple[int, str], np.ndarray] = {}  # a neighbour may be one round ahead of us
        for round_ in range(rounds):
            header = RAW_HEADER.pack(run_number, round_)
            for dealer in self.dealers.values():
                # Zero-copy: zmq holds `own` until sent; we never write to it (mixing makes a new array).
                dealer.send_multipart([header, own], copy=False)
            received = {sender: early.pop((round_, sender)) for sender in self.dealers if (round_, sender) in early}
            deadline = start + (round_ + 1) * ROUND_TIMEOUT_S
            while len(received) < len(self.dealers):
                sender, message_run, message_round, payload = self._receive(deadline, f"round {round_} shares")
                if message_run != run_number or not round_ <= message_round < rounds:
                    raise RuntimeError(f"{self.node} (raw): share of run {message_run} round {message_round} during run {run_number} round {round_}")
                array = np.frombuffer(payload, dtype=np.float32)
                if array.shape != own.shape:
                    raise RuntimeError(f"{self.node} (raw): {sender} sent {array.shape[0]} values, expected {own.shape[0]}")
                if message_round == round_:
                    received[sender] = array
                else:
                    early[(message_round, sender)] = array
            # The same weighted sum as `SyncConsensus`, operation for operation (in float32, own
            # value first, neighbours in sender order), so both modes end bitwise equal.
            own = self.self_weight * own
            for sender in sorted(received):
                own += self.neighbour_weights[sender] * received[sender]
        return own, time.monotonic() - start

    def _receive(self, deadline: float, waiting_for: str) -> tuple[str, int, int, memoryview]:
        while True:
            try:
                identity, header, payload = self.inbox.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{self.node} (raw): no {waiting_for} by the deadline") from None
                self.poller.poll(max(1, math.ceil(remaining * 1000)))
                continue
            run_number, round_ = RAW_HEADER.unpack(header.buffer)
            return identity.bytes.decode(), run_number, round_, payload.buffer

    def close(self) -> None:
        for socket in [self.inbox, *self.dealers.values()]:
            close_socket(socket)


# ------------------------------------------------------------------------------------------
# The worker: handshake, then run what the parent asks
# ------------------------------------------------------------------------------------------


def profile_text(profiler: cProfile.Profile, top: int = 25) -> str:
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def receive_command(control: zmq.Socket, timeout_s: float) -> dict:
    if not control.poll(math.ceil(timeout_s * 1000)):
        raise TimeoutError(f"no command from the parent within {timeout_s} s")
    return json.loads(control.recv())


def serve(control: zmq.Socket, node_index: int, peers: dict[str, ParleyPeer | RawPeer], count_bytes: bool) -> None:
    tensors: dict[int, np.ndarray] = {}
    last_results: dict[tuple[str, int, int], np.ndarray] = {}  # (mode, size, rounds) -> result
    while True:
        command = receive_command(control, COMMAND_TIMEOUT_S)
        if command["cmd"] == "quit":
            return
        if command["cmd"] != "run":
            raise ValueError(f"unknown command {command['cmd']!r}; expected 'run' or 'quit'")
        mode, size, rounds, run_number = command["mode"], int(command["size"]), int(command["rounds"]), int(command["run"])
        if mode not in peers:
            raise ValueError(f"unknown mode {mode!r}; expected one of {sorted(peers)}")
        if size not in tensors:
            tensors[size] = initial_tensor(node_index, size)
        # CPU time, not wall time: with more processes than cores a function's wall time also
        # counts the time this process spent preempted by the others.
        profiler = cProfile.Profile(time.process_time) if command.get("profile") else None
        if profiler is not None:
            profiler.enable()
        cpu_before = time.process_time()  # all threads of the process, zmq's I/O thread included
        sent_before = sent_bytes() if count_bytes else None
        result, elapsed = peers[mode].run(tensors[size], rounds, run_number)
        cpu_s = time.process_time() - cpu_before
        sent_after = sent_bytes() if count_bytes else None
        if profiler is not None:
            profiler.disable()
        # Both modes start from the same tensors and do the same sums: their results must agree,
        # which shows that the raw baseline does the same work as the engine.
        last_results[(mode, size, rounds)] = result
        other = last_results.get(("raw" if mode == "parley" else "parley", size, rounds))
        difference = None if other is None else float(np.max(np.abs(result - other)))
        control.send_string(
            json.dumps(
                {
                    "event": "done",
                    "run": run_number,
                    "elapsed_s": elapsed,
                    "s_per_round": elapsed / rounds,
                    "cpu_s_per_round": cpu_s / rounds,
                    "max_abs_diff_vs_other_mode": difference,
                    "tx_bytes_per_round": None if sent_before is None or sent_after is None
                    else (sent_after - sent_before) / rounds,
                    "profile": None if profiler is None else profile_text(profiler),
                }
            )
        )


def main() -> int:
    parser = argparse.ArgumentParser(description="one agent process of bench/consensus.py")
    parser.add_argument("--index", type=int, required=True, help="this node's index on the ring")
    parser.add_argument("--ring", type=int, required=True, help="number of nodes on the ring")
    parser.add_argument("--socket-dir", required=True, help="directory for the ipc socket files")
    parser.add_argument("--control", required=True, help="endpoint of the parent's ROUTER")
    parser.add_argument("--tcp-hosts", default=None, help="comma-separated address of each node (tcp with CURVE instead of ipc)")
    parser.add_argument("--keys-dir", default=None, help="the run's key files (protocols/net/auth.py), with --tcp-hosts")
    args = parser.parse_args()
    if not 0 <= args.index < args.ring:
        raise ValueError(f"--index must be in [0, {args.ring}), got {args.index}")
    if (args.tcp_hosts is None) != (args.keys_dir is None):
        raise ValueError("--tcp-hosts and --keys-dir go together (tcp between hosts is always CURVE)")

    topology = ring(args.ring)
    weights = metropolis_weights(topology)
    node = topology.nodes[args.index]
    neighbour_weights = {topology.nodes[j]: float(weights[args.index, j]) for j in topology.neighbours(args.index)}
    self_weight = float(weights[args.index, args.index])
    tcp_hosts = None
    if args.tcp_hosts is not None:
        hosts = args.tcp_hosts.split(",")
        if len(hosts) != args.ring:
            raise ValueError(f"--tcp-hosts: expected {args.ring} addresses (one per node), got {len(hosts)}")
        tcp_hosts = dict(zip(topology.nodes, hosts))
    addresses = PeerAddresses(args.socket_dir, tcp_hosts)
    keys = None if args.keys_dir is None else load_node_keys(args.keys_dir, node)

    context = zmq.Context()
    control = context.socket(zmq.DEALER)
    control.setsockopt(zmq.LINGER, 0)
    control.setsockopt(zmq.IDENTITY, node.encode())
    control.connect(args.control)
    peers: dict[str, ParleyPeer | RawPeer] = {}
    try:
        peers["parley"] = ParleyPeer(node, neighbour_weights, self_weight, addresses, keys)
        peers["raw"] = RawPeer(context, node, neighbour_weights, self_weight, addresses, keys)
        deadline = time.monotonic() + HANDSHAKE_TIMEOUT_S
        for peer in peers.values():
            peer.handshake(max(0.0, deadline - time.monotonic()))
        control.send_string(json.dumps({"event": "ready"}))
        serve(control, args.index, peers, count_bytes=tcp_hosts is not None)
        return 0
    except Exception:
        # Also on stderr (the parent keeps it in a file): a message sent just before a close
        # with linger 0 may never leave.
        message = f"{node}: {traceback.format_exc()}"
        print(message, file=sys.stderr, flush=True)
        control.send_string(json.dumps({"event": "error", "message": message}))
        return 1
    finally:
        for peer in peers.values():
            peer.close()
        close_socket(control)
        context.destroy(linger=0)  # also closes sockets of a peer whose constructor failed halfway


if __name__ == "__main__":
    sys.exit(main())
