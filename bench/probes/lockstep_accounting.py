"""Where the env server's CPU goes per lockstep step, measured inside a real run.

    python bench/probes/lockstep_accounting.py [--steps 8000] [--copies 1] [--bodies packed|messages]
                                               [--lockstep auto|shm|zmq] [--json]

Starts the real standalone env server (mpe2 simple_spread_v3 N=4) and 4 bench/random_client.py
processes, as bench/throughput.py does, but the server runs with its main blocks wrapped in
timers of the thread's CPU time (`time.thread_time_ns`): the raw env step, the vectorized
batching around it, encode, decode, the barrier, the socket calls and the loop itself. Each
block's own time ("self", without the wrapped blocks it calls) is printed per lockstep step,
next to the same env stepped warm in a loop of its own. Thread CPU time barely moves with
other load, unlike wall time; the wrappers add ~1 us per call (about 15 calls per step).

Why it exists: in a K=1 lockstep the server's main thread is the critical path, and this shows
that the env step itself costs far more there than in a loop of its own (cold caches after every
message), besides the per-message work. bench/PROFILE.md, round 5.
"""

from __future__ import annotations

import argparse
import atexit
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
AGENTS = 4
ENV_KWARGS = {"N": AGENTS, "max_cycles": 25, "continuous_actions": False}


def instrumented_server(argv: list[str], report_path: str) -> int:
    """Run env_server's standalone main with its blocks timed; write the totals to `report_path`."""
    sys.path.insert(0, str(REPO))
    from pettingzoo.utils import conversions

    from env_server import __main__ as server_main
    from env_server import barrier, vector
    from env_server import server as env_server
    from protocols.codec import packed, wire
    from protocols.net import shm_lockstep, transport

    totals: dict[str, list[int]] = {}  # label -> [self ns, calls]
    open_calls: list[int] = []  # per open wrapped call: the ns spent in wrapped calls it made

    def timed(owner, name: str, label: str) -> None:
        function = getattr(owner, name)

        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            started = time.thread_time_ns()
            open_calls.append(0)
            try:
                return function(*args, **kwargs)
            finally:
                spent = time.thread_time_ns() - started
                inner = open_calls.pop()
                entry = totals.setdefault(label, [0, 0])
                entry[0] += spent - inner
                entry[1] += 1
                if open_calls:
                    open_calls[-1] += spent

        setattr(owner, name, wrapper)

    for owner, name, label in (
        (conversions.aec_to_parallel_wrapper, "step", "env step (PettingZoo)"),
        (vector.VectorizedParallelEnv, "step", "vectorized step, around the env"),
        (vector.VectorizedParallelEnv, "_batch", "batching the copies' results"),
        (wire, "encode", "encode (observations)"),
        (wire, "encode_packed", "encode (observations), packed head"),
        (packed.PackedLayout, "pack_step_result", "packed body: pack"),
        (packed.PackedLayout, "unpack_action_fields", "packed body: unpack"),
        (wire, "decode", "decode (actions)"),
        (shm_lockstep.ShmLink, "write", "shared memory: write a body and wake"),
        (shm_lockstep.ShmLink, "take", "shared memory: read a body"),
        (shm_lockstep.ShmLink, "drain_wake", "shared memory: empty the wake-up pipe"),
        (transport.Channel, "_take_shm", "shared memory: slot to message or handler"),
        (transport.Channel, "write_packed", "shared memory: observation into a slot"),
        (transport.Channel, "_send_frames", "zmq send"),
        (transport, "_recv_bytes", "zmq receive"),
        (transport, "wait_readable", "zmq poll (CPU, not the wait)"),
        (barrier.LockstepBarrier, "on_actions", "barrier: on_action"),
        (barrier.LockstepBarrier, "broadcast", "barrier: broadcast (observation_for)"),
        (barrier.LockstepBarrier, "take_actions", "barrier: take_actions"),
        (env_server.EnvServer, "_step", "server: _step"),
        (env_server.EnvServer, "on_action", "server: an action (zmq or shared memory)"),
        (env_server.EnvServer, "poll_once", "server: poll_once (the loop)"),
    ):
        timed(owner, name, label)
    started = time.thread_time_ns()

    @atexit.register
    def write_report() -> None:
        Path(report_path).write_text(json.dumps({"totals": totals, "main_thread_ns": time.thread_time_ns() - started}))

    sys.argv = ["env_server", *argv]
    return server_main.main()


