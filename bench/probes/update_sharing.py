"""What a SAC gradient step costs when five agents update at once on this machine's cores, against one alone.

    python bench/probes/update_sharing.py [--agents 5] [--env-steps 100] [--rounds 3] [--json]

`bench/sac_update_cost.py` times OG-MARL's update path in one process on an otherwise idle core
and projects the run's update path as 5 agents x that / 2 cores. In a run the five agent
processes update at the same time on the two cores, and the kernel switches between them every
few milliseconds, so each one's caches are refilled after every switch. This probe measures
what that costs: it starts `--agents` processes at once, each building the same OG-MARL-shaped
SAC agent as `sac_update_cost.py` (batch 256, 10 gradient steps per environment step) and
driving `--env-steps` environment steps, and compares the CPU time per gradient step each
process spent (its own `time.process_time`) with that of one process run alone. A third set-up
runs the same processes gated: a named pipe holds one token per core, and each process takes a
token for each environment step's 10 gradient steps and puts it back after, so no more update at
once than there are cores. The set-ups take turns `--rounds` times, so a change of load hits all
three. Run it on an idle machine: another job's processes would share the cores too.

Printed per set-up: the median over rounds of CPU ms per gradient step (each round's value the
median over its processes) and of the wall time of the round (start-up included), and the
ratios shared / alone and gated / alone.
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

REPO = Path(__file__).resolve().parents[2]
WORKER_FLAG = "--worker"


def worker(env_steps: int, seed: int, gate_path: str) -> None:
    """One agent's updates; prints the CPU seconds they took and the gradient steps taken.

    `gate_path` (or "-"): a named pipe holding one byte per core; the worker takes a byte before
    each environment step's updates and puts it back after, so at most that many update at once
    and each runs its 10 gradient steps without another worker's updates between them."""
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "bench"))
    import torch

    torch.set_num_threads(1)
    from agent_node.algos.sac import SACAgent
    from sac_update_cost import drive, make_agent

    agent, data = make_agent(SACAgent, seed)
    drive(agent, data, 5)  # warm-up: first calls allocate
    gate = os.open(gate_path, os.O_RDWR) if gate_path != "-" else None
    before_steps, started = agent.gradient_steps, time.process_time()
    if gate is None:
        drive(agent, data, env_steps)
    else:
        for _ in range(env_steps):
            os.read(gate, 1)  # blocks until a core's token is free
            drive(agent, data, 1)
            os.write(gate, b"x")
    print(json.dumps({"cpu_s": time.process_time() - started, "gradient_steps": agent.gradient_steps - before_steps}))


def run_set(processes: int, env_steps: int, gate_tokens: int = 0) -> dict:
    """`processes` workers started together; CPU ms per gradient step (median over them) and wall s.
    `gate_tokens` > 0: at most that many update at once (see `worker`)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    gate_path = "-"
    if gate_tokens:
        gate_dir = tempfile.mkdtemp(prefix="parley-update-gate-")
        gate_path = os.path.join(gate_dir, "gate")
        os.mkfifo(gate_path, 0o600)
        holder = os.open(gate_path, os.O_RDWR)  # keeps the pipe (and its tokens) alive
        os.write(holder, b"x" * gate_tokens)
    started = time.monotonic()
    children = [
        subprocess.Popen([sys.executable, __file__, WORKER_FLAG, str(env_steps), str(seed), gate_path],
                         stdout=subprocess.PIPE, env=env, cwd=REPO)
        for seed in range(processes)
    ]
    per_step = []
    for child in children:
        out, _ = child.communicate(timeout=3600)
        if child.returncode != 0:
            raise RuntimeError(f"a worker failed (exit {child.returncode})")
        report = json.loads(out.decode().strip().splitlines()[-1])
        per_step.append(1000 * report["cpu_s"] / report["gradient_steps"])
    wall_s = time.monotonic() - started
    if gate_tokens:
        os.close(holder)
        os.unlink(gate_path)
        os.rmdir(gate_dir)
    return {"cpu_ms_per_gradient_step": float(np.median(per_step)), "per_process": per_step, "wall_s": wall_s}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agents", type=int, default=5, help="processes updating at once in the shared set-up")
    parser.add_argument("--env-steps", type=int, default=100, help="environment steps per process (10 gradient steps each)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    cores = os.cpu_count() or 1
    rounds = {"alone": [], "shared": [], "gated": []}
    for _ in range(args.rounds):
        rounds["alone"].append(run_set(1, args.env_steps))
        rounds["shared"].append(run_set(args.agents, args.env_steps))
        rounds["gated"].append(run_set(args.agents, args.env_steps, gate_tokens=cores))
    summary = {
        setup: {"cpu_ms_per_gradient_step": float(np.median([r["cpu_ms_per_gradient_step"] for r in runs])),
                "wall_s": float(np.median([r["wall_s"] for r in runs])), "rounds": runs}
        for setup, runs in rounds.items()
    }
    summary.update(agents=args.agents, env_steps=args.env_steps, cores=cores,
                   load_before=load_before, load_after=os.getloadavg()[0],
                   ratio=summary["shared"]["cpu_ms_per_gradient_step"] / summary["alone"]["cpu_ms_per_gradient_step"],
                   gated_ratio=summary["gated"]["cpu_ms_per_gradient_step"] / summary["alone"]["cpu_ms_per_gradient_step"])
    if args.json:
        print(json.dumps(summary, indent=1))
        return 0
    print(f"SAC gradient steps (batch 256), {args.env_steps} env steps x 10 per process, {args.rounds} rounds, "
          f"{cores} cores, load {load_before:.1f} -> {summary['load_after']:.1f}")
    print(f"{'set-up':>28}  {'CPU ms / gradient step':>22}  {'wall s':>7}")
    for setup, label in (("alone", "1 process"), ("shared", f"{args.agents} processes at once"),
                         ("gated", f"{args.agents}, at most {cores} updating")):
        print(f"{label:>28}  {summary[setup]['cpu_ms_per_gradient_step']:22.2f}  {summary[setup]['wall_s']:7.1f}")
    print(f"CPU per gradient step, shared / alone: {summary['ratio']:.2f}; gated / alone: {summary['gated_ratio']:.2f}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == WORKER_FLAG:
        worker(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    else:
        sys.exit(main())
