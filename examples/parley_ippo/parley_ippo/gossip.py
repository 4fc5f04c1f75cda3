"""Return gossip: a small peer protocol, as a Parley plugin (docs/guide/your_own.md).

Every `every_steps` lockstep steps, each agent tells its topology neighbours the mean return of
its last `window` episodes, and listens for theirs. A round ends when every live neighbour was
heard, or `timeout_s` after it began (`timeout_steps` env steps when peer messages take env
steps: `protocols.talk: env_steps`, where the node's time is the step). The agent then logs what it heard (`gossip/*` metrics)
and, with `entropy_boost > 0`, adapts its learner: while its own mean trails the best of its
neighbourhood it explores more, with the learner's entropy coefficient raised to
`base * (1 + entropy_boost)`; otherwise the coefficient returns to the base it started from.

It is a sans-IO engine (Parley's `protocols/engines/engine.py` interface): it never touches a socket or a
clock. The agent node drives it in a run, `protocols/sim/netsim.py` in a simulation
(tests/unit/test_peer_protocols.py), through the same methods.

    agents:
      protocols:
        - kind: parley_ippo.gossip:ReturnGossip      # or `return_gossip`, once installed
          every_steps: 50
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import Field

from agent_node.peer_protocols import LearnerView, ProtocolSpec
from agent_node.plugins import PluginConfig
from protocols.codec.messages import register_message


# The one message of the protocol. Registered, it is a wire message like Parley's own: the codec
# checks its fields' types on receipt, and the envelope around it is signed.
@register_message("parley_ippo.mean_return")
@dataclass(frozen=True)
class MeanReturn:
    """A neighbour's mean return over its last episodes, for round `round`."""

    round: int  # lockstep step // every_steps: the same number at every agent for one round
    mean_return: float
    episodes: int  # how many episodes the mean is over


class GossipConfig(PluginConfig):
    every_steps: int = Field(50, gt=0)  # lockstep steps between two rounds
    window: int = Field(20, gt=0)  # episodes in the mean an agent tells
    timeout_s: float = Field(2.0, gt=0)  # a round ends this long after it began, whoever was heard
    timeout_steps: int = Field(5, gt=0)  # the same in env steps, when talking takes them
    # 0: only log what the neighbourhood says; > 0: raise the learner's `entropy_coef` by this
    # fraction while this agent trails its best neighbour (the learner must have `entropy_coef`).
    entropy_boost: float = Field(0.0, ge=0)


@dataclass(frozen=True)
class Round:
    """What one round gave: this agent's mean, and each neighbour's that arrived in time."""

    round: int
    own: float
    heard: dict[str, float]


class ReturnGossip:
    """One agent's side of the return gossip (see the module docstring)."""

    config_model: ClassVar[type[GossipConfig]] = GossipConfig
    message_types: ClassVar[tuple[type, ...]] = (MeanReturn,)
    talks_in_env_steps: ClassVar[bool] = True  # its only deadline has a setting in steps

    def __init__(self, config: GossipConfig, spec: ProtocolSpec) -> None:
        self.config = config
        self.timeout = config.timeout_steps if spec.clock == "env_steps" else config.timeout_s
        self.alive = set(spec.neighbours)  # membership tells us who goes down and comes back
        self.recent: deque[float] = deque(maxlen=config.window)
        self.last_round = -1
        self.current: Round | None = None  # the round in progress, or the last one
        self.deadline: float | None = None  # while a round is in progress
        self.early: dict[int, dict[str, float]] = {}  # rounds a neighbour began before we did
        self.base_entropy: float | None = None
        self.entropy_coef = float("nan")
        self.rounds = 0

    # ------------------------------------------------------------------ the learner hook

    def request(self, view: LearnerView) -> tuple[int, float] | None:
        """Start a round at the first observation of each `every_steps` window, once this agent
        has finished an episode (a mean over nothing says nothing)."""
        self.recent.extend(view.episode_returns)
        round_number = view.step // self.config.every_steps
        if round_number <= self.last_round or not self.recent:
            return None
        self.last_round = round_number
        return round_number, sum(self.recent) / len(self.recent)

    def give(self, learner: Any, result: Round) -> None:
        if self.config.entropy_boost == 0:
            return
        if not hasattr(learner, "entropy_coef"):
            raise TypeError(f"entropy_boost needs a learner with an `entropy_coef` attribute, got {type(learner).__name__}")
        if self.base_entropy is None:
            self.base_entropy = float(learner.entropy_coef)
        trailing = bool(result.heard) and max(result.heard.values()) > result.own
        learner.entropy_coef = self.base_entropy * (1 + self.config.entropy_boost) if trailing else self.base_entropy
        self.entropy_coef = learner.entropy_coef

    # ------------------------------------------------------------------ the engine

    def start(self, request: tuple[int, float], now: float) -> list[tuple[str, object]]:
        round_number, own = request
        heard = self.early.pop(round_number, {})
        self.early = {r: values for r, values in self.early.items() if r > round_number}  # older rounds are over
        self.current = Round(round_number, own, heard)
        self.deadline = now + self.timeout
        self.rounds += 1
        message = MeanReturn(round=round_number, mean_return=own, episodes=len(self.recent))
        self._check_done()  # (every live neighbour spoke first, or none is alive)
        return [(neighbour, message) for neighbour in sorted(self.alive)]

    def on_message(self, sender: str, message: MeanReturn, now: float) -> list[tuple[str, object]]:
        if self.current is not None and message.round == self.current.round:
            if self.deadline is not None:  # (one that comes after the round ended is dropped)
                self.current.heard[sender] = message.mean_return
        elif self.current is None or message.round > self.current.round:
            self.early.setdefault(message.round, {})[sender] = message.mean_return
        self._check_done()
        return []

    def on_timer(self, now: float) -> list[tuple[str, object]]:
        if self.deadline is not None and now >= self.deadline:
            self.deadline = None
        return []

    def on_neighbour_down(self, node: str, now: float) -> list[tuple[str, object]]:
        self.alive.discard(node)
        self._check_done()
        return []

    def on_neighbour_up(self, node: str, now: float) -> list[tuple[str, object]]:
        self.alive.add(node)
        return []

    def next_deadline(self) -> float | None:
        return self.deadline

    def _check_done(self) -> None:
        if self.deadline is not None and self.current is not None and self.alive <= set(self.current.heard):
            self.deadline = None

    @property
    def done(self) -> bool:
        return self.current is not None and self.deadline is None

    @property
    def result(self) -> Round:
        if not self.done:
            raise RuntimeError("no round of return gossip has finished yet")
        return self.current

    def metrics(self) -> dict[str, float]:
        if self.current is None:
            return {}
        heard = self.current.heard
        record = {"gossip/own_return": self.current.own, "gossip/heard": float(len(heard)),
                  "gossip/rounds": float(self.rounds)}
        if heard:
            record["gossip/neighbour_mean"] = sum(heard.values()) / len(heard)
            record["gossip/neighbour_best"] = max(heard.values())
        if self.base_entropy is not None:
            record["gossip/entropy_coef"] = self.entropy_coef
        return record
