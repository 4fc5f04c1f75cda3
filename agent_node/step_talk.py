"""The agent node's side of talking in env steps (`protocols.talk: env_steps`).

The rule and the marks are protocols/engines/step_links.py's; this part applies them to one node, which
calls it at four points of its loop:

- `queue`: what its capabilities send to neighbours waits, and `close_step`, when the node answers
  a step, lets it out, each message's fate decided in the step clock, the link's mark after it;
- `holds`: a neighbour's mark, or a message for a capability that talks in env steps, is kept
  until the step it is due at;
- `park` / `take_parked`: an observation is handled only once the marks of the step before it are
  here, from every neighbour that acted then (the env server did not default its action) and that
  membership has not declared down, and only when this node handled that step too (a node that
  just started or restarted cannot know what was sent before it was there);
- `hand_out`: once the transition the observation closes is recorded, each capability gets the
  messages due by its step, in their fixed order (`on_env_step`).

A mark that does not come (a real network cut, a neighbour frozen after it answered) is waited
for at most `mark_timeout_s`; then the node goes on without it and says so (`talk/marks_missed`).

Links that follow positions (topology.kind: proximity, protocols/engines/proximity.py): each
training observation carries every agent's position; `begin_step` takes them, `close_step` lets a
message out only to a neighbour in range at that step, and `hand_out`, before the step's messages,
tells the capabilities which neighbours left the range (down) or came back (up), so no protocol
waits for one it cannot hear and a run that begins at a step begins on that step's graph. Marks
still go to every neighbour: they are the clock's bookkeeping. With several env copies, a
neighbour is in range while it is in range in some copy, and a message about copies keeps only
the copies in range (the rules: protocols/engines/proximity.py).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Iterable, Mapping

from protocols.codec import messages as m
from protocols.engines.engine import Outgoing
from protocols.net.links import LinkConfig
from protocols.engines.proximity import ProximityNeighbours
from protocols.engines.step_links import TRAINING_CLOCK, PeerStepMark, StepInbox, StepOutbox, evaluation_clock

log = logging.getLogger("agent_node.step_talk")


class EnvStepTalk:
    def __init__(self, node_id: str, neighbours: Iterable[str], run_seed: int,
                 config_for: Callable[[str, str], LinkConfig], blocked: Callable[[str, str], bool],
                 mark_timeout_s: float, proximity: ProximityNeighbours | None = None) -> None:
        self.node_id = node_id
        self.neighbours = sorted(neighbours)
        self.proximity = proximity  # topology.kind proximity: who is in range at the step handled
        self.outbox = StepOutbox(node_id, run_seed, config_for, blocked,
                                 range_link=None if proximity is None else proximity.link)
        self._told_out_of_range: set[str] = set()  # the neighbours the capabilities were told left the range
        self._declared_down: Callable[[str], bool] = lambda peer: False  # membership's, from take_parked
        self.inbox = StepInbox()
        self.mark_timeout_s = mark_timeout_s
        self.env_agent_of: dict[str, str] = {}  # neighbour node id -> the env agent it drives (from the welcome)
        self._last_handled: dict[str, int] = {}  # clock -> the last step this node handled in it
        self.parked: m.EnvObservation | None = None  # an observation waiting for marks
        self.parked_since = 0.0
        self.due_now: list[tuple[str, Any]] | None = None  # what is due at the step being handled
        self.marks_missed = 0

    @classmethod
    def for_node(cls, node) -> EnvStepTalk:
        """The part for an agent node (agent_node/node.py): its neighbours, its run's links in
        steps, its emulated partitions; a missing mark is waited for a membership timeout."""
        topology, identity = node.topology, node.identity
        me = topology.index_of(identity.node_id)
        spec = node.run_config.topology
        proximity = (ProximityNeighbours(topology.nodes, identity.node_id, spec.radius, spec.path_loss,
                                         delay_steps_per_unit=spec.delay_steps_per_unit)
                     if spec.kind == "proximity" else None)
        return cls(identity.node_id, [topology.nodes[j] for j in topology.neighbours(me)], identity.run_seed,
                   config_for=node.run_config.network.link_in_steps_between, blocked=node.hub.links.partitions.blocks,
                   mark_timeout_s=node.membership.timeout_s, proximity=proximity)

    @staticmethod
    def clock_of(message: m.EnvObservation, training_step: int) -> str:
        return evaluation_clock(training_step) if message.evaluation else TRAINING_CLOCK

    def know_env_agents(self, node_ids: list[str], possible_agents: list[str]) -> None:
        """Agent node i drives the env's i-th agent (the welcome's `possible_agents`)."""
        self.env_agent_of = dict(zip(node_ids, possible_agents))

    # ------------------------------------------------------------------ sending

    def queue(self, outgoing: Iterable[Outgoing]) -> None:
        self.outbox.queue(outgoing)

    def close_step(self, clock: str, step: int) -> list[Outgoing]:
        return self.outbox.close_step(clock, step, self.neighbours)

    # ------------------------------------------------------------------ receiving

    def holds(self, sender: str, message: Any, dispatch: Mapping[type, tuple[Any, Any]]) -> bool:
        """A neighbour's message: a mark, or one for a capability that talks in env steps, is
        held for its step (True); any other goes on to the node's dispatch (False)."""
        if isinstance(message, PeerStepMark):
            self.inbox.on_mark(sender, message)
            return True
        owner = dispatch.get(type(message))
        if owner is None or not getattr(owner[1], "talks_in_env_steps", False):
            return False
        self.inbox.on_message(sender, message)
        return True

    def park(self, message: m.EnvObservation, now: float) -> None:
        """An observation to handle once its step's marks are here."""
        self.parked, self.parked_since = message, now

    def next_deadline(self) -> float | None:
        return None if self.parked is None else self.parked_since + self.mark_timeout_s

    def waited_out(self, now: float) -> bool:
        return self.parked is not None and now - self.parked_since > self.mark_timeout_s

    def take_parked(self, training_step: int, down: Callable[[str], bool],
                    waited_out: bool) -> tuple[m.EnvObservation, list[str]] | None:
        """The parked observation and the neighbours whose marks it goes without, once every mark
        it waits for came (or `waited_out`); None while it must wait. The messages due at its
        step are kept for `hand_out`."""
        message = self.parked
        if message is None:
            return None
        self._declared_down = down
        clock = self.clock_of(message, training_step)
        missing = self.missing_marks(message, clock, down)
        if missing and not waited_out:
            return None
        if missing:
            self.marks_missed += len(missing)
            log.warning("step %d: no mark of the step before from %s; going on without it", message.step, missing)
        self.parked = None
        self.due_now = self.begin_step(message, clock)
        return message, missing

    def hand_out(self, message: m.EnvObservation, capabilities: Iterable[Any], dispatch: Mapping[type, tuple[Any, Any]]) -> None:
        """Hand each capability that talks in env steps the messages due at `message`'s step, in
        delivery order (the node calls it once the transition the observation closes is recorded:
        it was acted on before they landed)."""
        if self.due_now is None:
            return
        delivered, self.due_now = self.due_now, None
        capabilities = list(capabilities)
        self._tell_range_changes(message.step, capabilities)
        for capability in capabilities:
            if capability.talks_in_env_steps:
                mine = [(sender, item) for sender, item in delivered if dispatch.get(type(item), (None, None))[1] is capability]
                capability.on_env_step(message, mine)

    def _tell_range_changes(self, step: int, capabilities: list[Any]) -> None:
        """Links that follow positions: the neighbours that left the range since the capabilities
        were last told are down to them, those back in range up, before the step's messages (a
        message due now was sent in range; a run that begins at this step begins on this step's graph)."""
        if self.proximity is None:
            return
        out_now = {peer for peer in self.neighbours if self.proximity.out_of_range(peer)}
        left, back = sorted(out_now - self._told_out_of_range), sorted(self._told_out_of_range - out_now)
        self._told_out_of_range = out_now
        now = time.monotonic()  # (capabilities that talk in steps read the step themselves)
        for peer in left:
            if not self._declared_down(peer):  # (one membership declared down is down already)
                log.info("step %d: neighbour %s is out of range", step, peer)
                for capability in capabilities:
                    capability.on_neighbour_down(peer, now)
        for peer in back:
            if not self._declared_down(peer):  # (it comes up when membership hears it again)
                log.info("step %d: neighbour %s is in range again", step, peer)
                for capability in capabilities:
                    capability.on_neighbour_up(peer, now)

    def out_of_range(self, peer: str) -> bool:
        """Membership's up and down of this neighbour are not the protocols' news now: it is out
        of range, so down to them whatever its liveness, until it comes back in range."""
        return self.proximity is not None and self.proximity.out_of_range(peer)

    def graph_record(self) -> dict[str, float]:
        """The graph of the step handled, for the metrics (means over each metrics period):
        `proximity/edges` and `proximity/components` of the whole team, `proximity/in_range`
        this node's neighbours in range; with several env copies these are of the union of the
        copies' graphs (what a message about no copy follows), and `proximity/edges_per_copy` is
        the mean of each copy's own edges."""
        if self.proximity is None or (summary := self.proximity.summary()) is None:
            return {}
        in_range = sum(self.proximity.reachable(n) for n in self.neighbours)
        record = {"proximity/edges": float(summary.edges), "proximity/components": float(summary.components),
                  "proximity/in_range": float(in_range)}
        if self.proximity.num_copies > 1:
            record["proximity/edges_per_copy"] = self.proximity.edges_per_copy()
        return record

    def missing_marks(self, message: m.EnvObservation, clock: str, down: Callable[[str], bool]) -> list[str]:
        """The neighbours whose mark of the step before `message` this node must still wait for."""
        if self._last_handled.get(clock) != message.step - 1:
            return []
        skipped = set(message.missing)
        expected = [n for n in self.neighbours if self.env_agent_of.get(n) not in skipped and not down(n)]
        return self.inbox.missing_marks(clock, message.step, expected)

    def begin_step(self, message: m.EnvObservation, clock: str) -> list[tuple[str, Any]]:
        """The node handles `message` now: the peer messages due by its step, in delivery order."""
        self._last_handled[clock] = message.step
        self.inbox.end_clocks_except(clock)
        if self.proximity is not None and message.positions is not None and not message.evaluation:
            # (an evaluation's messages go by the training world's last positions: it stands still)
            self.proximity.update(message.positions)
        return self.inbox.take_due(clock, message.step)

    def metrics(self) -> dict[str, float]:
        rows = {**self.inbox.metrics(), **self.outbox.metrics(), "talk/marks_missed": float(self.marks_missed)}
        if self.proximity is not None:
            rows["proximity/range_changes"] = float(self.proximity.changes)
        return rows