def warm_env_step_us(steps: int) -> float:
    """CPU per step of the same env stepped in a loop of its own (random actions)."""
    import numpy as np
    from mpe2 import simple_spread_v3

    env = simple_spread_v3.parallel_env(**ENV_KWARGS)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    start = time.process_time()
    for _ in range(steps):
        if not env.agents:
            env.reset()
        env.step({agent: int(rng.integers(5)) for agent in env.agents})
    return (time.process_time() - start) / steps * 1e6


def measure(steps: int, copies: int, bodies: str = "packed", lockstep: str = "auto") -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory(prefix="parley-accounting-") as folder:
        report = f"{folder}/report.json"
        server = subprocess.Popen(
            [sys.executable, __file__, "--serve", report, "--env", "mpe2.simple_spread_v3", "--kwargs", json.dumps(ENV_KWARGS),
             "--copies", str(copies), "--max-steps", str(steps), "--bind", f"ipc://{folder}/env.sock", "--transport", lockstep],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=REPO)
        clients = []
        try:
            line = server.stdout.readline().decode().strip()
            if not line.startswith("READY "):
                raise RuntimeError(f"env server did not start: {line!r}")
            endpoint = line.split(" ", 1)[1]
            clients = [subprocess.Popen([sys.executable, str(REPO / "bench" / "random_client.py"), endpoint, str(i), str(i), bodies],
                                        stdout=subprocess.PIPE, env=env, cwd=REPO) for i in range(AGENTS)]
            for client in clients:
                out, _ = client.communicate(timeout=900)
                if client.returncode != 0:
                    raise RuntimeError(f"a bench client failed (exit {client.returncode}): {out.decode()[-300:]!r}")
        finally:
            for client in clients:
                if client.poll() is None:
                    client.kill()
                    client.wait()
            server.terminate()  # the standalone server's SIGTERM handler ends its loop; atexit writes the report
            server.wait(timeout=30)
        data = json.loads(Path(report).read_text())
    blocks = {label: {"self_us": ns / steps / 1e3, "calls_per_step": calls / steps} for label, (ns, calls) in data["totals"].items()}
    return {"steps": steps, "copies": copies, "bodies": bodies, "lockstep": lockstep, "main_thread_us": data["main_thread_ns"] / steps / 1e3, "blocks": blocks,
            "warm_env_step_us": warm_env_step_us(min(steps * copies, 8000))}


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--serve":
        raise SystemExit(instrumented_server(sys.argv[3:], sys.argv[2]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=8000, help="lockstep steps")
    parser.add_argument("--copies", type=int, default=1, help="env copies K in the server")
    parser.add_argument("--bodies", choices=["packed", "messages"], default="packed",
                        help="the clients' lockstep bodies (protocols/codec/packed.py) or msgpack messages")
    parser.add_argument("--lockstep", choices=["auto", "shm", "zmq"], default="auto",
                        help="the env server's --transport: bodies through shared memory or zmq (protocols/net/shm_lockstep.py)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = measure(args.steps, args.copies, args.bodies, args.lockstep)
    if args.json:
        print(json.dumps(result))
        return
    print(f"env server main thread, K={args.copies}, {args.bodies} bodies, lockstep {args.lockstep}, {args.steps} lockstep steps: {result['main_thread_us']:.0f} us of CPU "
          f"per lockstep step (load average {os.getloadavg()[0]:.2f})")
    print(f"{'block':<40} {'self us/step':>12} {'calls/step':>10}")
    for label, block in sorted(result["blocks"].items(), key=lambda item: -item[1]["self_us"]):
        print(f"{label:<40} {block['self_us']:>12.1f} {block['calls_per_step']:>10.2f}")
    print(f"{'the same env step, warm in its own loop':<40} {result['warm_env_step_us'] * args.copies:>12.1f} {args.copies:>10.2f}")


if __name__ == "__main__":
    main()
