"""The env server's Python per lockstep step without wake-ups: the real `EnvServer` and four
shared-memory clients (`EnvClient`, their channels) driven in one process, so no process is
woken and nothing waits; what the server's thread spends per K=1 step, the vectorized env step
alone beside it, and (with --split) the actions and the broadcast apart.

    python bench/probes/lockstep_one_process.py [--steps 3000] [--split]

Why it exists: in a real run the server's thread also pays the wake-ups (bench/probes/wake_cost.py)
and the blocking, which hide how much of it is Python; a piece of the hot path can be measured
here before it is built into the runtime (bench/PROFILE.md, round 11). Measured 2026-11-27 ~01:40
UTC on the 2-core machine, mpe2 simple_spread N=4: 382–422 µs per step, the vector env's step
307–344 of it; with --split the four actions and the loop that reads them ~46, the broadcast ~23.
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from agent_node.env_client import EnvClient, use_lockstep_transport  # noqa: E402
from env_server import server as env_server  # noqa: E402
from env_server import vector  # noqa: E402
from env_server.registry import make_env  # noqa: E402
from protocols.codec import messages as m  # noqa: E402
from protocols.net.transport import Hub  # noqa: E402

AGENTS = 4
ENV_KWARGS = {"N": AGENTS, "max_cycles": 25, "continuous_actions": False}


class OneProcessLockstep:
    def __init__(self, folder: str) -> None:
        envs = vector.VectorizedParallelEnv(lambda: make_env("mpe2.simple_spread_v3", ENV_KWARGS), 1, autoreset=True)
        self.envs = envs
        self.server = env_server.EnvServer(
            envs, hub=Hub(sender="env", run_id="one-process"), env_name="mpe2.simple_spread_v3",
            bind_address=f"ipc://{folder}/env.sock",
            rules=env_server.LockstepRules(max_steps=None, step_deadline_s=5.0, join_deadline_s=30.0, transport="shm"),
            seed=0, eval_seed=1, default_action_seed=2)
        self.clients = []  # (channel, agent)
        for index in range(AGENTS):
            channel = Hub(sender=f"c{index}", run_id="one-process").connect_dealer(
                self.server.endpoint, name="env", identity=f"c{index}")
            client = EnvClient(f"c{index}", agent_indices=[index], packed=True, shm=True)
            channel.send(client.join())
            welcome = None
            while welcome is None:
                self.server.poll_once(0.01)
                welcome = channel.wait_for(m.EnvWelcome, m.ErrorReply, timeout_s=0.01)
            client.on_welcome(welcome)
            assert use_lockstep_transport(channel, client) == "shm", "this probe measures the shared-memory path"
            self.clients.append((channel, welcome.agents[0]))
        for channel, _ in self.clients:
            channel.send(m.EnvReset())
        self.rng = np.random.default_rng(0)
        self.observations = [self.observe(channel) for channel, _ in self.clients]

    def observe(self, channel) -> m.EnvObservation:
        """The client's next observation; the server polls until it has sent one."""
        while True:
            for fd in list(channel._shm_of_pipe):  # nothing blocks here: look at every pipe
                channel.pipe_readable(fd)
            for envelope in channel.recv_all():
                if isinstance(envelope.message, m.EnvObservation):
                    return envelope.message
            self.server.poll_once(0)

    def run(self, steps: int) -> float:
        """µs of the server's thread per step (its polls until it has stepped)."""
        spent = 0
        for _ in range(steps):
            for (channel, agent), observation in zip(self.clients, self.observations):
                channel.send(m.EnvAction(step=observation.step, actions={agent: np.array([self.rng.integers(5)])}))
            target = self.server.step + 1
            started = time.thread_time_ns()
            while self.server.step < target:
                for fd in list(self.server.channel._shm_of_pipe):
                    self.server.channel.pipe_readable(fd)
                self.server.poll_once(0)
            spent += time.thread_time_ns() - started
            self.observations = [self.observe(channel) for channel, _ in self.clients]
        return spent / steps / 1000


def vector_step_alone(envs, steps: int) -> float:
    rng = np.random.default_rng(1)
    started = time.thread_time_ns()
    for _ in range(steps):
        envs.step({agent: np.array([rng.integers(5)]) for agent in envs.possible_agents})
    return (time.thread_time_ns() - started) / steps / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--split", action="store_true", help="also time the actions and the broadcast apart")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="parley-one-process-") as folder:
        lockstep = OneProcessLockstep(folder)
        lockstep.run(300)  # warm
        print(f"server's thread per K=1 step (the env step included): {min(lockstep.run(args.steps) for _ in range(3)):.1f} us")
        print(f"the vectorized env's step alone:                       {vector_step_alone(lockstep.envs, args.steps):.1f} us")
        if args.split:
            totals: dict[str, int] = {}

            def timed(owner, name: str) -> None:
                function = getattr(owner, name)

                @functools.wraps(function)
                def wrapper(*positional, **keywords):
                    started = time.thread_time_ns()
                    try:
                        return function(*positional, **keywords)
                    finally:
                        totals[name] = totals.get(name, 0) + time.thread_time_ns() - started

                setattr(owner, name, wrapper)

            for owner, name in ((env_server.EnvServer, "_step"), (vector.VectorizedParallelEnv, "step"),
                                (env_server.EnvServer, "broadcast")):
                timed(owner, name)
            total = lockstep.run(args.steps)
            per = {name: spent / args.steps / 1000 for name, spent in totals.items()}
            print(f"split: the actions and the loop reading them {total - per['_step']:.1f} us, "
                  f"the broadcast {per['broadcast']:.1f}, the vectorized step {per['step']:.1f}, "
                  f"the rest of _step {per['_step'] - per['step'] - per['broadcast']:.1f}")


if __name__ == "__main__":
    main()
