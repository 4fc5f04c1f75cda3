"""Peer links whose delay counts env steps: talking takes time in the world's clock. Sans-IO.

In the lockstep every node shares the env step, so the env step is the clock of communication
too (`protocols.talk: env_steps`). The rule, for every peer message:

    a message sent while its sender handles step t of a clock reaches the receiver's protocols
    at the start of step t + d of that clock (d >= 1, drawn per message by its link), never
    earlier and never later, whatever the machines' speed or load.

A clock is the training lockstep (`"train"`), or one evaluation (`"eval:<training step>"`: its
steps count from 0, and what is still in flight when it ends is dropped). Loss, duplication and
partitions are decided in the same clock, by the sender, when the message leaves; so is the range
of a proximity topology (protocols/engines/proximity.py: a message is dropped when its sender and
receiver were farther apart than the radius at the step it was sent, or, with a path-loss model,
lost with a probability rising with their distance; with a distance delay it is due that many
steps later; with several env copies a message about copies keeps only the copies in range).
A link may limit its loss, duplication and drawn delay to some message types
(`LinkConfig.messages`: the others cross as on a clean link; `StepLinkModel` says how).

How the receiver knows what is due before it acts. The sender holds what its protocols send
while it handles step t (`StepOutbox.queue`); when it answers the env server it closes the step
(`close_step`): each link's model decides every message's fate (lost, or the step it is due at,
twice when duplicated), the surviving messages go out, and after them, on the same connection, a
small mark `PeerStepMark(clock, t, due)` listing the due step of each message it follows. A
connection keeps its order, so the receiver (`StepInbox`) pairs each mark with the messages that
came before it. The env server sends the observation of step s only once every live agent has
answered step s - 1, so by then every such neighbour has sent its mark of step s - 1: the receiver
waits for those marks (`missing_marks`; a neighbour whose action the env server defaulted at step
s - 1, or that membership declared down, sent none and is not waited for), then takes every
message due by step s (`take_due`) in one fixed order, (due step, sender, arrival). No payload
goes through the env server, and the wait is for marks already sent, so it costs microseconds.

Marks are the clock's bookkeeping, not traffic: they skip the link's loss and partitions (a lost
mark would stall the receiver), and they are sent even when no message was. A message that comes
after its step has passed (its sender was late from its own compute and the env server stepped on
without it) is delivered at the next step start and counted as late (`late`).

The deterministic simulator (protocols/sim/netsim.py's `StepNetwork`) uses these same classes.
"""

from __future__ import annotations

import math
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

from protocols.engines.engine import Outgoing
from protocols.engines.proximity import RangeLink, path_loss_seed
from protocols.net.links import LinkConfig, LinkCounters, LinkModel
from protocols.codec.messages import MESSAGE_TYPES, register_message
from protocols.seeds import derive_seed

TRAINING_CLOCK = "train"


def evaluation_clock(training_step: int) -> str:
    """The clock of the evaluation that runs after training step `training_step`."""
    return f"eval:{training_step}"


@register_message("peer.step_mark")
@dataclass(frozen=True)
class PeerStepMark:
    """The sender handled step `step` of `clock`: the messages it sent on this link since its last
    mark are due at these steps, in the order they were sent."""

    clock: str
    step: int
    due: list[int]


def peer_message_types() -> list[str]:
    """The message types a peer link carries, which `LinkConfig.messages` may name: those of
    Parley's protocol engines and of every peer protocol loaded (agents.protocols), not the
    control plane's, the env's, membership's heartbeats (none talks in env steps) or the marks."""
    # Imported here only to register their messages (they are not this module's dependencies).
    from protocols.engines import bootstrap, consensus, flooding, hindsight, negotiation, supervision, team_negotiation  # noqa: F401

    return sorted(name for name, cls in MESSAGE_TYPES.items()
                  if not cls.__module__.startswith("protocols.codec.") and cls is not PeerStepMark)


def step_link_seed(run_seed: int, src: str, dst: str) -> int:
    """The seed of the env-step link src -> dst: the same in every process and in the simulator."""
    return derive_seed(run_seed, 0, f"step_link/{src}->{dst}")


