"""The consensus session: one agent's averaging run between two lockstep steps, sans-IO.

At a lockstep step by which the `ConsensusSubject` reached a tick it has not averaged yet, `due`
names that tick and the node hands the observation it just received to `begin`: the session
holds it (the env server waits for this agent's action while the neighbours average), asks the
subject for its tensors, and starts the consensus engine with the tick as the epoch (computed
from the env server's step, so the same number on every agent, see agent_node/consensus/subjects.py). Each
tick runs at most once; the first step a (re)started agent sees does not start a tick that lies
before it (its neighbours averaged it without this agent long ago). Peer shares, timers and
neighbour up/down notices go in; the messages to send come out as `(destination, message)`
pairs. Once the engine is done, `finish_if_done` adopts its result through the subject and
hands back the held observation, to be answered now, and the metrics records to write at this
step: one per synchronous round (a convergence plot needs the disagreement per round), the
engine's summary, and the subject's adoption metrics with the session's duration.

With sharing off (no engine, e.g. an OG-MARL learner that refreshes its world model on its own
schedule) the session adopts the local tensors at once.

`consensus.average_at_end`: the env server's last observation (`run_finished`, never answered)
starts one more run, under the run's last step as its tick (`due_at_end`), so that the agents'
final checkpoints hold the same policy; the node drains when it is over.

Shares can arrive while no session runs (a neighbour began averaging a moment earlier): they go
to the engine, which buffers them for the epoch it has not started yet and drops stale ones.

When talking takes env steps (`protocols.talk: env_steps`) nothing is held: `begin` gets no
observation, the agent acts and learns while the shares travel, `now` is the env step, and
`finish_if_done` adopts the result when it lands (`FinishedSession.held` is None then).

It never touches a socket or a clock: `now` is always passed in.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from agent_node.consensus.subjects import ConsensusSubject
from protocols.codec import messages as m
from protocols.engines.consensus import ConsensusRequest, SyncConsensus
from protocols.engines.engine import Engine, Outgoing

log = logging.getLogger("agent_node.consensus")

ConsensusEngine = Engine[ConsensusRequest, Mapping[str, np.ndarray]]


@dataclass(frozen=True)
class FinishedSession:
    held: m.EnvObservation | None  # the observation to answer now (None: nothing was held)
    records: list[dict[str, float]]  # metrics records for the held observation's step, in order


class ConsensusSession:
    def __init__(
        self, engine: ConsensusEngine | None, subject: ConsensusSubject, num_agents: int, *, average_at_end: bool = False
    ) -> None:
        self.engine = engine
        self.subject = subject
        self.num_agents = num_agents
        self.average_at_end = average_at_end
        self.held: m.EnvObservation | None = None
        self.running = False  # a run is under way (holding `held`, or, talking in env steps, nothing)
        self.started_at = 0.0
        self.last_tick: int | None = None  # the newest tick begun (or passed over on the first step)
        self.seen_a_step = False

    @property
    def averaging(self) -> bool:
        """A run is under way (while it holds an observation, or none, talking in env steps)."""
        return self.running

    def due(self, step: int) -> int | None:
        """The tick to average at this step, or None: the subject's latest tick at or before it,
        if no run of this session began it yet."""
        tick = self.subject.tick(step)
        if not self.seen_a_step:
            self.seen_a_step = True
            if tick is not None and tick < step:
                self.last_tick = tick  # joined after it: the neighbours are past it
                return None
        if tick is None or (self.last_tick is not None and tick <= self.last_tick):
            return None
        return tick

    def due_at_end(self, last_step: int) -> int | None:
        """The final run's tick at the env server's last observation (its step, the same on every
        agent), or None: the run does not average at the end, or this session already began a run
        at that step (the final one, or a periodic tick that fell on it)."""
        if not self.average_at_end or self.engine is None:
            return None
        if self.last_tick is not None and last_step <= self.last_tick:
            return None
        return last_step

    def begin(self, held: m.EnvObservation | None, tick: int, now: float) -> list[Outgoing]:
        """Start the run of `tick`, holding `held` (None: talking in env steps holds nothing)."""
        if self.running:
            raise RuntimeError(f"consensus session began tick {tick} while the run of tick {self.last_tick} goes on")
        if self.last_tick is not None and tick <= self.last_tick:
            raise ValueError(f"consensus tick {tick} began again (the last was {self.last_tick}); ticks must increase")
        self.held, self.running = held, True
        self.started_at = now
        self.last_tick = tick
        tensors = self.subject.prepare(tick)
        if self.engine is None:
            return []  # nothing to exchange: `finish_if_done` adopts the local tensors
        return self.engine.start(ConsensusRequest(tensors, epoch=tick), now)

    def replace_held(self, newer: m.EnvObservation) -> None:
        """The env server stepped on while we averaged (the consensus outlasted its step
        deadline): answer the newest observation when the run ends, not the stale one."""
        if self.held is None:
            raise RuntimeError(f"replace_held(step {newer.step}) while not averaging")
        self.held = newer

    def on_message(self, sender: str, message: Any, now: float) -> list[Outgoing]:
        if self.engine is None:
            log.warning("consensus %s from %s, but consensus is off in this run", type(message).__name__, sender)
            return []
        return self.engine.on_message(sender, message, now)

    def on_timer(self, now: float) -> list[Outgoing]:
        if self.engine is None or not self.averaging:
            return []
        return self.engine.on_timer(now)

    def on_neighbour_down(self, node: str, now: float) -> list[Outgoing]:
        return [] if self.engine is None else self.engine.on_neighbour_down(node, now)

    def on_neighbour_up(self, node: str, now: float) -> list[Outgoing]:
        return [] if self.engine is None else self.engine.on_neighbour_up(node, now)

    def next_deadline(self) -> float | None:
        if self.engine is None or not self.averaging:
            return None
        return self.engine.next_deadline()

    def finish_if_done(self, now: float) -> FinishedSession | None:
        """Adopt the result and release the held observation once the run is over; else None."""
        if not self.running:
            return None
        records: list[dict[str, float]] = []
        if self.engine is None:
            averaged = None
        elif self.engine.done:
            if isinstance(self.engine, SyncConsensus):
                records.extend(self.engine.round_metrics)
            records.append(self.engine.metrics())
            averaged = self.engine.result
        else:
            return None
        adopted = self.subject.adopt(averaged, self.num_agents)
        adopted["consensus/duration_s" if self.held is not None else "consensus/decision_age_steps"] = now - self.started_at
        records.append(adopted)
        held, self.held, self.running = self.held, None, False
        return FinishedSession(held, records)
