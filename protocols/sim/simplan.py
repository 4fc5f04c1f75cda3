"""Fault plans for many simulated agents: the real engines, a topology, a schedule of faults.

`protocols/sim/simfaults.py` throws random faults at 3-7 nodes on a ring; this module scales the
same idea to hundreds or thousands of simulated agents on any topology, and is what
`bench/simulate.py` runs. A `FaultPlan` names a topology, the consensus engine the agents run
(`sync` rounds or `push_sum`, as `consensus.mode` chooses in a run config), the link every
message crosses (`LinkConfig`: loss, a heavy-tailed delay) and a list of timed events:

- `Crash(node, at, revive_at)`: the node stops (nothing reaches it, its timers stop) and comes
  back with its state, as a paused process or one restored from its checkpoint;
- `Partition(groups, at, heal_at)`: messages between the groups are dropped until the heal;
- `LinkSpike(at, until, extra_delay_s, loss)`: every link gets more delay and a loss burst.

Each simulated node runs `MembershipEngine` and one consensus engine, unchanged: membership's
down/up verdicts go to the consensus engine as the agent node passes them (`ConsensusStack`).

`run_plan` simulates a plan and measures, per synchronous round (or per push-sum period), the
disagreement `||X - mean(X)|| / ||X_0 - mean(X_0)||` over every node's tensors, the messages and
bytes each node sent, and checks the invariants (`PlanResult.violations`, empty when fine):

- push-sum weight mass is conserved: the weight held by the nodes plus the weight in flight
  (cumulative totals sent minus those absorbed, per link) is `n` to 1e-12 relative, at every
  probe, under loss, delay, crashes and partitions;
- a synchronous run never leaves the range of its inputs (every round is a convex combination);
- bounded disagreement after the heal: disagreement at the end is no larger than at the heal;
- every consensus engine finishes within its bound (its run's length after the heal), when the
  run lasts that long (a row may stop earlier, at the disagreement asked for);
- membership converges after the heal: every (node, neighbour) pair is seen alive at a probe
  after the heal has had a timeout and two heartbeats to settle (under loss a neighbour can be
  declared down by chance at any moment; what must hold is that it comes back).

`shrink_plan` cuts a plan that breaks an invariant down to the fewest events that still break it
(delta debugging, Zeller and Hildebrandt 2002), and `replay_config` prints the result as the
sections of a run config (`topology`, `network`, `protocols`, `faults`) that `orchestrate up`
replays on real processes.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Literal, Sequence

import numpy as np

from protocols.engines.consensus import ConsensusRequest, ConsensusShare, ConsensusDone, PushSumConsensus, PushSumShare, SyncConsensus
from protocols.engines.engine import Outgoing
from protocols.net.links import LinkConfig, LinkModel, link_seed
from protocols.engines.membership import MembershipEngine
from protocols.codec.messages import Heartbeat
from protocols.sim.netsim import NetworkSimulator, approximate_size
from protocols.seeds import derive_seed
from protocols.sim.simfaults import Crash, Fault, LinkSpike, Partition, SpikyLink, forward_liveness, last_fault_end, schedule_faults
from protocols.engines.topology import Topology, metropolis_weights, second_largest_eigenvalue_modulus

EngineKind = Literal["sync", "push_sum"]
TENSOR_DIM = 4  # entries of the one tensor every node averages


@dataclass(frozen=True)
class PlanSettings:
    """Engine timing of a plan (virtual seconds), the fields of `protocols.membership` and
    `protocols.consensus` in a run config."""

    heartbeat_every_s: float = 0.5
    membership_timeout_s: float = 2.0
    rounds: int = 200  # sync: rounds of the run
    round_timeout_s: float = 0.2
    push_sum_period_s: float = 0.1
    push_sum_periods: int = 200  # push-sum: duration in periods


@dataclass(frozen=True)
class FaultPlan:
    seed: int
    topology: Topology
    topology_name: str
    engine: EngineKind
    link: LinkConfig
    events: tuple[Fault, ...]
    settings: PlanSettings = PlanSettings()

    @property
    def heal_time(self) -> float:
        return last_fault_end(self.events)

    def with_events(self, events: Sequence[Fault]) -> "FaultPlan":
        return replace(self, events=tuple(events))


# The plan of the issue: heavy-tailed delays (Pareto, shape 1.5: infinite variance, mean 10 ms)
# and 30% loss on every link, all the time.
HEAVY_TAILED_LOSSY = LinkConfig(delay_s=0.01, delay_distribution="pareto", pareto_shape=1.5, loss=0.3)


def standard_plan(
    topology: Topology,
    topology_name: str,
    engine: EngineKind,
    seed: int = 0,
    crash_fraction: float = 0.05,
    partitions: int = 2,
    fault_window_s: float = 6.0,
    link: LinkConfig = HEAVY_TAILED_LOSSY,
    settings: PlanSettings = PlanSettings(),
) -> FaultPlan:
    """`crash_fraction` of the nodes crash and come back (each down 1-3 s: longer than the
    membership timeout, so its neighbours declare it down and up again), and `partitions`
    times the graph splits into two halves (a random half of the nodes, 1-2 s) that heal; every
    fault starts and ends inside `[0.5, fault_window_s]`; `link` holds on every link throughout."""
    rng = np.random.default_rng(derive_seed(seed, 0, "simplan/events"))
    nodes = topology.nodes
    n = len(nodes)
    events: list[Fault] = []
    crashing = rng.choice(n, size=max(1, round(crash_fraction * n)) if crash_fraction > 0 else 0, replace=False)
    for index in sorted(int(i) for i in crashing):
        down_for = float(rng.uniform(1.0, 3.0))
        at = float(rng.uniform(0.5, fault_window_s - down_for))
        events.append(Crash(nodes[index], at, at + down_for))
    for _ in range(partitions):
        order = rng.permutation(n)
        half = tuple(nodes[int(i)] for i in sorted(order[: n // 2]))
        rest = tuple(nodes[int(i)] for i in sorted(order[n // 2:]))
        lasting = float(rng.uniform(1.0, 2.0))
        at = float(rng.uniform(0.5, fault_window_s - lasting))
        events.append(Partition((half, rest), at, at + lasting))
    events.sort(key=lambda event: event.at)
    return FaultPlan(seed, topology, topology_name, engine, link, tuple(events), settings)


# ------------------------------------------------------------------------------------------
# One simulated node
# ------------------------------------------------------------------------------------------


class ConsensusStack:
    """Membership and one consensus engine of an agent node: every message is a sign of life for
    membership, shares go to the consensus engine, and membership's PeerDown/PeerUp reach it as
    `on_neighbour_down`/`on_neighbour_up` (agent_node/peers.py does the same)."""

    def __init__(self, membership: MembershipEngine, consensus: SyncConsensus | PushSumConsensus) -> None:
        self.membership = membership
        self.consensus = consensus
        self._types = consensus.message_types
        # Membership's deadline as last computed (a scan over every neighbour): refreshed when its
        # timer or start runs, not after each message. A message only moves its sender's silence
        # deadline later (or starts timing it, at now + timeout, past the next heartbeat), so
        # membership's deadline never moves earlier on a message, and the value kept is a lower
        # bound: at worst the simulator wakes the node early, `on_timer` finds membership not due
        # (it asks the engine itself) and refreshes. Membership's timer runs at the same virtual
        # times as with a fresh scan after every message (tested), for one scan per wake-up
        # instead of one per message: with 19 neighbours it was an eighth of the simulation.
        self._membership_deadline = membership.next_deadline()
        self.observer: Callable[[], None] | None = None  # called after every message and timer

    def start_membership(self, now: float) -> list[Outgoing]:
        outgoing = self.membership.start(None, now)
        self._membership_deadline = self.membership.next_deadline()
        return outgoing

    def on_message(self, sender: str, message: object, now: float) -> list[Outgoing]:
        outgoing = self.membership.on_message(sender, message, now)
        if isinstance(message, self._types):
            outgoing += self.consensus.on_message(sender, message, now)
        elif not isinstance(message, Heartbeat):
            raise TypeError(f"unexpected message {type(message).__name__} from {sender!r}")
        outgoing += self._after(now)
        if self.observer is not None:
            self.observer()
        return outgoing

    def on_timer(self, now: float) -> list[Outgoing]:
        outgoing: list[Outgoing] = []
        # Membership is due only if its kept deadline (a lower bound; None before it starts) is:
        # ask it then, not on every wake-up (most are the consensus engine's, and each of
        # membership's answers is a scan over every neighbour).
        if self._membership_deadline is None or self._membership_deadline <= now:
            deadline = self.membership.next_deadline()
            if deadline is not None and deadline <= now:
                outgoing += self.membership.on_timer(now)
        deadline = self.consensus.next_deadline()
        if deadline is not None and deadline <= now:
            outgoing += self.consensus.on_timer(now)
        self._membership_deadline = self.membership.next_deadline()
        outgoing += self._after(now)
        if self.observer is not None:
            self.observer()
        return outgoing

    def next_deadline(self) -> float | None:
        a, b = self._membership_deadline, self.consensus.next_deadline()
        if a is None:
            return b
        return a if b is None else min(a, b)

    def _after(self, now: float) -> list[Outgoing]:
        return forward_liveness(self.membership, (self.consensus,), now)


def neighbour_lists(topology: Topology) -> list[list[int]]:
    """Every node's neighbours in one pass over the edges (`Topology.neighbours` scans all
    edges per call, which is quadratic over a thousand nodes)."""
    lists: list[list[int]] = [[] for _ in range(topology.num_nodes)]
    for i, j in topology.edges:
        lists[i].append(j)
        lists[j].append(i)
    return [sorted(neighbours) for neighbours in lists]


def build_stacks(plan: FaultPlan, engine_factory: Callable | None = None) -> dict[str, ConsensusStack]:
    """One stack per node. `engine_factory(node, neighbour_weights, self_weight, settings)`
    replaces the consensus engine (a test double that breaks an invariant on purpose)."""
    topology, settings = plan.topology, plan.settings
    weights = metropolis_weights(topology)
    neighbours = neighbour_lists(topology)
    stacks = {}
    for i, node in enumerate(topology.nodes):
        neighbour_weights = {topology.nodes[j]: float(weights[i, j]) for j in neighbours[i]}
        membership = MembershipEngine(node, list(neighbour_weights), heartbeat_every_s=settings.heartbeat_every_s,
                                      timeout_s=settings.membership_timeout_s)
        membership.state = "running"  # as the agent node sets it once it runs (never-heard peers are timed)
        if engine_factory is not None:
            consensus = engine_factory(node, neighbour_weights, float(weights[i, i]), settings)
        elif plan.engine == "sync":
            consensus = SyncConsensus(node, neighbour_weights, float(weights[i, i]), settings.rounds, settings.round_timeout_s)
        else:
            consensus = PushSumConsensus(node, list(neighbour_weights), settings.push_sum_period_s,
                                         settings.push_sum_period_s * settings.push_sum_periods)
        stacks[node] = ConsensusStack(membership, consensus)
    return stacks


# ------------------------------------------------------------------------------------------
# Running a plan
# ------------------------------------------------------------------------------------------


@dataclass
class PlanResult:
    plan: FaultPlan
    disagreement: np.ndarray  # per sync round / push-sum period, relative to the start (index 0 = start)
    rounds_to: dict[float, int | None]  # tolerance -> first round at or below it (None: not reached)
    messages_per_node: float
    bytes_per_node: float
    simulated_s: float
    wall_s: float
    cpu_s: float  # this process's CPU time: on a shared machine, the steadier figure
    deliveries: int
    final_error: float  # largest distance of a node's result to the true average, relative to the start
    max_weight_drift: float = math.nan  # push-sum: largest |total weight - n| / n over the probes
    # sync: nodes whose last round mixed no neighbour's share (back from a crash longer than the
    # membership timeout, a node declares every silent neighbour down and finishes the run alone)
    finished_alone: int = 0
    violations: list[str] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)


class _SizeMemo:
    """`approximate_size` without walking every message: in a plan every consensus message of one
    type has the same layout (integers and the one tensor of TENSOR_DIM float64), so its size is
    computed once per type; other messages (heartbeats carry the node's id) once per object, and
    one heartbeat goes to every neighbour as the same object."""

    FIXED_LAYOUT = (PushSumShare, ConsensusShare, ConsensusDone)

    def __init__(self) -> None:
        self._by_type: dict[type, int] = {}
        self._last: object = None  # held, not its id: a freed message's id can be reused
        self._last_size = 0
        self.total_bytes = 0

    def __call__(self, message: object) -> int:
        kind = type(message)
        size = self._by_type.get(kind)
        if size is None:
            if message is not self._last:
                self._last, self._last_size = message, approximate_size(message)
            size = self._last_size
            if kind in self.FIXED_LAYOUT:
                self._by_type[kind] = size
        self.total_bytes += size
        return size


def initial_values(plan: FaultPlan) -> np.ndarray:
    rng = np.random.default_rng(derive_seed(plan.seed, 0, "simplan/values"))
    return rng.normal(0.0, 10.0, size=(plan.topology.num_nodes, TENSOR_DIM))


def run_plan(
    plan: FaultPlan,
    tolerances: Sequence[float] = (1e-3, 1e-6),
    stop_at: float | None = 1e-6,
    engine_factory: Callable | None = None,
) -> PlanResult:
    """Simulate `plan`; see the module docstring. The run stops once disagreement is at or below
    `stop_at` after the heal and membership has had time to settle (None: run the engine to its
    end)."""
    started, cpu_started = time.perf_counter(), time.process_time()
    settings = plan.settings
    nodes = plan.topology.nodes
    n = len(nodes)
    index = {node: i for i, node in enumerate(nodes)}
    stacks = build_stacks(plan, engine_factory)
    spikes = [event for event in plan.events if isinstance(event, LinkSpike)]

    if spikes:
        def make_link(src: str, dst: str, seed: int):
            return SpikyLink(LinkModel(plan.link, seed), spikes, seed ^ 0x5A5A5A5A)
    else:
        def make_link(src: str, dst: str, seed: int):
            return LinkModel(plan.link, seed)

    sizes = _SizeMemo()
    sim = NetworkSimulator(stacks, make_link, seed=plan.seed, message_size=sizes)
    values = initial_values(plan)
    true_average = values.mean(axis=0)
    scale = float(np.linalg.norm(values - true_average))
    low, high = values.min(axis=0), values.max(axis=0)
    heal = plan.heal_time
    violations: list[str] = []

    schedule_faults(sim, plan.events, nodes)

    for i, node in enumerate(nodes):
        sim.call(node, lambda stack, now: stack.start_membership(now))
        sim.call(node, lambda stack, now, i=i: stack.consensus.start(ConsensusRequest({"x": values[i].copy()}, 1), now))

    # Disagreement per step: sync rounds as each node finishes them; push-sum at every period.
    if plan.engine == "sync":
        steps = settings.rounds
        step_s = settings.round_timeout_s
    else:
        steps = settings.push_sum_periods
        step_s = settings.push_sum_period_s
    by_step = np.full((steps + 1, n, TENSOR_DIM), np.nan)
    by_step[0] = values
    recorded = [0] * n  # sync: rounds recorded per node
    state = {"stop": False, "disagreement_at_heal": None, "membership_probed": False}
    settle_at = heal + settings.membership_timeout_s + 2 * settings.heartbeat_every_s
    unseen_pairs: set[tuple[str, str]] = set()  # (node, neighbour) not seen alive since settle_at

    def record_rounds(i: int, engine: SyncConsensus) -> None:
        """After each event of node i: the values of the rounds it finished since the last one.
        Rounds finished several at once in one call (shares buffered ahead, or a node closing
        the rounds it missed) share the values after the last of them (an approximation there)."""
        if engine.round > recorded[i] or (engine.done and recorded[i] < steps):
            reached = steps if engine.done else engine.round
            by_step[recorded[i] + 1: reached + 1, i] = engine.values["x"]
            recorded[i] = reached

    if plan.engine == "sync":
        for node, stack in stacks.items():
            stack.observer = functools.partial(record_rounds, index[node], stack.consensus)

    def disagreement_at(step: int) -> float:
        rows = by_step[step]
        if np.isnan(rows).any():
            return math.nan
        return float(np.linalg.norm(rows - rows.mean(axis=0))) / scale

    weight_drifts: list[float] = []

    def check_mass() -> None:
        weight = sum(stacks[node].consensus.weight_mass for node in nodes)
        for node in nodes:
            sender = stacks[node].consensus
            for destination in sender.out_neighbours:
                seen = stacks[destination].consensus.received_totals(node)
                weight += sender.sent_totals(destination)[1] - (0.0 if seen is None else seen[1])
        drift = abs(weight - n) / n
        weight_drifts.append(drift)
        if drift > 1e-12:
            violations.append(f"push-sum weight mass {weight!r} != {n} (relative drift {drift:.3g}) at t={sim.now:.3f}")

    def probe(step: int) -> None:
        if step > steps:  # past the engine's run: membership only
            current = math.nan
        elif plan.engine == "push_sum":
            for i, node in enumerate(nodes):
                by_step[step, i] = stacks[node].consensus.estimate()["x"]
            if step % 10 == 0 and not stacks[nodes[0]].consensus.done:
                check_mass()
            current = disagreement_at(step)
        else:
            done = min(recorded)
            current = disagreement_at(done) if done > 0 else math.nan
        if sim.now >= heal and state["disagreement_at_heal"] is None:
            state["disagreement_at_heal"] = current
        if sim.now >= settle_at:
            # Under loss a neighbour can be declared down by chance at any moment (its heartbeats
            # lost for a whole timeout); what must hold is that each one is seen alive again.
            if not state["membership_probed"]:
                unseen_pairs.update((node, peer) for node in nodes for peer in stacks[node].membership.peers
                                    if not stacks[node].membership.is_alive(peer))
                state["membership_probed"] = True
            else:
                unseen_pairs.difference_update([(node, peer) for node, peer in unseen_pairs if stacks[node].membership.is_alive(peer)])
        if stop_at is not None and state["membership_probed"] and not unseen_pairs and (current <= stop_at or step > steps):
            state["stop"] = True

    bound = heal + steps * step_s + 0.1
    # Time enough after the settling point for a neighbour declared down by chance (its
    # heartbeats all lost for a timeout) to be heard again.
    end_by = max(bound, settle_at + 2 * settings.membership_timeout_s) + step_s
    for step in range(1, math.ceil(end_by / step_s) + 1):
        sim.schedule(step * step_s + (1e-9 if plan.engine == "push_sum" else 0.0), lambda step=step: probe(step))
    sim.run(until=end_by, stop_when=lambda: state["stop"])
    end = sim.now

    # -- invariants -----------------------------------------------------------------------
    if plan.engine == "push_sum":
        check_mass()
    if end >= bound:
        for node in nodes:
            if not stacks[node].consensus.done:
                violations.append(f"{plan.engine} on {node} not done by t={end:.2f} (bound {bound:.2f})")
    if plan.engine == "sync":
        finished = by_step[~np.isnan(by_step).any(axis=(1, 2))]
        slack = 1e-9 * (1.0 + float(np.abs(values).max()))
        if np.any(finished < low - slack) or np.any(finished > high + slack):
            violations.append("a synchronous round left the range of its inputs")
    disagreement = np.array([disagreement_at(step) for step in range(steps + 1)])
    reached = disagreement[~np.isnan(disagreement)]
    last = float(reached[-1]) if len(reached) else math.nan
    at_heal = state["disagreement_at_heal"]
    if at_heal is not None and not math.isnan(at_heal) and last > at_heal * (1 + 1e-9):
        violations.append(f"disagreement grew after the heal: {at_heal:.3g} at t={heal:.2f}, {last:.3g} at the end")
    if not state["membership_probed"]:
        violations.append(f"the run ended at t={end:.2f}, before membership could settle (t={settle_at:.2f})")
    elif unseen_pairs:
        node, peer = min(unseen_pairs)
        violations.append(f"membership: {len(unseen_pairs)} (node, neighbour) pairs never seen alive after t={settle_at:.2f}, "
                          f"e.g. {node} never saw {peer}")
    if plan.engine == "sync":
        finals = np.array([stacks[node].consensus.values["x"] for node in nodes])
    else:
        finals = np.array([stacks[node].consensus.estimate()["x"] for node in nodes])
    final_error = float(np.max(np.linalg.norm(finals - true_average, axis=1))) / scale

    finished_alone = 0
    if plan.engine == "sync":
        for node in nodes:
            engine = stacks[node].consensus
            if engine.missing_by_round and len(engine.missing_by_round[-1]) == len(engine.neighbour_weights):
                finished_alone += 1
    rounds_to: dict[float, int | None] = {}
    for tolerance in tolerances:
        below = np.nonzero(disagreement <= tolerance)[0]
        rounds_to[tolerance] = int(below[0]) if len(below) else None
    return PlanResult(
        plan=plan,
        disagreement=disagreement,
        rounds_to=rounds_to,
        messages_per_node=sim.stats["sent"] / n,
        bytes_per_node=sizes.total_bytes / n,
        simulated_s=end,
        wall_s=time.perf_counter() - started,
        cpu_s=time.process_time() - cpu_started,
        deliveries=sim.stats["delivered"],
        final_error=final_error,
        max_weight_drift=max(weight_drifts, default=math.nan),
        finished_alone=finished_alone,
        violations=violations,
        stats=dict(sim.stats),
    )


def predicted_rounds(topology: Topology, tolerance: float) -> float:
    """Rounds for `|lambda_2(W)|^k <= tolerance` with Metropolis weights (inf when lambda_2 = 1)."""
    slem = second_largest_eigenvalue_modulus(metropolis_weights(topology))
    if slem == 0.0:
        return 1.0
    return math.log(tolerance) / math.log(slem) if slem < 1.0 else math.inf


# ------------------------------------------------------------------------------------------
# Shrinking a failing plan, and replaying it on real processes
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shrunk:
    plan: FaultPlan  # the smallest failing plan found: no event can be dropped and still fail
    violations: list[str]  # what it breaks
    original_events: int
    runs: int  # simulations spent shrinking


def plan_fails(plan: FaultPlan, engine_factory: Callable | None = None) -> list[str]:
    """The violations of a full run of `plan` (the engines run to their end)."""
    return run_plan(plan, stop_at=None, engine_factory=engine_factory).violations


def shrink_plan(
    plan: FaultPlan,
    violations_of: Callable[[FaultPlan], list[str]] = plan_fails,
    still_failing: Callable[[list[str]], bool] = bool,
    known_violations: list[str] | None = None,
) -> Shrunk:
    """Cut a failing plan down to a 1-minimal set of events that still fails (ddmin).

    Zeller and Hildebrandt's delta debugging ("Simplifying and isolating failure-inducing input",
    2002) over the plan's events: try each of `k` chunks alone, then each complement; keep the
    first that still fails (`still_failing(violations)`, by default any violation; pass a test
    for one invariant to keep the cause from drifting to another), else split finer; stop when
    no single event can be removed. The plan with no events is tried first: a failure that needs
    no fault shrinks to nothing at all. `known_violations`: the plan's own, when the caller has
    just run it (a whole run on real processes), so it is not run again.
    """
    runs = 0

    def fails(events: Sequence[Fault]) -> list[str] | None:
        nonlocal runs
        runs += 1
        violations = violations_of(plan.with_events(events))
        return violations if still_failing(violations) else None

    events = list(plan.events)
    if known_violations is None:
        found = fails(events)
    else:
        found = known_violations if still_failing(known_violations) else None
    if found is None:
        raise ValueError(f"the plan does not fail (seed {plan.seed}, {len(events)} events): nothing to shrink")
    empty = fails([])
    if empty is not None:
        return Shrunk(plan.with_events(()), empty, len(events), runs)
    granularity = 2
    while len(events) >= 2:
        chunks = [events[i * len(events) // granularity:(i + 1) * len(events) // granularity] for i in range(granularity)]
        reduced = False
        for chunk in chunks:
            result = fails(chunk)
            if result is not None:
                events, found, granularity, reduced = chunk, result, 2, True
                break
        if not reduced and granularity > 2:
            for chunk in chunks:
                complement = [event for event in events if event not in chunk]
                result = fails(complement)
                if result is not None:
                    events, found, granularity, reduced = complement, result, max(granularity - 1, 2), True
                    break
        if not reduced:
            if granularity >= len(events):
                break
            granularity = min(2 * granularity, len(events))
    return Shrunk(plan.with_events(events), found, len(plan.events), runs)


def replay_sections(plan: FaultPlan) -> dict:
    """The sections of a run config that replay `plan`'s network and faults on real processes:
    merge them into a run config whose env takes `len(plan.topology.nodes)` agents.

    Crashes become `pause` / `resume` (SIGSTOP / SIGCONT: the process keeps its state, as the
    simulated node does); partitions `partition` with the same groups and a `heal` of the first
    group's links at the heal time; a link spike a `link` change of every topology edge (its extra
    delay added to the mean delay, its loss combined with the link's) and back. Times are
    `at_s`, seconds after every node is ready; in the simulation consensus starts at 0, in a run
    every `consensus.period_steps` steps, so the same faults meet the engines at other moments.
    """
    settings = plan.settings
    topology = plan.topology
    base_link = plan.link.model_dump(exclude_defaults=True)
    schedule: list[dict] = []
    all_edges = [list(edge) for edge in topology.edge_list()]
    for event in plan.events:
        if isinstance(event, Crash):
            schedule.append({"at_s": round(event.at, 3), "kind": "pause", "nodes": [event.node]})
            schedule.append({"at_s": round(event.revive_at, 3), "kind": "resume", "nodes": [event.node]})
        elif isinstance(event, Partition):
            schedule.append({"at_s": round(event.at, 3), "kind": "partition", "groups": [list(group) for group in event.groups]})
            schedule.append({"at_s": round(event.heal_at, 3), "kind": "heal", "nodes": list(event.groups[0])})
        elif isinstance(event, LinkSpike):
            spiked = dict(base_link)
            spiked["delay_s"] = round(plan.link.delay_s + event.extra_delay_s, 6)
            spiked["loss"] = round(1.0 - (1.0 - plan.link.loss) * (1.0 - event.loss), 6)
            schedule.append({"at_s": round(event.at, 3), "kind": "link", "edges": all_edges, "link": spiked})
            schedule.append({"at_s": round(event.until, 3), "kind": "link", "edges": all_edges, "link": dict(base_link)})
        else:
            raise TypeError(f"unknown fault event {event!r}")
    schedule.sort(key=lambda entry: entry["at_s"])
    # What is averaged does not change the protocol; policy parameters are what every learner has.
    consensus = {"enabled": True, "what": "policy_parameters", "mode": plan.engine}
    if plan.engine == "sync":
        consensus.update(rounds=settings.rounds, round_timeout_s=settings.round_timeout_s)
    else:
        consensus.update(push_sum_period_s=settings.push_sum_period_s,
                         push_sum_duration_s=settings.push_sum_period_s * settings.push_sum_periods)
    return {
        "agents": {"count": len(topology.nodes)},
        "topology": {"kind": "edges", "edges": [list(edge) for edge in sorted(topology.edges)]},
        "protocols": {
            "membership": {"heartbeat_every_s": settings.heartbeat_every_s, "timeout_s": settings.membership_timeout_s},
            "consensus": consensus,
        },
        "network": {"links": [{"role": "peer_links", "link": base_link}]},
        "faults": {"schedule": schedule},
    }


def replay_yaml(shrunk: Shrunk) -> str:
    """`replay_sections` as YAML, headed by what failed, for `orchestrate up` (merge it into a
    run config of that many agents; see `replay_sections`)."""
    import yaml  # only here: the simulator itself needs no YAML

    plan = shrunk.plan
    header = [
        f"# Shrunk fault plan: {len(plan.events)} of {shrunk.original_events} events still fail "
        f"({shrunk.runs} simulations; seed {plan.seed}, {len(plan.topology.nodes)} agents, "
        f"{plan.topology_name}, {plan.engine}).",
        *[f"# violation: {violation}" for violation in shrunk.violations[:5]],
        "# Merge into a run config with an env for this many agents, then: orchestrate up CONFIG",
    ]
    body = yaml.safe_dump(replay_sections(plan), sort_keys=False, default_flow_style=None, width=120)
    return "\n".join(header) + "\n" + body