class StepLinkModel:
    """One directed env-step link: for a message sent at step t, the steps its copies are due at
    (none: lost). The draws are `LinkModel`'s, with the step fields in place of the seconds ones,
    so a distribution, Gilbert–Elliott loss and duplication behave as they do in wall time.

    With `messages` (LinkConfig), only messages of those types are drawn for; any other is due at
    the next step and takes no draws. So the named messages see exactly the fates they would see
    on this link if they were the only traffic: which of them are lost does not depend on how
    many messages of other types happen to be sent between them (a number the learning changes
    from run to run), and a Gilbert–Elliott chain steps once per named message, so its bursts
    are counted in named messages. The other choice, drawing for every message and ignoring the
    draw for the others, would keep the named messages' draws aligned with an unfiltered link
    only while both runs send the same messages, which ends at the first loss that differs."""

    def __init__(self, config: LinkConfig, seed: int) -> None:
        self.config = config
        self._model = LinkModel(config.in_steps_as_seconds(), seed)
        self.by_type: dict[str, LinkCounters] = defaultdict(LinkCounters)  # msg_type -> its messages' fates
        self.passed_clean = 0  # messages of types outside `config.messages`: due next step, no draws

    @property
    def counters(self) -> LinkCounters:
        return self._model.counters

    def faults_apply_to(self, msg_type: str) -> bool:
        return self.config.messages is None or msg_type in self.config.messages

    def decide(self, step: int, msg_type: str = "") -> list[int]:
        """The due steps of the copies of one message of type `msg_type` sent at `step`."""
        if self.faults_apply_to(msg_type):
            arrivals = self._model.decide(float(step), 0)
            # Rounded to whole steps (half up), and never before the next step.
            due = [step + max(1, math.floor(arrival - step + 0.5)) for arrival in arrivals]
        else:
            self._model.counters.sent += 1  # offered to the link like any message, and not lost
            self.passed_clean += 1
            due = [step + 1]
        of_type = self.by_type[msg_type]
        of_type.sent += 1
        of_type.dropped_loss += not due  # (in steps the link's model loses only to `loss`)
        of_type.duplicated += len(due) > 1
        return due

    def carry_on_from(self, previous: StepLinkModel) -> None:
        """Take over `previous`'s random stream and counters (a link change mid-run)."""
        self._model._rng, self._model.counters = previous._model._rng, previous._model.counters
        self.by_type, self.passed_clean = previous.by_type, previous.passed_clean


