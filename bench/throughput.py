"""Lockstep throughput: PettingZoo in-process against Parley (env server + 4 agent processes).

    python bench/throughput.py [--steps N] [--json]

Measures, in one run so the ratios compare like with like on a noisy machine:
- in-process: mpe2 simple_spread_v3 (N=4) stepped directly with random actions;
- Parley K=1 and K=8: a standalone env server and 4 client processes that answer every
  observation with random actions over ZeroMQ (no learning).
Steps are environment steps summed over copies; each ratio is Parley's steps/s divided by the
in-process steps/s of one environment.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
ENV_KWARGS = {"N": 4, "max_cycles": 25, "continuous_actions": False}


def inprocess_steps_per_s(steps: int, seed: int = 0) -> float:
    from mpe2 import simple_spread_v3

    env = simple_spread_v3.parallel_env(**ENV_KWARGS)
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    start = time.perf_counter()
    for _ in range(steps):
        if not env.agents:
            env.reset()
        env.step({agent: int(rng.integers(5)) for agent in env.agents})
    return steps / (time.perf_counter() - start)


def parley_steps_per_s(lockstep_steps: int, copies: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "env_server", "--env", "mpe2.simple_spread_v3", "--kwargs", json.dumps(ENV_KWARGS),
         "--copies", str(copies), "--max-steps", str(lockstep_steps), "--bind", "tcp://127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=REPO,
    )
    clients = []
    try:
        line = server.stdout.readline().decode().strip()
        if not line.startswith("READY "):
            raise RuntimeError(f"env server did not start: {line!r}")
        endpoint = line.split(" ", 1)[1]
        start = time.perf_counter()
        clients = [
            subprocess.Popen([sys.executable, str(REPO / "bench" / "random_client.py"), endpoint, str(i), str(i)], env=env, cwd=REPO)
            for i in range(4)
        ]
        for client in clients:
            client.wait(timeout=600)
        elapsed = time.perf_counter() - start
    finally:
        for client in clients:
            if client.poll() is None:
                client.kill()
        server.terminate()
        server.wait(timeout=30)
    # Client start-up (imports, connect) is inside `elapsed`; it is small next to the run and
    # makes the figure a lower bound.
    return lockstep_steps * copies / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20_000, help="environment steps per measurement")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()

    inprocess = inprocess_steps_per_s(args.steps)
    k1 = parley_steps_per_s(args.steps, 1)
    k8 = parley_steps_per_s(args.steps // 8, 8)
    result = {
        "inprocess_steps_per_s": round(inprocess, 1),
        "parley_k1_steps_per_s": round(k1, 1),
        "parley_k8_steps_per_s": round(k8, 1),
        "ratio_k1": round(k1 / inprocess, 3),
        "ratio_k8": round(k8 / inprocess, 3),
        "env_steps": args.steps,
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"mpe2 simple_spread_v3 N=4, random actions, {args.steps} env steps per row")
    print(f"{'setting':<34}{'env steps/s':>12}{'ratio':>8}")
    print(f"{'in-process PettingZoo':<34}{inprocess:>12.0f}{1.0:>8.2f}")
    print(f"{'Parley K=1 (server + 4 agents)':<34}{k1:>12.0f}{k1 / inprocess:>8.2f}")
    print(f"{'Parley K=8 (server + 4 agents)':<34}{k8:>12.0f}{k8 / inprocess:>8.2f}")


if __name__ == "__main__":
    main()
