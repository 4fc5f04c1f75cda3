"""Seeded random fault schedules for the network simulator, and the invariants every run must keep.

A schedule puts N virtual nodes on a ring in `protocols/sim/netsim.py`'s `NetworkSimulator` and, in
the first few virtual seconds, throws faults at them: crashes (the node stops; later it comes back
with its state, like a paused or checkpoint-recovered process), partitions (`PartitionTable`),
delay spikes and loss bursts on every link. Each node runs the engines an agent node runs side by
side: membership (heartbeats), push-sum, and synchronous consensus; membership's down/up verdicts
are passed to the consensus engines, as the agent node does.

Invariants checked on every schedule (`run_schedule` returns the violations, empty when fine):

- push-sum mass is conserved at every probe time: the weight and value held by the nodes plus the
  mass in flight (cumulative totals sent minus those absorbed, per link) equal the initial mass;
- no engine waits forever: every consensus engine is done by a bound computed from its settings
  and the heal time;
- after the heal, push-sum's estimate on every node is within tolerance of the true average, a
  synchronous run started after the heal ends within the spectral bound of the true average, and
  the synchronous run during the faults stays inside the range of its inputs;
- membership converges after the heal: every node sees every neighbour alive.

A restart with a *fresh* engine is not generated: push-sum mass held by a node is lost with its
state by design, so the conservation invariant only holds for crash-and-recover.

Same seed, same run: `run_schedule` also returns a digest of the delivery trace, and the tests
check that it replays. A failing seed is reproduced with `python -m protocols.sim.simfaults --seed S`.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from protocols.engines.consensus import ConsensusDone, ConsensusRequest, ConsensusShare, PushSumConsensus, PushSumShare, SyncConsensus
from protocols.engines.engine import Outgoing
from protocols.net.links import LinkConfig, LinkModel
from protocols.engines.membership import MembershipEngine, PeerDown, PeerUp
from protocols.codec.messages import Heartbeat
from protocols.sim.netsim import NetworkSimulator
from protocols.seeds import derive_seed
from protocols.engines.topology import metropolis_weights, ring

# Settings of one simulated run (virtual seconds).
FAULT_WINDOW_S = 3.0  # every fault starts and ends inside [0, FAULT_WINDOW_S]
HEARTBEAT_EVERY_S = 0.25
MEMBERSHIP_TIMEOUT_S = 0.8
PUSH_SUM_PERIOD_S = 0.1
PUSH_SUM_DURATION_S = 5.0
SYNC_ROUNDS = 15
SYNC_ROUND_TIMEOUT_S = 0.2
BASE_LINK = LinkConfig(delay_s=0.01, jitter_s=0.005, duplicate=0.05, reorder=0.05)
TENSOR_SHAPE = (3,)


@dataclass(frozen=True)
class Crash:
    node: str
    at: float
    revive_at: float


@dataclass(frozen=True)
class Partition:
    groups: tuple[tuple[str, ...], ...]
    at: float
    heal_at: float


@dataclass(frozen=True)
class LinkSpike:
    """Every link gets `extra_delay_s` more delay and drops messages with `loss` in [at, until)."""

    at: float
    until: float
    extra_delay_s: float
    loss: float


Fault = Crash | Partition | LinkSpike


@dataclass(frozen=True)
class FaultSchedule:
    seed: int
    nodes: tuple[str, ...]
    faults: tuple[Fault, ...]

    @property
    def heal_time(self) -> float:
        return last_fault_end(self.faults)


def last_fault_end(faults: tuple[Fault, ...]) -> float:
    """When the last of these faults is over (0 without faults)."""
    ends = [getattr(f, "revive_at", None) or getattr(f, "heal_at", None) or getattr(f, "until") for f in faults]
    return max(ends, default=0.0)


def random_schedule(seed: int) -> FaultSchedule:
    """Between 3 and 7 nodes and between 1 and 5 faults, all drawn from `seed`."""
    rng = np.random.default_rng(derive_seed(seed, 0, "simfaults/schedule"))
    nodes = tuple(f"n{i}" for i in range(int(rng.integers(3, 8))))
    faults: list[Fault] = []
    for _ in range(int(rng.integers(1, 6))):
        start = float(rng.uniform(0.0, FAULT_WINDOW_S - 0.5))
        end = float(rng.uniform(start + 0.2, FAULT_WINDOW_S))
        kind = int(rng.integers(0, 3))
        if kind == 0:
            faults.append(Crash(nodes[int(rng.integers(len(nodes)))], start, end))
        elif kind == 1:
            order = [nodes[i] for i in rng.permutation(len(nodes))]
            cut = int(rng.integers(1, len(nodes)))
            faults.append(Partition((tuple(order[:cut]), tuple(order[cut:])), start, end))
        else:
            faults.append(LinkSpike(start, end, float(rng.uniform(0.05, 0.8)), float(rng.uniform(0.0, 0.5))))
    return FaultSchedule(seed, nodes, tuple(faults))


class SpikyLink:
    """A `LinkModel` plus the schedule's link spikes (extra delay, a loss burst) on top."""

    def __init__(self, base: LinkModel, spikes: list[LinkSpike], seed: int) -> None:
        self._base = base
        self._spikes = spikes
        self._rng = np.random.default_rng(seed)

    def decide(self, now: float, size_bytes: int) -> list[float]:
        times = self._base.decide(now, size_bytes)
        u_loss = self._rng.random()  # drawn on every call, so runs stay aligned
        for spike in self._spikes:
            if spike.at <= now < spike.until:
                if u_loss < spike.loss:
                    return []
                times = [t + spike.extra_delay_s for t in times]
        return times


