"""What the env server would pay per lockstep step to take its clients' actions from one shared
action table (not built): each client writes its agent's action and a stamp (the step) into its
row and a byte into one pipe; the server empties the pipe once, compares the stamps on an array
and checks each arrived agent's row into the real `LockstepBarrier`'s pending set. One process,
no wake-ups, thread CPU, K=1, Discrete(5) actions.

    python bench/probes/action_table_cost.py [--agents 4] [--rounds 20000]

Compare with bench/probes/lockstep_one_process.py --split ("the actions and the loop reading
them": today's one slot per client). Measured 2026-11-27 ~02:28 UTC on the 2-core machine: 7.5 µs
a step for four agents, against ~46 (bench/PROFILE.md, round 11).
"""

from __future__ import annotations

import argparse
import mmap
import os
import sys
import time
from pathlib import Path

import numpy as np
from gymnasium import spaces

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from env_server.barrier import DefaultActions, LockstepBarrier  # noqa: E402
from env_server.vector import check_batched  # noqa: E402
from protocols.codec import messages as m  # noqa: E402


def measure(count: int, rounds: int) -> float:
    agents = [f"agent_{i}" for i in range(count)]
    action_spaces = {agent: spaces.Discrete(5) for agent in agents}
    barrier = LockstepBarrier(agents, action_spaces, DefaultActions(action_spaces, "noop", 0), step_deadline_s=5.0)
    for index, agent in enumerate(agents):
        barrier.join(f"c{index}".encode(), m.EnvJoin(client_id=f"c{index}", agents=[agent]))
    memory = mmap.mmap(-1, 16 * count + 64)
    stamps = np.frombuffer(memory, np.int64, count, 0)
    values = np.frombuffer(memory, np.int64, count, 8 * count)
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    spent = 0
    for step in range(1, rounds + 1):
        barrier.open_step, barrier.pending, barrier.step_due = step, {}, False
        for row in range(count):  # the clients' side, not timed
            values[row] = step % 5
            stamps[row] = step
            os.write(write_fd, b"\x01")
        started = time.thread_time_ns()
        os.read(read_fd, 4096)
        for row in np.flatnonzero(stamps == step).tolist():
            agent = agents[row]
            if agent not in barrier.pending:
                action = values[row : row + 1].copy()
                check_batched(action_spaces[agent], action, 1, f"actions[{agent!r}]")
                barrier.pending[agent] = action
        barrier.step_due = len(barrier.pending) == count
        spent += time.thread_time_ns() - started
    os.close(read_fd), os.close(write_fd)
    return spent / rounds / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=20_000)
    args = parser.parse_args()
    print(f"actions of {args.agents} agents from one table: {measure(args.agents, args.rounds):.2f} us per step")


if __name__ == "__main__":
    main()
