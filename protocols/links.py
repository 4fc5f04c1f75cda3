"""Per-link network emulation: delay, jitter, loss, duplication, reordering, bandwidth, partitions.

The kernel's netem qdisc is not available on our machines, and links on one host have no delay
anyway, so Parley emulates the network itself: every outgoing message passes through the
`LinkModel` of its (sender, receiver) link, which says when each copy of it arrives, or that it
is lost. The real transport sleeps until those times before delivering; the deterministic
simulator (`protocols/netsim.py`) puts them on its virtual-clock event heap. Both use this one
model, so an experiment behaves the same in a unit test and on real sockets.

Semantics of one `decide(now, size_bytes)` call (all draws from the link's own seeded generator):

1. Bandwidth: with a cap, the link sends one message at a time: this message starts when the
   link is free and occupies it for `size_bytes / bandwidth` seconds. Lost messages use the link
   too (they were sent; the network lost them).
2. Loss: with probability `loss` the message is dropped (empty list).
3. Delay: each copy arrives `delay_s + U(-jitter_s, +jitter_s)` (clipped at 0) after it left.
   Jitter alone can already reorder messages.
4. Reordering (netem's style): with probability `reorder` the message skips the delay and
   arrives as soon as it is sent, overtaking messages still in flight. It therefore needs
   `delay_s > 0`.
5. Duplication: with probability `duplicate` a second copy is delivered, with its own delay.

Every call consumes the same number of random draws whatever the probabilities, so two runs
that differ only in, say, the loss rate see the same delays for the same messages.

`PartitionTable` is the other half of fault emulation: a set of blocked directed pairs the
transport consults before sending.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
from pydantic import BaseModel, ConfigDict, field_validator, model_validator


class LinkConfig(BaseModel):
    """Emulated properties of one directed link (or of every link, when used as a default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    delay_s: float = 0.0
    jitter_s: float = 0.0
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    bandwidth_bytes_per_s: float | None = None

    @field_validator("delay_s", "jitter_s")
    @classmethod
    def _non_negative(cls, value: float, info) -> float:
        if not value >= 0.0:  # also rejects NaN
            raise ValueError(f"{info.field_name} must be >= 0 seconds, got {value}")
        return value

    @field_validator("loss", "duplicate", "reorder")
    @classmethod
    def _probability(cls, value: float, info) -> float:
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{info.field_name} is a probability and must be in [0, 1], got {value}")
        return value

    @field_validator("bandwidth_bytes_per_s")
    @classmethod
    def _positive_bandwidth(cls, value: float | None) -> float | None:
        if value is not None and not value > 0.0:
            raise ValueError(f"bandwidth_bytes_per_s must be > 0 (or null for no cap), got {value}")
        return value

    @model_validator(mode="after")
    def _reorder_needs_delay(self) -> "LinkConfig":
        if self.reorder > 0.0 and self.delay_s == 0.0:
            raise ValueError(
                f"reorder={self.reorder} needs delay_s > 0: a reordered message overtakes delayed ones, "
                "and with delay_s = 0 there is nothing to overtake"
            )
        return self


class LinkModel:
    """The seeded, deterministic behaviour of one directed link. See the module docstring."""

    def __init__(self, config: LinkConfig, seed: int) -> None:
        if not isinstance(config, LinkConfig):
            raise TypeError(f"LinkModel needs a LinkConfig, got {type(config).__name__}")
        self.config = config
        self._rng = np.random.default_rng(seed)
        self._link_free_at = -np.inf  # end of the last transmission, for the bandwidth cap

    def decide(self, now: float, size_bytes: int) -> list[float]:
        """Delivery times (absolute, sorted) of the copies of one message sent at `now`."""
        if size_bytes < 0:
            raise ValueError(f"message size must be >= 0 bytes, got {size_bytes}")
        config = self.config
        # Fixed number of draws per call: loss, duplicate, reorder, then one jitter per copy.
        u_loss, u_duplicate, u_reorder, u_jitter_first, u_jitter_copy = self._rng.random(5)

        departure = now
        if config.bandwidth_bytes_per_s is not None:
            departure = max(now, self._link_free_at) + size_bytes / config.bandwidth_bytes_per_s
            self._link_free_at = departure

        if u_loss < config.loss:
            return []

        def arrival(u_jitter: float) -> float:
            if u_reorder < config.reorder:
                return departure
            jitter = (2.0 * u_jitter - 1.0) * config.jitter_s
            return departure + max(0.0, config.delay_s + jitter)

        times = [arrival(u_jitter_first)]
        if u_duplicate < config.duplicate:
            times.append(arrival(u_jitter_copy))
        return sorted(times)


class PartitionTable:
    """Which directed (sender, receiver) pairs may not talk right now.

    `partition(groups)` splits the listed nodes into islands (nodes in no group are not
    affected); `block`/`unblock` cut single links; `heal()` restores everything.
    """

    def __init__(self) -> None:
        self._blocked: set[tuple[str, str]] = set()

    def blocks(self, src: str, dst: str) -> bool:
        return (src, dst) in self._blocked

    def block(self, src: str, dst: str, both_directions: bool = True) -> None:
        self._blocked.add((src, dst))
        if both_directions:
            self._blocked.add((dst, src))

    def unblock(self, src: str, dst: str, both_directions: bool = True) -> None:
        self._blocked.discard((src, dst))
        if both_directions:
            self._blocked.discard((dst, src))

    def partition(self, groups: Iterable[Iterable[str]]) -> None:
        """Block every pair of nodes that lie in different groups (adds to existing blocks)."""
        groups = [list(group) for group in groups]
        owner: dict[str, int] = {}
        for index, group in enumerate(groups):
            for node in group:
                if node in owner:
                    raise ValueError(f"node {node!r} is in partition groups {owner[node]} and {index}; groups must be disjoint")
                owner[node] = index
        for src, src_group in owner.items():
            for dst, dst_group in owner.items():
                if src_group != dst_group:
                    self._blocked.add((src, dst))

    def heal(self) -> None:
        self._blocked.clear()

    @property
    def blocked_pairs(self) -> frozenset[tuple[str, str]]:
        return frozenset(self._blocked)