def forward_liveness(membership: MembershipEngine, engines: Sequence, now: float) -> list[Outgoing]:
    """Membership's PeerDown/PeerUp events since the last call, handed to each engine in turn as
    `on_neighbour_down`/`on_neighbour_up`, as a node's loop does; what the engines send in reply.
    The one forwarding of both simulated stacks (here and protocols/sim/simplan.py)."""
    outgoing: list[Outgoing] = []
    for event in membership.take_events():
        for engine in engines:
            if isinstance(event, PeerDown):
                outgoing += engine.on_neighbour_down(event.peer, now)
            elif isinstance(event, PeerUp):
                outgoing += engine.on_neighbour_up(event.peer, now)
    return outgoing


class NodeStack:
    """The engines of one agent node: membership, push-sum and synchronous consensus.

    Every message is a sign of life for membership; shares go to their engine; membership's
    PeerDown/PeerUp are forwarded to both consensus engines.
    """

    def __init__(self, node: str, neighbour_weights: dict[str, float], self_weight: float) -> None:
        neighbours = list(neighbour_weights)
        self.membership = MembershipEngine(node, neighbours, heartbeat_every_s=HEARTBEAT_EVERY_S, timeout_s=MEMBERSHIP_TIMEOUT_S)
        self.push_sum = PushSumConsensus(node, neighbours, PUSH_SUM_PERIOD_S, PUSH_SUM_DURATION_S)
        self.sync = SyncConsensus(node, neighbour_weights, self_weight, SYNC_ROUNDS, SYNC_ROUND_TIMEOUT_S)
        self.sync_results: dict[int, dict[str, np.ndarray]] = {}

    def _engines(self):
        return (self.membership, self.push_sum, self.sync)

    def on_message(self, sender: str, message: object, now: float) -> list[Outgoing]:
        outgoing = self.membership.on_message(sender, message, now)
        if isinstance(message, PushSumShare):
            outgoing += self.push_sum.on_message(sender, message, now)
        elif isinstance(message, (ConsensusShare, ConsensusDone)):
            outgoing += self.sync.on_message(sender, message, now)
        elif not isinstance(message, Heartbeat):
            raise TypeError(f"unexpected message {type(message).__name__} from {sender!r}")
        return outgoing + self._after(now)

    def on_timer(self, now: float) -> list[Outgoing]:
        outgoing: list[Outgoing] = []
        for engine in self._engines():
            deadline = engine.next_deadline()
            if deadline is not None and deadline <= now:
                outgoing += engine.on_timer(now)
        return outgoing + self._after(now)

    def next_deadline(self) -> float | None:
        deadlines = [d for d in (e.next_deadline() for e in self._engines()) if d is not None]
        return min(deadlines, default=None)

    def _after(self, now: float) -> list[Outgoing]:
        outgoing = forward_liveness(self.membership, (self.push_sum, self.sync), now)
        if self.sync.done and self.sync.epoch not in self.sync_results:
            self.sync_results[self.sync.epoch] = self.sync.result
        return outgoing


@dataclass
class Outcome:
    schedule: FaultSchedule
    violations: list[str] = field(default_factory=list)
    trace_digest: str = ""
    deliveries: int = 0


def _initial_values(schedule: FaultSchedule) -> dict[str, dict[str, np.ndarray]]:
    values = {}
    for index, node in enumerate(schedule.nodes):
        rng = np.random.default_rng(derive_seed(schedule.seed, index, "simfaults/values"))
        values[node] = {"x": rng.normal(0.0, 10.0, TENSOR_SHAPE)}
    return values


