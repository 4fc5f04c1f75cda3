"""How fast could a K=1 lockstep be on this machine? Floors under Parley's, side by side.

    python bench/probes/lockstep_floor.py [--steps 8000] [--repeats 3] [--json]

mpe2 simple_spread_v3 N=4, random actions, one env copy, 4 client processes (one per agent),
each variant stripped of more of what Parley does per message:

- `inprocess`: the env stepped in one process (bench/throughput.py's baseline);
- `inprocess_8_copies`: 8 copies stepped one after the other in one process, per env step: what
  K=8 in one server process pays for the env alone, with nothing else running in that process;
- `floor_raw`: the server steps the env and sends each client its observation as raw bytes
  behind a 16-byte struct over AF_UNIX SOCK_SEQPACKET; the client answers with a struct. No
  codec, no message objects, no zmq: the least a process per agent can cost;
- `floor_shm`: no socket at all: the observations in one shared (N, obs) array written in one
  copy, the actions in one (N,) array, an eventfd per wake-up (one per client per step, and the
  clients' count on the server's): the least an array-based barrier could cost;
- `array_sketch`: `floor_shm` with what the issue's array design would keep in Python: the real
  vectorized env and its batching, the step's reward and flag arrays copied too, zmq polls beside
  the wake-ups, the barrier's due check and action check on arrays, clients that build the
  `EnvObservation` / `EnvAction` a node gets (how far that design could go; not built);
- `floor_zmq`: the same bytes over zmq ROUTER/DEALER on ipc (zmq's I/O threads, no codec);
- `codec_zmq`: zmq, and every message a real `EnvObservation` / `EnvAction` through Parley's
  codec (`wire.encode` / `wire.decode`), but no hub, barrier or vectorized env;
- `parley`: the real env server and bench/random_client.py (bench/throughput.py's K=1 row).

Variants run interleaved, `--repeats` rounds; the table gives medians. `server_cpu_us` is the
server process's CPU per step (all threads), `client_cpu_us` one client's, averaged, `all_cpu_us`
every process together (the only split bench/throughput.py gives for `parley`). The
profile behind this script is bench/PROFILE.md, round 5. A probe, not a transport: nothing here
is used by Parley.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

AGENTS = 4
ENV_KWARGS = {"N": AGENTS, "max_cycles": 25, "continuous_actions": False}
_STEP = struct.Struct("<qq")  # step, done flag (the observation's bytes follow in the floor variants)


def make_env():
    """The env as the env server builds it (bench/throughput.py's baseline too): every variant
    pays the same env step, so the ratios compare what is around it."""
    from env_server.registry import make_env as make_registered_env

    return make_registered_env("mpe2.simple_spread_v3", ENV_KWARGS)


def inprocess(steps: int, copies: int = 1) -> dict:
    envs = [make_env() for _ in range(copies)]
    for env in envs:
        env.reset(seed=0)
    rng = np.random.default_rng(0)
    start, start_cpu = time.perf_counter(), time.process_time()
    for _ in range(steps // copies):
        for env in envs:
            if not env.agents:
                env.reset()
            env.step({agent: int(rng.integers(5)) for agent in env.agents})
    wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    done = steps // copies * copies
    return {"steps_per_s": done / wall, "server_cpu_us": cpu / done * 1e6, "client_cpu_us": 0.0}


# ---------------------------------------------------------------- the forked clients


def _client_loop(receive, send, index: int, decode, encode, report_fd: int) -> None:
    """Answer observations until the last one; write this client's CPU seconds to `report_fd`."""
    rng = np.random.default_rng(index)
    first_cpu, answered = None, 0
    while True:
        step, done = decode(receive())
        if first_cpu is None:
            first_cpu = time.process_time()
        if done:
            break
        send(encode(step, rng))
        answered += 1
    os.write(report_fd, struct.pack("<d", (time.process_time() - first_cpu) / max(1, answered)))


def _struct_codec(index: int):
    def decode(data):
        step, done = _STEP.unpack_from(data)
        np.frombuffer(data, np.float32, offset=_STEP.size)  # the observation, as a client would read it
        return step, done

    def encode(step, rng):
        return _STEP.pack(step, int(rng.integers(5)))

    return decode, encode


def _parley_codec(index: int):
    from protocols.codec import messages as m
    from protocols.codec import wire

    agent, sender, seq = f"agent_{index}", f"client_{index}", iter(range(1, 1 << 62))

    def decode(frames):
        message = wire.decode(frames).message
        return message.step, message.run_finished

    def encode(step, rng):
        action = m.EnvAction(step=step, actions={agent: rng.integers(0, 5, size=1, dtype=np.int64)})
        return wire.encode(action, sender=sender, run_id="floor", seq=next(seq))

    return decode, encode


def _fork_clients(connect_and_loop) -> tuple[list[int], int]:
    read_fd, write_fd = os.pipe()
    pids = []
    for index in range(AGENTS):
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            try:
                connect_and_loop(index, write_fd)
            finally:
                os._exit(0)
        pids.append(pid)
    os.close(write_fd)
    return pids, read_fd


def _reap(pids: list[int], read_fd: int) -> float:
    for pid in pids:
        os.waitpid(pid, 0)
    with os.fdopen(read_fd, "rb") as reports:
        data = reports.read()
    return float(np.mean([value for (value,) in struct.iter_unpack("<d", data)])) * 1e6


# ---------------------------------------------------------------- the server loops


def _serve(steps: int, send_to, receive_from, encode_observation, decode_action) -> tuple[float, float]:
    """The bare lockstep: step, send each client its row, collect 4 actions. (wall s, CPU s)."""
    env = make_env()
    observations, _ = env.reset(seed=0)
    agents = list(env.possible_agents)
    start, start_cpu = time.perf_counter(), time.process_time()
    for step in range(steps + 1):
        finished = step == steps
        for index, agent in enumerate(agents):
            send_to(index, encode_observation(step, finished, agent, observations[agent]))
        if finished:
            break
        actions = {}
        for _ in agents:
            index, action = decode_action(receive_from())
            actions[agents[index]] = action
        observations, *_ = env.step(actions)
        if not env.agents:
            observations, _ = env.reset()
    return time.perf_counter() - start, time.process_time() - start_cpu


def floor_raw(steps: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="parley-floor-") as folder:
        path = f"{folder}/env.sock"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        listener.bind(path)
        listener.listen(AGENTS)

        def client(index: int, report_fd: int) -> None:
            listener.close()
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            conn.connect(path)
            conn.send(struct.pack("<q", index))
            decode, encode = _struct_codec(index)
            _client_loop(lambda: conn.recv(65536), lambda data: conn.send(struct.pack("<q", index) + data),
                         index, decode, encode, report_fd)

        pids, read_fd = _fork_clients(client)
        conns = {}
        for _ in range(AGENTS):
            conn, _ = listener.accept()
            conns[struct.unpack("<q", conn.recv(8))[0]] = conn
        waiting = list(conns.values())
        pending: list[bytes] = []

        def receive_from() -> bytes:
            # Answers come in any order: read whichever client is ready (select, as a server would).
            import select

            while not pending:
                for conn in select.select(waiting, [], [])[0]:
                    pending.append(conn.recv(64))
            return pending.pop()

        wall, cpu = _serve(
            steps,
            lambda index, data: conns[index].send(data),
            receive_from,
            lambda step, finished, agent, obs: _STEP.pack(step, finished) + obs.tobytes(),
            lambda data: (struct.unpack_from("<q", data)[0], _STEP.unpack_from(data, 8)[1]),
        )
        client_cpu = _reap(pids, read_fd)
        for conn in conns.values():
            conn.close()
        listener.close()
    return {"steps_per_s": steps / wall, "server_cpu_us": cpu / steps * 1e6, "client_cpu_us": client_cpu}


def floor_shm(steps: int) -> dict:
    """The lockstep through arrays in shared memory with an eventfd per wake-up: what an
    array-based barrier could reach at best. The server writes all N observations
    into one (N, obs) array in one copy and wakes each client through its eventfd; each client
    copies its row out, writes its action into its slot of one (N,) array, then counts itself
    in on the server's eventfd; the server reads the N actions from that array once the count
    reaches N. No message objects, no zmq, no barrier rules."""
    import mmap

    env = make_env()
    observations, _ = env.reset(seed=0)
    agents = list(env.possible_agents)
    obs_size = len(observations[agents[0]])
    # One anonymous shared mapping, made before the fork: the observations, then per client its
    # action, then the step each observation belongs to (-1: the run is over).
    memory = mmap.mmap(-1, 4 * AGENTS * obs_size + 16 * AGENTS + 8)
    shared_obs = np.frombuffer(memory, np.float32, AGENTS * obs_size, 0).reshape(AGENTS, obs_size)
    shared_actions = np.frombuffer(memory, np.int64, AGENTS, 4 * AGENTS * obs_size)
    shared_step = np.frombuffer(memory, np.int64, 1, 4 * AGENTS * obs_size + 8 * AGENTS)
    wake_client = [os.eventfd(0) for _ in range(AGENTS)]
    wake_server = os.eventfd(0)

    def client(index: int, report_fd: int) -> None:
        rng = np.random.default_rng(index)
        first_cpu, answered = None, 0
        while True:
            os.eventfd_read(wake_client[index])
            if first_cpu is None:
                first_cpu = time.process_time()
            step = int(shared_step[0])
            if step < 0:
                break
            shared_obs[index].copy()  # the observation, as a client would keep it
            shared_actions[index] = int(rng.integers(5))
            os.eventfd_write(wake_server, 1)
            answered += 1
        os.write(report_fd, struct.pack("<d", (time.process_time() - first_cpu) / max(1, answered)))

    pids, read_fd = _fork_clients(client)
    start, start_cpu = time.perf_counter(), time.process_time()
    for step in range(steps + 1):
        finished = step == steps
        shared_step[0] = -1 if finished else step
        if not finished:
            shared_obs[:] = np.array([observations[agent] for agent in agents])  # all N rows, one copy
        for fd in wake_client:
            os.eventfd_write(fd, 1)
        if finished:
            break
        arrived = 0
        while arrived < AGENTS:  # eventfd_read returns (and resets) the count of clients that answered
            arrived += os.eventfd_read(wake_server)
        actions = dict(zip(agents, shared_actions.tolist()))
        observations, *_ = env.step(actions)
        if not env.agents:
            observations, _ = env.reset()
    wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    client_cpu = _reap(pids, read_fd)
    for fd in [*wake_client, wake_server]:
        os.close(fd)
    del shared_obs, shared_actions, shared_step
    memory.close()
    return {"steps_per_s": steps / wall, "server_cpu_us": cpu / steps * 1e6, "client_cpu_us": client_cpu}


def array_sketch(steps: int) -> dict:
    """A sketch of the array-based lockstep design, with what such a Parley would still do
    per step and `floor_shm` leaves out: the server steps the real `VectorizedParallelEnv` (K=1,
    its batching included), copies the step's observation, reward and flag arrays into shared
    arrays (one copy each: the vector env's (N, K) arrays as they are), waits in a zmq poll with
    an idle ROUTER beside the wake-up eventfd (the hub's control channel), and keeps the
    barrier's rules on arrays: every action stamped with its step, the step due when every
    awaited agent's stamp is the open step, the actions checked against the action space in one
    comparison. Each client polls its eventfd the same way, builds the `EnvObservation` of its
    rows and an `EnvAction` (what `RemoteParallelEnv` hands a node), writes its action and stamp,
    and wakes the server. Not built in Parley: what it measures is how far the design could go."""
    import mmap

    import zmq

    from env_server.vector import VectorizedParallelEnv
    from protocols.codec import messages as m

    envs = VectorizedParallelEnv(make_env, 1, autoreset=True)
    agents = envs.possible_agents
    result = envs.reset(seed=0)
    obs_size = result.observations[agents[0]].shape[1]
    n = len(agents)
    layout = [("obs", np.float32, n * obs_size), ("reward", np.float32, n), ("flags", np.bool_, 3 * n),
              ("start", np.bool_, 8), ("action", np.int64, n), ("stamp", np.int64, n), ("step", np.int64, 1)]
    memory = mmap.mmap(-1, sum(np.dtype(dtype).itemsize * count + 8 for _, dtype, count in layout))
    shared, offset = {}, 0
    for name, dtype, count in layout:
        shared[name] = np.frombuffer(memory, dtype, count, offset)
        offset += np.dtype(dtype).itemsize * count + 8
    shared_obs, shared_flags = shared["obs"].reshape(n, obs_size), shared["flags"].reshape(3, n)
    shared["stamp"][:] = -1
    wake_client = [os.eventfd(0, os.EFD_NONBLOCK) for _ in range(n)]
    wake_server = os.eventfd(0, os.EFD_NONBLOCK)
    high = envs.action_spaces[agents[0]].n  # Discrete: the check is 0 <= a < n for every row

    def client(index: int, report_fd: int) -> None:
        context = zmq.Context()
        idle = context.socket(zmq.DEALER)  # the client's other socket, polled with its wake-up
        poller = zmq.Poller()
        poller.register(idle, zmq.POLLIN)
        poller.register(wake_client[index], zmq.POLLIN)
        agent, rng = agents[index], np.random.default_rng(index)
        first_cpu, answered = None, 0
        while True:
            poller.poll()
            os.eventfd_read(wake_client[index])
            if first_cpu is None:
                first_cpu = time.process_time()
            step = int(shared["step"][0])
            if step < 0:
                break
            row = lambda array: {agent: array[index : index + 1].copy()}  # noqa: E731
            m.EnvObservation(step=step, observations={agent: shared_obs[index : index + 1].copy()},
                             rewards=row(shared["reward"]), terminated=row(shared_flags[0]), truncated=row(shared_flags[1]),
                             active=row(shared_flags[2]), final_observations={}, episode_start=shared["start"][:1].copy())
            action = m.EnvAction(step=step, actions={agent: np.array([rng.integers(5)])})
            shared["action"][index] = action.actions[agent][0]
            shared["stamp"][index] = step
            os.eventfd_write(wake_server, 1)
            answered += 1
        os.write(report_fd, struct.pack("<d", (time.process_time() - first_cpu) / max(1, answered)))
        idle.close(0)
        context.term()

    pids, read_fd = _fork_clients(client)
    context = zmq.Context()
    control = context.socket(zmq.ROUTER)  # the hub's control channel: polled, never used here
    poller = zmq.Poller()
    poller.register(control, zmq.POLLIN)
    poller.register(wake_server, zmq.POLLIN)
    awaited = np.arange(n)
    start, start_cpu = time.perf_counter(), time.process_time()
    for step in range(steps + 1):
        finished = step == steps
        if not finished:
            np.concatenate([result.observations[agent] for agent in agents], out=shared_obs)
            shared["reward"][:] = result.rewards[agents[0]].base[:, 0]
            shared_flags[:] = result.terminated[agents[0]].base[:, :, 0]
            shared["start"][:1] = result.episode_start
        shared["step"][0] = -1 if finished else step
        for fd in wake_client:
            os.eventfd_write(fd, 1)
        if finished:
            break
        while not (shared["stamp"][awaited] == step).all():  # the barrier's due check, on arrays
            poller.poll(1000)  # the step deadline would bound this wait
            try:
                os.eventfd_read(wake_server)
            except BlockingIOError:
                pass
        actions = shared["action"].copy()
        if ((actions < 0) | (actions >= high)).any():
            raise ValueError(f"an action outside Discrete({high}): {actions}")
        result = envs.step({agent: actions[i : i + 1] for i, agent in enumerate(agents)})
    wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    client_cpu = _reap(pids, read_fd)
    for fd in [*wake_client, wake_server]:
        os.close(fd)
    control.close(0)
    context.term()
    del shared, shared_obs, shared_flags
    memory.close()
    return {"steps_per_s": steps / wall, "server_cpu_us": cpu / steps * 1e6, "client_cpu_us": client_cpu}


def _zmq_variant(steps: int, parley_codec: bool) -> dict:
    import zmq  # a probe of zmq itself; Parley's own code reaches zmq only through protocols/net/transport.py

    with tempfile.TemporaryDirectory(prefix="parley-floor-") as folder:
        endpoint = f"ipc://{folder}/env.sock"

        def client(index: int, report_fd: int) -> None:
            context = zmq.Context()
            dealer = context.socket(zmq.DEALER)
            dealer.setsockopt(zmq.IDENTITY, bytes([index]))
            dealer.setsockopt(zmq.LINGER, 0)
            dealer.connect(endpoint)
            dealer.send(b"hello")
            if parley_codec:
                decode, encode = _parley_codec(index)
                receive, send = dealer.recv_multipart, dealer.send_multipart
            else:
                decode, encode = _struct_codec(index)
                receive, send = dealer.recv, dealer.send
            _client_loop(receive, send, index, decode, encode, report_fd)
            dealer.close()
            context.term()

        pids, read_fd = _fork_clients(client)  # forked before this process makes a context
        context = zmq.Context()
        router = context.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        router.bind(endpoint)
        for _ in range(AGENTS):
            router.recv_multipart()
        if parley_codec:
            from protocols.codec import messages as m
            from protocols.codec import wire

            seq = iter(range(1, 1 << 62))
            flags = np.zeros(1, bool)

            def encode_observation(step, finished, agent, obs):
                observation = m.EnvObservation(
                    step=step, observations={agent: obs[None]}, rewards={agent: np.zeros(1, np.float32)},
                    terminated={agent: flags}, truncated={agent: flags}, active={agent: ~flags},
                    final_observations={}, episode_start=flags, run_finished=finished)
                return wire.encode(observation, sender="env", run_id="floor", seq=next(seq))

            def decode_action(frames):
                action = wire.decode(frames[1:]).message
                (row,) = action.actions.values()
                return frames[0][0], int(row[0])

            send_to = lambda index, frames: router.send_multipart([bytes([index]), *frames])  # noqa: E731
        else:
            def encode_observation(step, finished, agent, obs):
                return _STEP.pack(step, finished) + obs.tobytes()

            def decode_action(frames):
                return frames[0][0], _STEP.unpack_from(frames[1])[1]

            send_to = lambda index, data: router.send_multipart([bytes([index]), data])  # noqa: E731
        wall, cpu = _serve(steps, send_to, router.recv_multipart, encode_observation, decode_action)
        client_cpu = _reap(pids, read_fd)
        router.close()
        context.term()
    return {"steps_per_s": steps / wall, "server_cpu_us": cpu / steps * 1e6, "client_cpu_us": client_cpu}


def parley(steps: int) -> dict:
    from throughput import parley_steps_per_s  # bench/ is on the path

    rate, defaulted, cpu_per_step = parley_steps_per_s(AGENTS, steps, 1, "ipc")[:3]
    if defaulted:
        raise RuntimeError(f"the Parley run defaulted {defaulted} observations: not a valid row")
    # throughput.py measures the CPU of all processes together (per env step), not split.
    return {"steps_per_s": rate, "server_cpu_us": None, "client_cpu_us": None, "all_cpu_us": cpu_per_step}


def _all_cpu(run: dict) -> float:
    """CPU of every process per env step: the server and its 4 clients."""
    return run["all_cpu_us"] if "all_cpu_us" in run else run["server_cpu_us"] + AGENTS * run["client_cpu_us"]


def _median_or_none(values) -> float | None:
    values = list(values)
    return None if None in values else round(median(values), 1)


VARIANTS = {
    "inprocess": lambda steps: inprocess(steps),
    "inprocess_8_copies": lambda steps: inprocess(steps, copies=8),
    "floor_raw": floor_raw,
    "floor_shm": floor_shm,
    "array_sketch": array_sketch,
    "floor_zmq": lambda steps: _zmq_variant(steps, parley_codec=False),
    "codec_zmq": lambda steps: _zmq_variant(steps, parley_codec=True),
    "parley": parley,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=8000, help="env steps per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds; the table gives medians")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.steps < 8 or args.repeats < 1:
        parser.error(f"expected --steps >= 8 and --repeats >= 1, got {args.steps} / {args.repeats}")
    runs: dict[str, list[dict]] = {name: [] for name in args.variants}
    load_before = os.getloadavg()[0]
    for _ in range(args.repeats):
        for name in args.variants:
            runs[name].append(VARIANTS[name](args.steps))
    load_after = os.getloadavg()[0]
    baseline = median(run["steps_per_s"] for run in runs.get("inprocess") or [inprocess(args.steps)])
    rows = []
    for name, results in runs.items():
        rates = [run["steps_per_s"] for run in results]
        rows.append({
            "variant": name,
            "steps_per_s": round(median(rates), 1),
            "spread": [round(min(rates), 1), round(max(rates), 1)],
            "ratio": round(median(rates) / baseline, 3),
            "server_cpu_us": _median_or_none(run["server_cpu_us"] for run in results),
            "client_cpu_us": _median_or_none(run["client_cpu_us"] for run in results),
            "all_cpu_us": round(median(_all_cpu(run) for run in results), 1),
        })
    if args.json:
        print(json.dumps({"rows": rows, "steps": args.steps, "repeats": args.repeats,
                          "load_avg_1m": [round(load_before, 2), round(load_after, 2)]}))
        return
    print(f"K=1 lockstep floors, mpe2 simple_spread_v3 N={AGENTS}, {args.steps} steps, median of {args.repeats}; "
          f"load average {load_before:.2f} -> {load_after:.2f}")
    print(f"{'variant':<20} {'steps/s':>8} {'(min-max)':>13} {'ratio':>6} {'server CPU us':>14} {'client CPU us':>14} {'all CPU us':>11}")
    for row in rows:
        low, high = row["spread"]
        server, client = (("-" if row[key] is None else f"{row[key]:.0f}") for key in ("server_cpu_us", "client_cpu_us"))
        print(f"{row['variant']:<20} {row['steps_per_s']:>8.0f} {f'({low:.0f}-{high:.0f})':>13} {row['ratio']:>6.2f} "
              f"{server:>14} {client:>14} {row['all_cpu_us']:>11.0f}")


if __name__ == "__main__":
    main()
