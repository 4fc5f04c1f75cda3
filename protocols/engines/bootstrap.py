"""What neighbours give a newcomer: an agent that joins a run mid-way without saved state (a
restart whose checkpoint was lost, `run.on_corrupt_state: start_fresh`) asks its neighbours for
the parameters the team averages, and starts from their mean instead of from scratch.

The newcomer sends `BootstrapRequest` to every live neighbour; each answers at once with a
`BootstrapShare` of its current parameters (the neighbour's side is one function, `answer`).
The newcomer's `NewcomerBootstrap` collects the shares until every live neighbour answered or
its deadline passed (a round trip: twice the consensus round timeout, in the engine's clock:
seconds, or env steps when talking takes them), then `result` is the plain mean of the shares
that came (None when none did: the newcomer keeps its own fresh parameters). A neighbour that
goes down meanwhile is not waited for. Shares whose tensors do not match the first one's names
and shapes are dropped and counted.

Sans-IO like the other engines (protocols/engines/engine.py): messages and time go in, `(neighbour,
message)` pairs come out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from protocols.engines.engine import Outgoing
from protocols.codec.messages import register_message


@register_message("consensus.bootstrap_request")
@dataclass(frozen=True)
class BootstrapRequest:
    """A newcomer asks for the parameters the team averages; `joined_at` (the env step it joined
    at) names the request, so a late answer to an older one is told apart."""

    joined_at: int


@register_message("consensus.bootstrap_share")
@dataclass(frozen=True)
class BootstrapShare:
    """A neighbour's current parameters, in answer to the request of `joined_at`."""

    joined_at: int
    tensors: dict[str, np.ndarray]


def answer(request: BootstrapRequest, tensors: Mapping[str, np.ndarray]) -> BootstrapShare:
    """A neighbour's side: its parameters as they are now."""
    return BootstrapShare(request.joined_at, {name: np.asarray(value) for name, value in tensors.items()})


class NewcomerBootstrap:
    """The newcomer's side: one request to the live neighbours, the mean of what comes back."""

    def __init__(self, timeout: float) -> None:
        if not timeout > 0:
            raise ValueError(f"the bootstrap's timeout must be > 0, got {timeout}")
        self.timeout = timeout
        self.joined_at: int | None = None
        self.waiting: set[str] = set()
        self.shares: dict[str, dict[str, np.ndarray]] = {}
        self.started_at = 0.0
        self.deadline: float | None = None
        self.rejected = 0
        self.finished_at: float | None = None

    def start(self, joined_at: int, neighbours: Sequence[str], now: float) -> list[Outgoing]:
        self.joined_at, self.started_at = joined_at, now
        self.waiting = set(neighbours)
        self.deadline = now + self.timeout
        self._finish_if_heard(now)
        return [(neighbour, BootstrapRequest(joined_at)) for neighbour in sorted(neighbours)]

    def on_message(self, sender: str, message: BootstrapShare, now: float) -> list[Outgoing]:
        if self.done or message.joined_at != self.joined_at or sender not in self.waiting:
            return []
        first = next(iter(self.shares.values()), None)
        if first is not None and (first.keys() != message.tensors.keys()
                                  or any(first[name].shape != np.shape(value) for name, value in message.tensors.items())):
            self.rejected += 1
        else:
            self.shares[sender] = {name: np.asarray(value) for name, value in message.tensors.items()}
        self.waiting.discard(sender)
        self._finish_if_heard(now)
        return []

    def on_timer(self, now: float) -> list[Outgoing]:
        if not self.done and self.deadline is not None and now >= self.deadline:
            self.finished_at = now
        return []

    def on_neighbour_down(self, node: str, now: float) -> list[Outgoing]:
        if not self.done:
            self.waiting.discard(node)
            self._finish_if_heard(now)
        return []

    def next_deadline(self) -> float | None:
        return None if self.done or self.deadline is None else self.deadline

    @property
    def started(self) -> bool:
        return self.joined_at is not None

    @property
    def done(self) -> bool:
        return self.finished_at is not None

    @property
    def result(self) -> dict[str, np.ndarray] | None:
        """The mean of the shares that came (None: none came)."""
        if not self.shares:
            return None
        shares = list(self.shares.values())
        return {name: np.mean([share[name] for share in shares], axis=0).astype(shares[0][name].dtype) for name in shares[0]}

    def metrics(self) -> dict[str, float]:
        return {
            "consensus/bootstrap_shares": float(len(self.shares)),
            "consensus/bootstrap_missing": float(len(self.waiting)),
            "consensus/bootstrap_rejected": float(self.rejected),
        }

    def _finish_if_heard(self, now: float) -> None:
        if self.started and not self.waiting and not self.done:
            self.finished_at = now