def run_schedule(schedule: FaultSchedule) -> Outcome:
    """Simulate one schedule and check every invariant; see the module docstring."""
    outcome = Outcome(schedule)
    nodes = schedule.nodes
    topology = ring(len(nodes), nodes)
    weights = metropolis_weights(topology)
    stacks: dict[str, NodeStack] = {}
    for i, node in enumerate(nodes):
        neighbour_weights = {nodes[j]: float(weights[i, j]) for j in topology.neighbours(i)}
        stacks[node] = NodeStack(node, neighbour_weights, float(weights[i, i]))

    spikes = [f for f in schedule.faults if isinstance(f, LinkSpike)]

    def make_link(src: str, dst: str, link_seed: int) -> SpikyLink:
        return SpikyLink(LinkModel(BASE_LINK, link_seed), spikes, link_seed ^ 0x5A5A5A5A)

    sim = NetworkSimulator(stacks, make_link, seed=schedule.seed, record_trace=True)
    values = _initial_values(schedule)
    true_average = np.mean([values[n]["x"] for n in nodes], axis=0)
    spread = float(np.max(np.abs(np.array([values[n]["x"] for n in nodes]) - true_average)))
    violations = outcome.violations

    schedule_faults(sim, schedule.faults, nodes)
    heal = schedule.heal_time

    for node in nodes:
        sim.call(node, lambda engine, now: engine.membership.start(None, now))
        sim.call(node, lambda engine, now, node=node: engine.push_sum.start(ConsensusRequest(values[node], 1), now))
        sim.call(node, lambda engine, now, node=node: engine.sync.start(ConsensusRequest(values[node], 1), now))

    # Bounds: a crashed node's timers wait for its revival; after that each sync round closes
    # within its timeout, push-sum ends at its duration (its clock started at 0).
    sync1_bound = heal + SYNC_ROUNDS * SYNC_ROUND_TIMEOUT_S + 0.1
    # Synchronous run 2 begins at run 1's bound (starting it abandons run 1), by which time
    # membership has long had time to see everyone again.
    sync2_at = max(sync1_bound, heal + MEMBERSHIP_TIMEOUT_S + 2 * HEARTBEAT_EVERY_S)
    for node in nodes:
        sim.schedule(sync2_at, lambda node=node: sim.call(node, lambda engine, now: engine.sync.start(ConsensusRequest(values[node], 2), now)))

    def check_mass() -> None:
        weight = 0.0
        value = np.zeros(TENSOR_SHAPE)
        for node in nodes:
            engine = stacks[node].push_sum
            weight += engine.weight_mass
            value += engine.value_mass["x"]
        for i, src in enumerate(nodes):
            for j in topology.neighbours(i):
                dst = nodes[j]
                sent_value, sent_weight = stacks[src].push_sum.sent_totals(dst)
                received = stacks[dst].push_sum.received_totals(src)
                seen_value, seen_weight = (np.zeros(TENSOR_SHAPE), 0.0) if received is None else (received[0]["x"], received[1])
                weight += sent_weight - seen_weight
                value += sent_value["x"] - seen_value
        if abs(weight - len(nodes)) > 1e-9 * len(nodes):
            violations.append(f"push-sum weight mass {weight!r} != {len(nodes)} at t={sim.now:.3f}")
        expected = true_average * len(nodes)
        if not np.allclose(value, expected, rtol=1e-9, atol=1e-9 * (1 + spread)):
            violations.append(f"push-sum value mass {value} != {expected} at t={sim.now:.3f}")

    probe_times = np.arange(0.05, PUSH_SUM_DURATION_S, 0.25)
    for t in probe_times:
        sim.schedule(float(t), lambda: None if stacks[nodes[0]].push_sum.done else check_mass())

    sync2_bound = sync2_at + SYNC_ROUNDS * SYNC_ROUND_TIMEOUT_S + 0.1
    push_sum_bound = max(PUSH_SUM_DURATION_S, heal) + PUSH_SUM_PERIOD_S
    end = max(sync2_bound, push_sum_bound) + 0.1
    sim.run(until=end)

    for node in nodes:
        stack = stacks[node]
        if 1 not in stack.sync_results:
            violations.append(f"sync run 1 on {node} not done by its bound t={sync1_bound:.2f}")
        if 2 not in stack.sync_results:
            violations.append(f"sync run 2 on {node} not done by t={end:.2f} (bound {sync2_bound:.2f})")
        if not stack.push_sum.done:
            violations.append(f"push-sum on {node} not done by t={end:.2f} (bound {push_sum_bound:.2f})")
    if violations:
        return _finish(outcome, sim)

    # Finish times against the bounds.
    for node in nodes:
        duration_2 = stacks[node].sync.metrics().get("consensus/engine_duration_s")
        if duration_2 is not None and sync2_at + duration_2 > sync2_bound:
            violations.append(f"sync run 2 on {node} took {duration_2:.2f}s, over its bound")

    check_mass()
    low = np.min([values[n]["x"] for n in nodes], axis=0)
    high = np.max([values[n]["x"] for n in nodes], axis=0)
    slack = 1e-9 * (1 + spread)
    for node in nodes:
        run1 = stacks[node].sync_results[1]["x"]
        if np.any(run1 < low - slack) or np.any(run1 > high + slack):
            violations.append(f"sync run 1 on {node} left the range of its inputs: {run1}")
    # After the heal: a synchronous run mixes with the full matrix, so its error shrinks at least
    # by the second-largest eigenvalue modulus every round.
    second = float(np.sort(np.abs(np.linalg.eigvals(weights)))[-2])
    initial_error = np.linalg.norm(np.array([values[n]["x"] for n in nodes]) - true_average)
    sync_tolerance = second**SYNC_ROUNDS * initial_error * (1 + 1e-6) + 1e-9
    errors = np.array([stacks[n].sync_results[2]["x"] for n in nodes]) - true_average
    if np.linalg.norm(errors) > sync_tolerance:
        violations.append(f"sync run 2 error {np.linalg.norm(errors):.3g} > spectral bound {sync_tolerance:.3g}")
    push_sum_tolerance = 1e-3 * (1 + spread)
    for node in nodes:
        error = float(np.max(np.abs(stacks[node].push_sum.result["x"] - true_average)))
        if error > push_sum_tolerance:
            violations.append(f"push-sum on {node} ended {error:.3g} from the true average (tolerance {push_sum_tolerance:.3g})")
    for i, node in enumerate(nodes):
        alive = set(stacks[node].membership.alive_peers())
        expected_alive = {nodes[j] for j in topology.neighbours(i)}
        if alive != expected_alive:
            violations.append(f"membership on {node} sees {sorted(alive)} alive after the heal, expected {sorted(expected_alive)}")
    return _finish(outcome, sim)