class StepOutbox:
    """The sender's side: holds what its protocols send during a step, decides each message's
    fate when the step closes, and follows the messages with each link's mark."""

    def __init__(self, src: str, run_seed: int, config_for: Callable[[str, str], LinkConfig],
                 blocked: Callable[[str, str], bool] = lambda src, dst: False,
                 range_link: Callable[[str], RangeLink | None] | None = None) -> None:
        self.src = src
        self.run_seed = run_seed
        self._config_for = config_for  # (src, dst) -> LinkConfig; a link without delay_steps counts 1 step
        self._blocked = blocked  # (src, dst) -> an emulated partition cuts the link now
        # dst -> at the step being closed, None when out of range, else what the positions make of
        # the link: path loss, distance delay, and per copy with several env copies
        # (topology.kind: proximity, protocols/engines/proximity.py); None: links that do not
        # follow positions.
        self._range_link = range_link
        self._models: dict[str, StepLinkModel] = {}
        self._path_loss_draws: dict[str, Any] = {}  # dst -> its seeded stream (a uniform per message, or per copy, in range)
        self._queued: dict[str, list[Any]] = defaultdict(list)
        self.dropped_range: dict[str, int] = defaultdict(int)  # dst -> messages out of range when sent
        self.dropped_path_loss: dict[str, int] = defaultdict(int)  # dst -> messages the distance lost
        self.copies_cut: dict[str, int] = defaultdict(int)  # dst -> copies cut out of messages sent (several env copies)
        self._copies_seen = False  # a link had several copies' positions: write `copies_cut`

    def model_for(self, dst: str) -> StepLinkModel:
        model = self._models.get(dst)
        if model is None:
            config = self._config_for(self.src, dst).counting_steps()
            model = self._models[dst] = StepLinkModel(config, step_link_seed(self.run_seed, self.src, dst))
        return model

    def set_config(self, dst: str, config: LinkConfig) -> None:
        """Change the link to `dst` from the next step on (a link change of the fault schedule);
        its counters and its random stream carry over."""
        replacement = StepLinkModel(config.counting_steps(), 0)
        replacement.carry_on_from(self.model_for(dst))
        self._models[dst] = replacement

    def queue(self, outgoing: Iterable[Outgoing]) -> None:
        for destination, message in outgoing:
            self._queued[destination].append(message)

    def close_step(self, clock: str, step: int, neighbours: Iterable[str]) -> list[Outgoing]:
        """What to send now that this node answers step `step` of `clock`: to each neighbour (in
        order), the queued messages that survive their link, each copy once, then the mark."""
        outgoing: list[Outgoing] = []
        for destination in sorted(set(neighbours) | set(self._queued)):
            model = self.model_for(destination)
            due: list[int] = []
            link = RangeLink(0.0, 0) if self._range_link is None else self._range_link(destination)
            # Per copy only in the training clock: an evaluation's copies are not the training
            # world's, whose positions gate it (protocols/engines/proximity.py).
            per_copy = link is not None and link.copy_loss is not None and clock == TRAINING_CLOCK
            self._copies_seen = self._copies_seen or (link is not None and link.copy_loss is not None)
            for message in self._queued.pop(destination, []):
                if self._blocked(self.src, destination):
                    model.counters.sent += 1
                    model.counters.dropped_partition += 1
                    continue
                # The geometry before the link's draws, from streams of its own: the link's
                # random stream ignores where the agents are.
                if link is None:
                    model.counters.sent += 1
                    self.dropped_range[destination] += 1
                    continue
                extra_delay = link.extra_delay_steps
                if per_copy and getattr(message, "is_about_copies", lambda: False)():
                    message, extra_delay, lost = self._keep_copies(destination, message, link)
                    if message is None:
                        model.counters.sent += 1
                        (self.dropped_path_loss if lost else self.dropped_range)[destination] += 1
                        continue
                elif link.loss > 0.0 and self._path_loss_draw(destination) < link.loss:
                    model.counters.sent += 1
                    self.dropped_path_loss[destination] += 1
                    continue
                for due_step in model.decide(step, _msg_type(message)):
                    due.append(due_step + extra_delay)
                    outgoing.append((destination, message))
                    model.counters.delivered += 1
            outgoing.append((destination, PeerStepMark(clock, step, due)))
        return outgoing

    def _keep_copies(self, dst: str, message: Any, link: RangeLink) -> tuple[Any | None, int, bool]:
        """A message about several env copies: the copies in range whose path loss spares them
        (one draw per copy in range with a loss, in copy order), the delay of the farthest copy
        kept, and whether the path loss lost a copy (None when no copy is left)."""
        in_range = ~np.isnan(link.copy_loss)
        keep = in_range.copy()
        for copy in np.flatnonzero(in_range):
            loss = float(link.copy_loss[copy])
            if loss > 0.0 and self._path_loss_draw(dst) < loss:
                keep[copy] = False
        lost = bool((in_range & ~keep).any())
        restricted = message.restricted_to_copies(keep) if keep.any() else None
        if restricted is None:
            return None, 0, lost
        self.copies_cut[dst] += int((~keep).sum())
        return restricted, int(link.copy_extra_delay_steps[keep].max()), lost

    def _path_loss_draw(self, dst: str) -> float:
        draws = self._path_loss_draws.get(dst)
        if draws is None:
            draws = self._path_loss_draws[dst] = np.random.default_rng(path_loss_seed(self.run_seed, self.src, dst))
        return float(draws.random())

    def metrics(self) -> dict[str, float]:
        """`talk/SRC_to_DST/<counter>`: each env-step link's messages in the step clock."""
        rows: dict[str, float] = {}
        for dst, model in sorted(self._models.items()):
            counters, prefix = model.counters, f"talk/{self.src}_to_{dst}/"
            rows[prefix + "sent"] = counters.sent
            rows[prefix + "delivered"] = counters.delivered
            rows[prefix + "dropped_loss"] = counters.dropped_loss
            rows[prefix + "dropped_partition"] = counters.dropped_partition
            rows[prefix + "duplicated"] = counters.duplicated
            if self._range_link is not None:
                rows[prefix + "dropped_range"] = self.dropped_range[dst]
                rows[prefix + "dropped_path_loss"] = self.dropped_path_loss[dst]
            if self._copies_seen:
                rows[prefix + "copies_cut"] = self.copies_cut[dst]
            if model.config.messages is not None or model.passed_clean:
                rows[prefix + "passed_clean"] = model.passed_clean
            # Per message type, in a namespace of its own: sums over `talk/` stay per link.
            for msg_type, of_type in sorted(model.by_type.items()):
                by_type = f"talk_by_type/{self.src}_to_{dst}/{msg_type}/"
                rows[by_type + "sent"] = of_type.sent
                rows[by_type + "dropped_loss"] = of_type.dropped_loss
                rows[by_type + "duplicated"] = of_type.duplicated
        return rows


