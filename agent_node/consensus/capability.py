"""Consensus as a capability of the node (agent_node/capability.py).

At the lockstep step that reaches a tick of the consensus subject (subjects.py), the node holds
the observation it just received, enters `averaging`, the subject prepares its tensors, and the
consensus engine runs with the neighbours under the tick as epoch. Every agent reaches the same
step, so all average together while the env server waits for their actions. When the engine is
done (all rounds, their deadlines, or the neighbours moved on to a newer tick) the average is
adopted and the held observation released; the node asks this capability again first, so an
observation that meanwhile reached a newer tick is averaged again before it is answered.

When talking takes env steps (`protocols.talk: env_steps`) nothing is held: at the tick's step
the run begins and the agent goes on acting and learning; the shares arrive at the step starts
they are due (`on_env_step`), where the rounds' deadlines (in steps) fire too, and the average is
adopted when the run ends, its age in steps written (`consensus/decision_age_steps`); the policy
keeps what it learned meanwhile (subjects.py, `PolicyParameters`).

With `consensus.bootstrap_newcomers` an agent that joins the run past step 0 without saved
state (nothing restored: a lost checkpoint, or one set aside) asks its neighbours for their
policies before it acts (protocols/engines/bootstrap.py): with talk free in env time it holds its first
observation until every live neighbour answered or the round trip's deadline passed, then takes
their mean; talking in env steps it acts meanwhile and takes the mean when it lands. Every agent
answers a neighbour's request with its policy as it is.

With `consensus.average_at_end` the env server's last observation (never answered) starts one
more run, after the node has taken the updates it owes, and the node drains when it is over:
every agent's final checkpoint then holds the same policy.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from agent_node.capability import PEERS, Capability, NodeServices
from agent_node.consensus.session import ConsensusSession
from agent_node.consensus.subjects import ConsensusSubject, LocalWorldModel, OGMARLWorldModel, PolicyParameters
from protocols.codec import messages as m
from protocols.engines.bootstrap import BootstrapRequest, BootstrapShare, NewcomerBootstrap, answer
from protocols.engines.consensus import ConsensusDone, ConsensusShare, PushSumShare, build_consensus_engine
from protocols.engines.proximity import metropolis_from_adjacency

log = logging.getLogger("agent_node")

# How long the final average's last shares may take to leave when the node exits.
PEER_LINGER_S = 1.0


class ConsensusCapability(Capability):
    name = "consensus"
    handles = {ConsensusShare: (PEERS,), ConsensusDone: (PEERS,), PushSumShare: (PEERS,),
               BootstrapRequest: (PEERS,), BootstrapShare: (PEERS,)}
    hold_state = "averaging"
    talks_in_env_steps = True

    def __init__(self, run: Any, node: NodeServices) -> None:
        self.node = node
        self.run = run
        self.config = run.protocols.consensus
        self.in_steps = run.protocols.talk == "env_steps"
        self.session: ConsensusSession | None = None  # built with the learner (`attach`)
        self._tick: int | None = None  # the tick `wants_to_hold` found due, begun by `begin_hold`
        # A run that averages at the end sends its last shares just before the node exits: they
        # may linger a moment on close instead of being dropped (a neighbour would wait out its round).
        self.peer_linger_s = PEER_LINGER_S if self.config.average_at_end else 0.0
        self.waits_for_last_observation = self.config.average_at_end
        # A newcomer's first ask of its neighbours (consensus.bootstrap_newcomers): made at most once,
        # not by an agent that restored its saved state (`load_state_dict`); None once its mean is taken.
        round_trip = 2 * (self.config.round_timeout_steps if self.in_steps else self.config.round_timeout_s)
        self.bootstrap = NewcomerBootstrap(round_trip) if self.config.bootstrap_newcomers else None
        self.restored = False
        self._bootstrap_held: m.EnvObservation | None = None
        self._down: set[str] = set()  # neighbours membership declared down (not asked)
        self.joined_mid_run = False  # known from the welcome (`attach`)

    @property
    def held(self) -> m.EnvObservation | None:
        if self._bootstrap_held is not None:
            return self._bootstrap_held
        return self.session.held if self.session is not None else None

    def attach(self, learner, welcome, observation_space, action_space) -> None:
        engine = None
        if self.config.enabled:
            engine = build_consensus_engine(
                self.config, self.node.topology, self.node.identity.node_id, self.run.protocols.limits.max_pending_share_bytes,
                in_steps=self.in_steps,
                mixing_row=self._metropolis_row_of_this_step if self.run.topology.kind == "proximity" else None,
            )
        self.joined_mid_run = welcome.step > 0  # a restart (or a resumed run): the env server is past step 0
        if self.bootstrap is not None and not (callable(getattr(learner, "get_params", None))
                                               and callable(getattr(learner, "set_params", None))):
            self.node.fail(f"consensus.bootstrap_newcomers needs a learner with get_params/set_params (its policy), "
                           f"got {type(learner).__name__}")
        self.session = ConsensusSession(
            engine, self._subject(learner, welcome.num_copies, observation_space, action_space),
            num_agents=len(self.node.topology.nodes), average_at_end=self.config.average_at_end,
        )

    def _metropolis_row_of_this_step(self) -> tuple[dict[str, float], float] | None:
        """Links that follow positions: this agent's row of the Metropolis weights on the graph of
        the step being handled (protocols/engines/proximity.py), for a synchronous round that
        mixes now; None before the first positions (the full graph's row)."""
        adjacency = self.node.range_graph()
        if adjacency is None:
            return None
        topology = self.node.topology
        me = topology.index_of(self.node.identity.node_id)
        weights = metropolis_from_adjacency(adjacency)
        return {topology.nodes[j]: float(weights[me, j]) for j in topology.neighbours(me)}, float(weights[me, me])

    def _subject(self, learner, num_copies: int, observation_space, action_space) -> ConsensusSubject:
        """What this node averages: the OG-MARL learner's world model, a world model trained
        beside the learner, or the policy."""
        agents = self.run.agents
        if agents.learner.kind == "og_marl":
            return OGMARLWorldModel(learner, num_copies)  # it refreshes its model even without sharing
        if self.config.what == "policy_parameters":
            return PolicyParameters(learner, self.config.period_steps, keep_local_progress=self.in_steps)
        identity = self.node.identity
        subject = LocalWorldModel(
            learner, agents.world_model, observation_space, action_space,
            period_steps=self.config.period_steps, fit_transitions=agents.world_model_fit_transitions,
            average=self.config.what, seed=identity.seed("world_model"),
            sampler_seed=identity.seed("world_model_sampler"), num_copies=num_copies,
            bonus_weight=agents.world_model_bonus,
        )
        if agents.world_model_bonus > 0:
            learner.reward_bonus = subject.exploration_bonus  # (a DQN learner: checked with the config)
        return subject

    # -- holding the observation while the neighbours average

    def wants_to_hold(self, message: m.EnvObservation) -> bool:
        if message.evaluation or self.in_steps:
            return False
        if self._newcomer_at(message):
            return True
        self._tick = self.session.due_at_end(message.step) if message.run_finished else self.session.due(message.step)
        return self._tick is not None

    def begin_hold(self, message: m.EnvObservation, now: float) -> None:
        if self._newcomer_at(message):
            self._bootstrap_held = message
            self._ask_neighbours(message.step, now)
            return
        if message.run_finished:
            log.info("the run's budget is spent at step %d: averaging once more before the final checkpoint", message.step)
        self.node.send_peers(self.session.begin(message, self._tick, now))
        self._finish_if_done(now)

    def on_env_step(self, message: m.EnvObservation, delivered: list[tuple[str, Any]]) -> None:
        """Talking in env steps: the shares due now and the rounds' deadlines at this step, in
        the training clock (an evaluation's steps are not the training's time), then a tick
        reached at this step begins its run while the agent acts."""
        if message.evaluation:
            return
        step = float(message.step)
        session = self.session
        for sender, share in delivered:
            self.on_message(sender, share, step)
        if self._newcomer_at(message):  # (acting meanwhile: the mean is taken when it lands)
            self._ask_neighbours(message.step, step)
        if self.bootstrap is not None and self.bootstrap.started:
            self.bootstrap.on_timer(step)
            self._take_bootstrap_if_done(step)
        self.node.send_peers(session.on_timer(step))
        self._finish_if_done(step)
        if not message.run_finished and not session.averaging and (tick := session.due(message.step)) is not None:
            self.node.send_peers(session.begin(None, tick, step))
            self._finish_if_done(step)

    def on_newer_observation(self, message: m.EnvObservation, now: float) -> bool:
        # The session answers the newest observation when it ends (the last one, run_finished,
        # drains the node then). An evaluation observation is answered by the node meanwhile.
        if not message.evaluation:
            self.session.replace_held(message)
        return True

    def _finish_if_done(self, now: float) -> None:
        finished = self.session.finish_if_done(now)
        if finished is None:
            return
        for record in finished.records:
            if self.in_steps:  # the engine's durations are in its clock's unit: steps
                record = {key.replace("duration_s", "duration_steps"): value for key, value in record.items()}
            self.node.write_metrics(record)
        # (In steps a round that runs out ran out at a step, the same under any load.)
        if not self.in_steps and any(record.get("consensus/missing_neighbours", 0.0) > 0 for record in finished.records):
            self.node.reproducibility_broken(
                "consensus_incomplete",
                "a consensus round ended without every neighbour's share (a deadline, or a neighbour that finished or moved on)",
            )
        # Asked again first: the env server may have stepped on past a newer tick while this
        # run went on (a long run, or one this agent began late).
        if finished.held is not None:
            self.node.release(self, finished.held)

    # -- a newcomer's start from its neighbours' policies

    def _newcomer_at(self, message: m.EnvObservation) -> bool:
        """This training observation is the first of an agent that joined past step 0 without
        saved state, in a run that bootstraps newcomers."""
        return (self.bootstrap is not None and self.joined_mid_run and not self.restored and not self.bootstrap.started
                and not message.evaluation and not message.run_finished)

    def _ask_neighbours(self, joined_at: int, now: float) -> None:
        topology, me = self.node.topology, self.node.identity.node_id
        live = [topology.nodes[j] for j in topology.neighbours(topology.index_of(me)) if topology.nodes[j] not in self._down]
        log.info("joined the run at step %d without saved state: asking %s for their policies", joined_at, live or "nobody")
        self.node.send_peers(self.bootstrap.start(joined_at, live, now))
        self._take_bootstrap_if_done(now)

    def _take_bootstrap_if_done(self, now: float) -> None:
        bootstrap = self.bootstrap
        if bootstrap is None or not bootstrap.done:
            return
        self.bootstrap = None  # taken: a late share changes nothing
        if bootstrap.result is not None:
            self.node.learner.set_params(bootstrap.result)
        record = bootstrap.metrics()
        record["consensus/bootstrap_age_steps" if self.in_steps else "consensus/bootstrap_duration_s"] = now - bootstrap.started_at
        self.node.write_metrics(record)
        log.info("took the mean of %d neighbours' policies (%d did not answer)", len(bootstrap.shares), len(bootstrap.waiting))
        held, self._bootstrap_held = self._bootstrap_held, None
        if held is not None:
            self.node.release(self, held)

    # -- the loop

    def on_message(self, sender: str, message: Any, now: float) -> None:
        if isinstance(message, BootstrapRequest):
            # A neighbour's newcomer asks: our policy as it is now (whatever else we are doing).
            self.node.send_peers([(sender, answer(message, self.node.learner.get_params()))])
            return
        if isinstance(message, BootstrapShare):
            if self.bootstrap is not None:
                self.bootstrap.on_message(sender, message, now)
                self._take_bootstrap_if_done(now)
            return
        # The engine buffers a share for a round it has not started (a neighbour that began
        # averaging a moment before us) and drops stale ones.
        self.node.send_peers(self.session.on_message(sender, message, now))
        self._finish_if_done(now)

    def next_deadline(self) -> float | None:
        if self.in_steps:
            return None  # (in steps: at the step starts)
        deadlines = [d for d in (self.session.next_deadline(), self.bootstrap and self.bootstrap.next_deadline()) if d is not None]
        return min(deadlines, default=None)

    def on_timer(self, now: float) -> None:
        if self.in_steps:
            return
        if self.bootstrap is not None and self.bootstrap.started:
            self.bootstrap.on_timer(now)
            self._take_bootstrap_if_done(now)
        if self.session.averaging:
            self.node.send_peers(self.session.on_timer(now))
            self._finish_if_done(now)

    def on_neighbour_down(self, peer: str, now: float) -> None:
        now = float(self.node.step) if self.in_steps else now  # (in steps: the run's own clock)
        self._down.add(peer)
        if self.bootstrap is not None and self.bootstrap.started:
            self.bootstrap.on_neighbour_down(peer, now)
            self._take_bootstrap_if_done(now)
        self.node.send_peers(self.session.on_neighbour_down(peer, now))

    def on_neighbour_up(self, peer: str, now: float) -> None:
        now = float(self.node.step) if self.in_steps else now
        self._down.discard(peer)
        self.node.send_peers(self.session.on_neighbour_up(peer, now))

    # -- checkpoints: a restarted agent that restores one is no newcomer

    def state_dict(self) -> dict[str, Any] | None:
        return {"last_tick": self.session.last_tick} if self.session is not None else None

    def load_state_dict(self, state) -> None:
        self.restored = True

    def drain(self) -> None:
        if self.config.average_at_end:
            self._send_delayed_messages()

    def _send_delayed_messages(self) -> None:
        """Let out the messages an emulated link delay still holds (the final average's last
        shares), waiting at most PEER_LINGER_S for them to come due."""
        hub = self.node.hub
        deadline = time.monotonic() + PEER_LINGER_S
        while (due := hub.next_due()) is not None and due <= deadline:
            time.sleep(max(0.0, due - time.monotonic()))
            hub.flush_due()


def build(run: Any, node: NodeServices) -> ConsensusCapability | None:
    """In the run when it shares something, or when the learner refreshes a world model on the
    consensus schedule (OG-MARL, which does so even without sharing)."""
    if run.protocols.consensus.enabled or run.agents.learner.kind == "og_marl":
        return ConsensusCapability(run, node)
    return None
