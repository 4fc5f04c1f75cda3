"""What one wake-up costs the process that sends it: a byte written into a pipe, with nobody
waiting on it and with another process blocked in poll() on it (which the write wakes), in the
writer's thread CPU time.

    python bench/probes/wake_cost.py [--rounds 20000]

Why it exists: on the shared-memory lockstep (protocols/net/shm_lockstep.py) the env server writes one
such byte per client per step and each client one per action; what a wake-up costs bounds what
any design with a wake-up per client can save (bench/PROFILE.md, round 11). Measured 2026-11-27
~01:55 and 02:15 UTC on the 2-core development machine (a Firecracker VM): 0.3–0.7 µs with
nobody waiting, 7.7–7.8 µs when the write wakes a process blocked on the other core.
"""

from __future__ import annotations

import argparse
import os
import select
import time


def nobody_waiting(rounds: int) -> float:
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    spent = 0
    for index in range(rounds):
        started = time.thread_time_ns()
        os.write(write_fd, b"\x01")
        spent += time.thread_time_ns() - started
        if index % 1000 == 999:
            os.read(read_fd, 65536)
    os.close(read_fd), os.close(write_fd)
    return spent / rounds / 1000


def waking_a_blocked_process(rounds: int) -> float:
    wake_read, wake_write = os.pipe()
    back_read, back_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the woken side: blocks in poll, as a lockstep client does
        poller = select.poll()
        poller.register(wake_read, select.POLLIN)
        for _ in range(rounds):
            poller.poll()
            os.read(wake_read, 4096)
            os.write(back_write, b"\x01")
        os._exit(0)
    spent = 0
    for _ in range(rounds):
        started = time.thread_time_ns()
        os.write(wake_write, b"\x01")
        spent += time.thread_time_ns() - started
        os.read(back_read, 1)  # wait until it has gone back to sleep before the next round
    os.waitpid(pid, 0)
    for fd in (wake_read, wake_write, back_read, back_write):
        os.close(fd)
    return spent / rounds / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20_000)
    rounds = parser.parse_args().rounds
    print(f"a byte into a pipe, nobody waiting:              {nobody_waiting(rounds):5.2f} us of the writer's CPU")
    print(f"a byte into a pipe, waking a process in poll():  {waking_a_blocked_process(rounds):5.2f} us of the writer's CPU")


if __name__ == "__main__":
    main()
