"""Lockstep throughput: PettingZoo in-process against Parley (env server + N agent processes).

    python bench/throughput.py [--agents 4 8 16] [--workers 1 2] [--steps N] [--transport ipc|tcp] [--json]

For each agent count N, measured in one run so the ratios compare like with like on a noisy
machine:
- in-process: mpe2 simple_spread_v3 with N agents stepped directly with random actions;
- Parley K=1 and K=8: a standalone env server and N client processes (bench/random_client.py)
  that answer every observation with random actions over ZeroMQ (no learning); with
  `--workers 1 2` the K=8 row is also measured with the copies split over 2 processes
  (env_server/workers.py), which only pays when cores are free.
Steps are environment steps summed over copies; each ratio is Parley's steps/s divided by the
in-process steps/s of one environment with the same N. Parley's time runs from the first
observation to the last one (the slowest client's span), so process start-up is left out; a row
is only valid when no action was defaulted (`defaulted` = 0: no step deadline passed).

The transport is ipc:// by default, as in an orchestrated run on one host; `--transport tcp`
measures loopback TCP (what several hosts use).

Profile of the hot path and the measurements behind the README's table: bench/PROFILE.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CLIENT_TIMEOUT_S = 900


def env_kwargs(agents: int) -> dict:
    return {"N": agents, "max_cycles": 25, "continuous_actions": False}


def inprocess_steps_per_s(agents: int, steps: int, seed: int = 0) -> float:
    from mpe2 import simple_spread_v3

    env = simple_spread_v3.parallel_env(**env_kwargs(agents))
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    start = time.perf_counter()
    for _ in range(steps):
        if not env.agents:
            env.reset()
        env.step({agent: int(rng.integers(5)) for agent in env.agents})
    return steps / (time.perf_counter() - start)


def parley_steps_per_s(agents: int, lockstep_steps: int, copies: int, transport: str, workers: int = 1) -> tuple[float, int]:
    """(env steps per second, number of observations that reported a defaulted action)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory(prefix="parley-bench-") as socket_dir:
        bind = f"ipc://{socket_dir}/env.sock" if transport == "ipc" else "tcp://127.0.0.1:0"
        server = subprocess.Popen(
            [sys.executable, "-m", "env_server", "--env", "mpe2.simple_spread_v3", "--kwargs", json.dumps(env_kwargs(agents)),
             "--copies", str(copies), "--max-steps", str(lockstep_steps), "--bind", bind,
             *(["--workers", str(workers)] if workers != 1 else [])],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=REPO,
        )
        clients: list[subprocess.Popen] = []
        try:
            line = server.stdout.readline().decode().strip()
            if not line.startswith("READY "):
                raise RuntimeError(f"env server did not start: {line!r}")
            endpoint = line.split(" ", 1)[1]
            clients = [
                subprocess.Popen(
                    [sys.executable, str(REPO / "bench" / "random_client.py"), endpoint, str(i), str(i)],
                    stdout=subprocess.PIPE, env=env, cwd=REPO,
                )
                for i in range(agents)
            ]
            spans, defaulted = [], 0
            for client in clients:
                out, _ = client.communicate(timeout=CLIENT_TIMEOUT_S)
                timing = [row for row in out.decode().splitlines() if row.startswith("TIMING ")]
                if client.returncode != 0 or not timing:
                    raise RuntimeError(f"a bench client failed (exit {client.returncode}): {out.decode()[-500:]!r}")
                _, answered, missing, seconds = timing[-1].split()
                spans.append(float(seconds))
                defaulted += int(missing)
        finally:
            for client in clients:
                if client.poll() is None:
                    client.kill()
                    client.wait()
            server.terminate()
            server.wait(timeout=30)
    return lockstep_steps * copies / max(spans), defaulted


def measure(agents: int, steps: int, transport: str, workers: list[int]) -> dict:
    # The in-process baseline is taken before, between and after the Parley runs and its median
    # is the denominator: on a shared machine the load drifts during a row.
    inprocess = [inprocess_steps_per_s(agents, steps)]
    k1, defaulted = parley_steps_per_s(agents, steps, 1, transport)
    inprocess.append(inprocess_steps_per_s(agents, steps))
    k8 = {}
    for w in workers:
        k8[w], missing = parley_steps_per_s(agents, steps // 8, 8, transport, workers=w)
        defaulted += missing
    inprocess.append(inprocess_steps_per_s(agents, steps))
    baseline = float(np.median(inprocess))
    row = {
        "agents": agents,
        "inprocess_steps_per_s": round(baseline, 1),
        "inprocess_spread": [round(min(inprocess), 1), round(max(inprocess), 1)],
        "parley_k1_steps_per_s": round(k1, 1),
        "ratio_k1": round(k1 / baseline, 3),
    }
    for w in workers:
        suffix = "" if w == 1 else f"_w{w}"
        row[f"parley_k8{suffix}_steps_per_s"] = round(k8[w], 1)
        row[f"ratio_k8{suffix}"] = round(k8[w] / baseline, 3)
    row["defaulted_observations"] = defaulted
    row["env_steps"] = steps
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agents", type=int, nargs="+", default=[4], help="agent counts N to measure (e.g. 4 8 16)")
    parser.add_argument("--steps", type=int, default=20_000, help="environment steps per measurement")
    parser.add_argument("--transport", choices=["ipc", "tcp"], default="ipc")
    parser.add_argument("--workers", type=int, nargs="+", default=[1],
                        help="K=8 rows with the copies split over W processes (e.g. 1 2)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()
    if any(n < 1 for n in args.agents):
        parser.error(f"--agents: expected positive counts, got {args.agents}")
    if any(not 1 <= w <= 8 for w in args.workers):
        parser.error(f"--workers: expected counts between 1 and K=8, got {args.workers}")

    started = time.time()
    rows = [measure(n, args.steps, args.transport, args.workers) for n in args.agents]
    load = os.getloadavg()
    if args.json:
        print(json.dumps({"transport": args.transport, "rows": rows, "load_avg_1m": round(load[0], 2),
                          "seconds": round(time.time() - started, 1)}))
        return
    print(f"mpe2 simple_spread_v3, random actions, {args.steps} env steps per row, {args.transport}; "
          f"load average {load[0]:.2f} after the run")
    k8_columns = [("" if w == 1 else f"_w{w}", f"K=8 W={w}") for w in args.workers]
    print(f"{'N':>3}  {'in-process':>11}  {'Parley K=1':>11}  {'ratio':>6}"
          + "".join(f"  {title:>11}  {'ratio':>6}" for _, title in k8_columns) + f"  {'defaulted':>9}")
    for row in rows:
        print(f"{row['agents']:>3}  {row['inprocess_steps_per_s']:>11.0f}  {row['parley_k1_steps_per_s']:>11.0f}  "
              f"{row['ratio_k1']:>6.2f}"
              + "".join(f"  {row[f'parley_k8{suffix}_steps_per_s']:>11.0f}  {row[f'ratio_k8{suffix}']:>6.2f}" for suffix, _ in k8_columns)
              + f"  {row['defaulted_observations']:>9}")


if __name__ == "__main__":
    main()
