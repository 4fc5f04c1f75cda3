"""K environment copies split over W processes: the server steps one share, forked workers the rest.

With K copies per lockstep step the env server spends most of its time inside `env.step`, one
copy after the other, on one core. `SplitVectorEnv` has the interface of
`VectorizedParallelEnv` (reset, step, the spaces, `all_finished`) but gives copies
[k_0, k_1) ... to W-1 worker processes, each a `VectorizedParallelEnv` of its own: a step sends
each worker its rows of the actions (`env.worker_step`), steps the server's own share meanwhile,
then gathers the workers' `env.worker_result`s and concatenates them in copy order. Copy i is
reset with `seed + i` wherever it lives, so a split run sees the same episodes as an unsplit one.

It pays only when cores are free: the workers compete with the agent processes for the CPU.
Workers talk over the transport hub and the wire like every Parley process (ipc sockets in a
private temporary directory), their step requests and results packed (protocols/codec/packed.py, a
layout over every agent: decoding a msgpack result cost the server ~50 us per step, warm) unless
infos are forwarded or a space has no fixed layout; they are forked before the server makes its own hub (a zmq
context must not cross a fork), are reaped on `close`, and exit when the server's socket goes
away (every wait has a deadline).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import tempfile
from typing import Any, Callable

import numpy as np
from pettingzoo import ParallelEnv

from env_server.vector import BatchedStep, InfoKeys, VectorizedParallelEnv, info_keys, packing_refusal
from protocols.codec import messages as m
from protocols.codec.packed import PackedLayout
from protocols.net.transport import Hub

log = logging.getLogger("env_server")

# A worker steps K/W copies of an environment per request; far below this on any env we host.
# Past it the server treats the worker as dead (the lockstep cannot go on without its copies).
WORKER_REPLY_TIMEOUT_S = 60.0
# A worker with no request for this long checks whether its server is still alive.
WORKER_IDLE_CHECK_S = 5.0


def split_copies(num_copies: int, num_workers: int) -> list[int]:
    """How many copies each of the W processes steps (the server's share first)."""
    if not 1 <= num_workers <= num_copies:
        raise ValueError(f"num_workers must be between 1 and num_copies={num_copies}, got {num_workers}")
    base, extra = divmod(num_copies, num_workers)
    return [base + (1 if i < extra else 0) for i in range(num_workers)]


SERVER_ROUTING_ID = "server"  # how the server's DEALER connects to every worker
# The fields of a worker's BatchedStep that stay in the worker (`_worker_main`): not in EnvWorkerResult.
WORKER_KEEPS = frozenset({"episode_agent_returns", "positions"})


def worker_layout(envs: Any, largest_share: int) -> PackedLayout | None:
    """The packed layout of the server's messages with its workers, over every agent; None
    (msgpack) when infos are forwarded, a space has no fixed layout or the largest worker's
    share of copies would not fit a packed frame. Both sides decide alike: from the same
    `largest_share`, not each from its own count."""
    agents = envs.possible_agents
    if packing_refusal(envs, agents, copies=largest_share) is not None:
        return None
    return PackedLayout(agents, envs.observation_spaces, envs.action_spaces, agents)


def _worker_main(factory: Callable[[], ParallelEnv], copies: int, autoreset: bool, endpoint: str, parent_pid: int,
                 forward_infos: InfoKeys, largest_share: int) -> None:
    envs = VectorizedParallelEnv(factory, copies, autoreset=autoreset, forward_infos=forward_infos)
    hub = Hub(sender=f"env_worker_{os.getpid()}", run_id="env_workers")
    channel = hub.bind_router(endpoint, name="worker")
    if (layout := worker_layout(envs, largest_share)) is not None:
        channel.use_packed(layout, SERVER_ROUTING_ID.encode())
    try:
        while True:
            if not hub.wait(WORKER_IDLE_CHECK_S):
                if os.getppid() != parent_pid:
                    return  # the server is gone
                continue
            for envelope in channel.recv_all():
                request = envelope.message
                if isinstance(request, m.EnvWorkerReset):
                    result = envs.reset(request.seed)
                elif isinstance(request, m.EnvWorkerStep):
                    result = envs.step(request.actions)
                else:
                    channel.reply(envelope, m.ErrorReply("unexpected_message", f"a copy worker does not accept {envelope.msg_type}"))
                    continue
                # Each agent's episode returns stay here: only an evaluation reads them, and the
                # evaluation copies live in the server process. No positions either: a run that
                # publishes them (topology.kind: proximity) steps its copies in the server alone.
                fields = {name: value for name, value in vars(result).items() if name not in WORKER_KEEPS}
                channel.reply(envelope, m.EnvWorkerResult(**fields, all_finished=envs.all_finished))
    finally:
        envs.close()
        hub.close()


class SplitVectorEnv:
    """`VectorizedParallelEnv`'s interface over W processes. See the module docstring."""

    def __init__(self, factory: Callable[[], ParallelEnv], num_copies: int, *, autoreset: bool, num_workers: int,
                 forward_infos: InfoKeys = ()) -> None:
        shares = split_copies(num_copies, num_workers)
        self.num_copies = num_copies
        self.autoreset = autoreset
        self._bounds = np.cumsum([0, *shares]).tolist()  # copy ranges: [bounds[i], bounds[i+1])
        self._socket_dir = tempfile.mkdtemp(prefix="parley-env-workers-")
        self._processes: list[multiprocessing.Process] = []
        endpoints = []
        context = multiprocessing.get_context("fork")  # the factory is a closure: it cannot be pickled
        for index, share in enumerate(shares[1:], start=1):
            endpoint = f"ipc://{self._socket_dir}/w{index}.sock"
            process = context.Process(
                target=_worker_main, args=(factory, share, autoreset, endpoint, os.getpid(), info_keys(forward_infos), max(shares)),
                daemon=True,
                name=f"env-worker-{index}",
            )
            process.start()
            self._processes.append(process)
            endpoints.append(endpoint)
        self.local = VectorizedParallelEnv(factory, shares[0], autoreset=autoreset, forward_infos=forward_infos)
        self.forward_infos = info_keys(forward_infos)
        self.possible_agents = self.local.possible_agents
        self.observation_spaces = self.local.observation_spaces
        self.action_spaces = self.local.action_spaces
        self.metadata = self.local.metadata
        self.task_spec = self.local.task_spec
        # The workers' hub is the server process's own: made after the forks above.
        self._hub = Hub(sender="env_server", run_id="env_workers")
        self._channels = [self._hub.connect_dealer(e, name=f"worker:{i}", identity=SERVER_ROUTING_ID) for i, e in enumerate(endpoints, 1)]
        if (layout := worker_layout(self, max(shares))) is not None:
            for channel in self._channels:
                channel.use_packed(layout)
        self._worker_finished = [False] * len(self._channels)

    @property
    def all_finished(self) -> bool:
        return self.local.all_finished and all(self._worker_finished)

    def assign_goals(self, index: int, goals: dict[str, int]) -> None:
        """Goals for copy `index` to pay (`VectorizedParallelEnv.assign_goals`): only the copies
        this process steps itself, the first share (goal runs have one copy)."""
        if not 0 <= index < self._bounds[1]:
            raise ValueError(f"copy {index} runs in a worker process; only copies 0..{self._bounds[1] - 1} take goals")
        self.local.assign_goals(index, goals)

    def reset(self, seed: int | None) -> BatchedStep:
        for channel, first in zip(self._channels, self._bounds[1:]):
            channel.send(m.EnvWorkerReset(seed=None if seed is None else seed + first))
        return self._gather(self.local.reset(seed))

    def step(self, actions: dict[str, Any]) -> BatchedStep:
        for channel, first, end in zip(self._channels, self._bounds[1:], self._bounds[2:]):
            channel.send(m.EnvWorkerStep(actions={agent: _rows(value, first, end) for agent, value in actions.items()}))
        first, end = self._bounds[0], self._bounds[1]
        return self._gather(self.local.step({agent: _rows(value, first, end) for agent, value in actions.items()}))

    def _gather(self, local: BatchedStep) -> BatchedStep:
        parts = [local]
        for index, channel in enumerate(self._channels):
            reply = channel.wait_for(m.EnvWorkerResult, m.ErrorReply, timeout_s=WORKER_REPLY_TIMEOUT_S)
            if not isinstance(reply, m.EnvWorkerResult):
                raise RuntimeError(f"env copy worker {index + 1} did not answer within {WORKER_REPLY_TIMEOUT_S} s: {reply!r}")
            self._worker_finished[index] = reply.all_finished
            parts.append(BatchedStep(reply.observations, reply.rewards, reply.terminated, reply.truncated, reply.active,
                                     reply.final_observations, reply.episode_start, list(reply.episode_returns),
                                     reply.infos))
        if len(parts) == 1:
            return local
        merged = BatchedStep({}, {}, {}, {}, {}, {}, np.concatenate([p.episode_start for p in parts]),
                             [r for p in parts for r in p.episode_returns])
        for agent in self.possible_agents:
            merged.observations[agent] = _concat([p.observations[agent] for p in parts])
            merged.rewards[agent] = np.concatenate([p.rewards[agent] for p in parts])
            merged.terminated[agent] = np.concatenate([p.terminated[agent] for p in parts])
            merged.truncated[agent] = np.concatenate([p.truncated[agent] for p in parts])
            merged.active[agent] = np.concatenate([p.active[agent] for p in parts])
            if any(agent in p.final_observations for p in parts):
                # A part without a final observation this step holds zeros, like inactive rows.
                merged.final_observations[agent] = _concat([
                    p.final_observations[agent] if agent in p.final_observations else _zeros_like(p.observations[agent])
                    for p in parts
                ])
        merged.infos = _merge_infos([p.infos for p in parts], [len(p.episode_start) for p in parts])
        return merged

    def close(self) -> None:
        self._hub.close()
        for process in self._processes:
            process.terminate()
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()
        self.local.close()
        shutil.rmtree(self._socket_dir, ignore_errors=True)


def _merge_infos(parts: list[dict[str, dict[str, Any]]], sizes: list[int]) -> dict[str, dict[str, Any]]:
    """Concatenate the parts' batched infos in copy order, in vector.py's representation: an
    array when every part has an array of one trailing shape and dtype, else a list of K rows."""
    merged: dict[str, dict[str, Any]] = {}
    for agent in sorted({a for part in parts for a in part}):
        for key in sorted({k for part in parts for k in part.get(agent, {})}):
            values = [part.get(agent, {}).get(key) for part in parts]
            arrays = [v for v in values if isinstance(v, np.ndarray)]
            if len(arrays) == len(values) and len({(a.shape[1:], a.dtype) for a in arrays}) == 1:
                merged.setdefault(agent, {})[key] = np.concatenate(arrays)
                continue
            rows: list[Any] = []
            for value, size in zip(values, sizes):
                rows.extend([None] * size if value is None else list(value))
            merged.setdefault(agent, {})[key] = rows
    return merged


def _rows(batched: Any, first: int, end: int) -> Any:
    if isinstance(batched, dict):
        return {key: _rows(value, first, end) for key, value in batched.items()}
    return np.ascontiguousarray(batched[first:end])


def _concat(values: list[Any]) -> Any:
    if isinstance(values[0], dict):
        return {key: _concat([v[key] for v in values]) for key in values[0]}
    return np.concatenate(values)


def _zeros_like(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _zeros_like(v) for key, v in value.items()}
    return np.zeros_like(value)