def schedule_faults(sim: NetworkSimulator, faults: Sequence[Fault], nodes: Sequence[str]) -> None:
    """Put the crashes and partitions of `faults` on the simulator's clock (a link spike acts
    through `SpikyLink` instead) and, when the last fault is over, revive every node still down
    and heal every partition. The one fault schedule of both simulated checks (here and
    protocols/sim/simplan.py)."""
    for fault in faults:
        if isinstance(fault, Crash):
            sim.schedule(fault.at, lambda n=fault.node: sim.crash(n))
            # Only revive if no later crash of the same node is still on: the last revive wins.
            sim.schedule(fault.revive_at, lambda n=fault.node: sim.revive(n) if sim.is_crashed(n) else None)
        elif isinstance(fault, Partition):
            sim.schedule(fault.at, lambda g=fault.groups: sim.partitions.partition(g))
            sim.schedule(fault.heal_at, lambda g=fault.groups: _unpartition(sim, g))
    if faults:
        heal = last_fault_end(tuple(faults))
        # Overlapping crash windows: a node crashed by one fault and "revived" by an earlier-ending
        # one comes back early; a final revive at the heal time makes sure every node is up after it.
        sim.schedule(heal, lambda: [sim.revive(n) for n in nodes if sim.is_crashed(n)])
        sim.schedule(heal, sim.partitions.heal)


def _unpartition(sim: NetworkSimulator, groups: tuple[tuple[str, ...], ...]) -> None:
    for a_index, group_a in enumerate(groups):
        for group_b in groups[a_index + 1:]:
            for a in group_a:
                for b in group_b:
                    sim.partitions.unblock(a, b)


def _finish(outcome: Outcome, sim: NetworkSimulator) -> Outcome:
    digest = hashlib.blake2b(digest_size=16)
    for record in sim.trace:
        message = record.message
        tag = getattr(message, "seq", None) if not isinstance(message, ConsensusShare) else (message.epoch, message.round)
        digest.update(f"{record.time!r}|{record.sender}|{record.destination}|{type(message).__name__}|{tag}\n".encode())
    outcome.trace_digest = digest.hexdigest()
    outcome.deliveries = len(sim.trace)
    return outcome


def repro_command(seed: int) -> str:
    return f".venv/bin/python -m protocols.sim.simfaults --seed {seed}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run one seeded fault schedule and print its invariant violations.")
    parser.add_argument("--seed", type=int, required=True)
    args = parser.parse_args(argv)
    schedule = random_schedule(args.seed)
    outcome = run_schedule(schedule)
    print(f"seed {args.seed}: nodes {list(schedule.nodes)}")
    for fault in schedule.faults:
        print(f"  {fault}")
    print(f"deliveries {outcome.deliveries}, trace digest {outcome.trace_digest}")
    for violation in outcome.violations:
        print(f"VIOLATION: {violation}")
    return 1 if outcome.violations else 0


if __name__ == "__main__":
    sys.exit(main())