def _msg_type(message: Any) -> str:
    """A registered message's `msg_type`; the class name of anything else (a test's string)."""
    return getattr(message, "MSG_TYPE", type(message).__name__)


@dataclass(order=True)
class _Due:
    due: int
    sender: str
    arrival: int
    message: Any = field(compare=False)


class StepInbox:
    """The receiver's side: pairs each neighbour's messages with its marks, and hands the
    protocols every message due by a step in one fixed order. See the module docstring."""

    MAX_UNMARKED = 10_000  # messages from one sender waiting for their mark (a sender that died keeps none)

    def __init__(self) -> None:
        self._unmarked: dict[str, deque[Any]] = defaultdict(deque)
        self._due: dict[str, list[_Due]] = defaultdict(list)  # clock -> messages waiting for their step
        self._latest_mark: dict[tuple[str, str], int] = {}  # (sender, clock) -> newest step marked
        self._arrivals = 0
        self.delivered = 0
        self.late = 0  # delivered after their due step (their mark came after the step passed)
        self.unpaired = 0  # messages whose mark never came, or a mark naming more messages than came
        self.dropped_with_clock = 0  # still in flight when their evaluation ended

    def on_message(self, sender: str, message: Any) -> None:
        """A payload message from `sender`: it waits for the mark that follows it."""
        unmarked = self._unmarked[sender]
        unmarked.append(message)
        if len(unmarked) > self.MAX_UNMARKED:
            unmarked.popleft()
            self.unpaired += 1

    def on_mark(self, sender: str, mark: PeerStepMark) -> None:
        """`sender`'s mark: the messages before it are due at `mark.due`, in order. A sender that
        restarted may have left messages of its old life without a mark: the newest
        `len(mark.due)` are this mark's, older ones are dropped."""
        unmarked = self._unmarked[sender]
        while len(unmarked) > len(mark.due):
            unmarked.popleft()
            self.unpaired += 1
        if len(unmarked) < len(mark.due):
            self.unpaired += len(mark.due) - len(unmarked)  # lost on a real network (none emulated are sent)
        offset = len(mark.due) - len(unmarked)
        for due_step, message in zip(mark.due[offset:], unmarked):
            self._arrivals += 1
            self._due[mark.clock].append(_Due(due_step, sender, self._arrivals, message))
        unmarked.clear()
        key = (sender, mark.clock)
        self._latest_mark[key] = max(mark.step, self._latest_mark.get(key, mark.step))

    def missing_marks(self, clock: str, step: int, expected: Iterable[str]) -> list[str]:
        """The senders among `expected` whose mark of step `step - 1` of `clock` has not come."""
        return sorted(sender for sender in expected if self._latest_mark.get((sender, clock), -1) < step - 1)

    def take_due(self, clock: str, step: int) -> list[tuple[str, Any]]:
        """Every message of `clock` due by step `step`, in (due step, sender, arrival) order."""
        waiting = self._due.get(clock)
        if not waiting:
            return []
        ready = sorted(entry for entry in waiting if entry.due <= step)
        if not ready:
            return []
        self._due[clock] = [entry for entry in waiting if entry.due > step]
        self.delivered += len(ready)
        self.late += sum(entry.due < step for entry in ready)
        return [(entry.sender, entry.message) for entry in ready]

    def end_clocks_except(self, clock: str) -> None:
        """Only `clock` runs now: messages still in flight in an ended evaluation are dropped."""
        for other in [name for name in self._due if name != clock and name != TRAINING_CLOCK]:
            self.dropped_with_clock += len(self._due.pop(other))

    def in_flight(self) -> int:
        return sum(len(entries) for entries in self._due.values())

    def metrics(self) -> dict[str, float]:
        return {
            "talk/delivered": float(self.delivered),
            "talk/late": float(self.late),
            "talk/unpaired": float(self.unpaired),
            "talk/dropped_with_clock": float(self.dropped_with_clock),
        }  # (not what is in flight: how much of it has arrived at a given moment is timing)
