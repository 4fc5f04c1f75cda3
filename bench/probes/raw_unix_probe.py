"""Probe, not a transport: what the lockstep would cost over raw unix sockets instead of zmq.

    python bench/probes/raw_unix_probe.py [--steps 3000] [--copies 1]

A throwaway lockstep with the same parts as the real one except the socket: Parley's wire codec
(`wire.encode` / `wire.decode`, envelope and checks unchanged), `VectorizedParallelEnv` over mpe2
simple_spread N=4 and 4 client processes answering random actions, but each message goes over a
plain AF_UNIX stream socket (length-prefixed frames, blocking reads) instead of a zmq
ROUTER/DEALER pair, so no zmq I/O thread sits between sender and receiver. No barrier rules,
deadlines, reconnects or link emulation: it measures the ceiling a raw path could reach, to
decide whether building one is worth it (bench/PROFILE.md, round 4). Prints steps/s and CPU
microseconds per env step of all processes, like bench/throughput.py, and the server's and each
client's CPU per lockstep step.
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from protocols.codec import messages as m  # noqa: E402
from protocols.codec import wire  # noqa: E402

_COUNT = struct.Struct("<I")


def send_frames(sock: socket.socket, frames: list) -> None:
    parts = [_COUNT.pack(len(frames))]
    for frame in frames:
        data = bytes(frame)
        parts += [_COUNT.pack(len(data)), data]
    sock.sendall(b"".join(parts))


def recv_exact(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("peer closed")
        data += chunk
    return bytes(data)


def recv_frames(sock: socket.socket) -> list[bytes]:
    (count,) = _COUNT.unpack(recv_exact(sock, 4))
    return [recv_exact(sock, _COUNT.unpack(recv_exact(sock, 4))[0]) for _ in range(count)]


def client(path: str, index: int, copies: int) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    sock.sendall(_COUNT.pack(index))
    rng = np.random.default_rng(index)
    seq, cpu_at_first = 0, None
    while True:
        message = wire.decode(recv_frames(sock)).message
        if cpu_at_first is None:
            cpu_at_first = time.process_time()  # start-up (imports, connecting) left out
        if message.run_finished:
            break
        seq += 1
        actions = rng.integers(0, 5, size=copies, dtype=np.int64)
        send_frames(sock, wire.encode(m.EnvAction(step=message.step, actions={f"agent_{index}": actions}),
                                      sender=f"c{index}", run_id="probe", seq=seq))
    print(f"CPU {time.process_time() - cpu_at_first}", flush=True)


def server(path: str, steps: int, copies: int) -> tuple[float, float, float, float]:
    from mpe2 import simple_spread_v3

    from env_server.barrier import observation_for
    from env_server.vector import VectorizedParallelEnv

    envs = VectorizedParallelEnv(lambda: simple_spread_v3.parallel_env(N=4, max_cycles=25, continuous_actions=False),
                                 copies, autoreset=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen()
    clients = [subprocess_client(path, i, copies) for i in range(4)]
    socks = {}
    for _ in range(4):
        conn, _ = listener.accept()
        socks[_COUNT.unpack(recv_exact(conn, 4))[0]] = conn
    result = envs.reset(0)
    start, cpu_start, seq = time.perf_counter(), time.process_time(), 0
    for step in range(steps + 1):
        outgoing = []
        for index, conn in socks.items():
            agent = f"agent_{index}"
            seq += 1
            observation = observation_for([agent], result, step, [], step == steps, False)
            outgoing.append((conn, wire.encode(observation, sender="env", run_id="probe", seq=seq)))
        for conn, frames in outgoing:
            send_frames(conn, frames)
        if step == steps:
            break
        actions = {}
        for conn in socks.values():
            actions.update(wire.decode(recv_frames(conn)).message.actions)
        result = envs.step(actions)
    elapsed, server_cpu = time.perf_counter() - start, time.process_time() - cpu_start
    client_cpu = 0.0
    for process in clients:
        out, _ = process.communicate(timeout=60)
        client_cpu += float(out.decode().split()[-1])
    per_step = 1e6 / steps
    return steps * copies / elapsed, (server_cpu + client_cpu) / (steps * copies) * 1e6, server_cpu * per_step, client_cpu * per_step / 4


def subprocess_client(path: str, index: int, copies: int):
    import subprocess

    return subprocess.Popen([sys.executable, __file__, "--client", path, str(index), str(copies)], stdout=subprocess.PIPE)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        client(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3000, help="lockstep steps")
    parser.add_argument("--copies", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="parley-probe-") as directory:
        rate, cpu, server_us, client_us = server(os.path.join(directory, "probe.sock"), args.steps, args.copies)
    print(f"raw unix lockstep, K={args.copies}: {rate:.0f} env steps/s, {cpu:.0f} us CPU per env step "
          f"(from the first observation on; per lockstep step: server {server_us:.0f} us, each client {client_us:.0f} us); load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
