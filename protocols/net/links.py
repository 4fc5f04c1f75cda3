"""Per-link network emulation: delay distributions, jitter, loss, duplication, reordering,
a bandwidth cap, partitions; and the per-link counters both transports report.

The kernel's netem qdisc is not available on our machines, and links on one host have no delay
anyway, so Parley emulates the network itself: every outgoing message passes through the
`LinkModel` of its directed (sender, receiver) link, which says when each copy of it arrives, or
that it is lost. The live transport (`protocols/net/transport.py`) holds the frames until those times
and the node's loop sleeps until the next one is due; the deterministic simulator
(`protocols/sim/netsim.py`) puts them on its virtual-clock event heap. Both use this one model with a
seed derived per link from the run seed (`link_seed`), so a link decides the same in a unit test
and on real sockets.

Semantics of one `decide(now, size_bytes)` call:

1. Bandwidth cap (`bandwidth_bytes_per_s`): a token bucket of `burst_bytes` refilled at the
   rate. A message leaves once the messages before it have left and the bucket holds its size
   (with `burst_bytes: 0`, the default, a message occupies the link for size / rate: pure
   serialization). Messages waiting for tokens form a queue; when the bytes queued plus this
   message exceed `queue_limit_bytes`, the message is dropped at the tail (counted as
   `dropped_queue`) and does not use the link.
2. Loss: `loss_model: bernoulli` loses each message with probability `loss`;
   `gilbert_elliott` is a two-state Markov chain (good/bad) stepped once per message with
   `ge_p_good_to_bad` / `ge_p_bad_to_good`, losing with `ge_loss_good` / `ge_loss_bad` in each
   state: bursts of loss, as on a real congested or wireless link.
3. Delay of each copy: a base delay from `delay_distribution` (mean `delay_s`):
   constant; uniform (std `delay_std_s`, i.e. half-width sqrt(3) * std); normal (std
   `delay_std_s`, clipped at 0); lognormal (mean `delay_s`, std `delay_std_s`); pareto (shape
   `pareto_shape` > 1, scaled so its mean is `delay_s`: heavy tail); trace (a file of recorded
   one-way delays in milliseconds, one per line, sampled uniformly). Then uniform jitter
   U(-jitter_s, +jitter_s) is added; the total is clipped at 0.
4. Reordering (netem's style): with probability `reorder` the message skips the delay and
   arrives as soon as it has left, overtaking messages in flight (needs a delay). Jitter alone
   can reorder too. `in_order: true` instead forbids overtaking: no message arrives before one
   sent earlier on the same link (a TCP-like stream).
5. Duplication: with probability `duplicate` a second copy is delivered with its own delay.

Determinism: every call consumes the same number of random draws (`DRAWS_PER_MESSAGE` uniforms
and two standard normals) whatever the probabilities, the distribution or the outcome, so two
runs that differ only in, say, the loss rate see the same delays for the same messages, and the
simulator and the live transport stay in step message for message. The one exception is a
message dropped by a full queue: it still consumes its draws, so this holds there too.

`PartitionTable` is the other half of fault emulation: a set of blocked directed pairs the
transport consults before a message enters its link.
"""

from __future__ import annotations

import math
import re
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from protocols.seeds import derive_seed

DRAWS_PER_MESSAGE = 8  # uniforms per decide(): GE step, loss, duplicate, reorder, 2 x delay, 2 x jitter
DelayDistribution = Literal["constant", "uniform", "normal", "lognormal", "pareto", "trace"]


def _read_trace_ms(path: str) -> np.ndarray:
    """A trace of one-way delays in milliseconds, as seconds."""
    return _read_trace(path, "milliseconds") / 1000.0


def _read_trace(path: str, unit: str) -> np.ndarray:
    """The delays of a trace file, one per line (`#` starts a comment), in the file's own unit."""
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise ValueError(f"delay_trace: cannot read {path!r}: {error}") from None
    values = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            value = float(line)
        except ValueError:
            raise ValueError(f"delay_trace {path}:{number}: expected a delay in {unit}, got {line!r}") from None
        if not (value >= 0.0 and math.isfinite(value)):
            raise ValueError(f"delay_trace {path}:{number}: expected a finite delay >= 0 {unit}, got {value}")
        values.append(value)
    if not values:
        raise ValueError(f"delay_trace {path}: expected at least one delay in {unit}, got an empty file")
    return np.asarray(values, dtype=np.float64)


class LinkConfig(BaseModel):
    """Emulated properties of one directed link (or of every link, when used as a default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    delay_s: float = 0.0
    delay_distribution: DelayDistribution = "constant"
    delay_std_s: float = 0.0
    pareto_shape: float = Field(2.5, gt=1.0)
    delay_trace: str | None = None
    jitter_s: float = 0.0
    loss_model: Literal["bernoulli", "gilbert_elliott"] = "bernoulli"
    loss: float = 0.0
    ge_p_good_to_bad: float = 0.0
    ge_p_bad_to_good: float = 1.0
    ge_loss_good: float = 0.0
    ge_loss_bad: float = 1.0
    duplicate: float = 0.0
    reorder: float = 0.0
    in_order: bool = False
    bandwidth_bytes_per_s: float | None = None
    burst_bytes: float = 0.0
    queue_limit_bytes: float | None = None
    # Delay counted in env steps instead of seconds (protocols.talk: env_steps; a peer link
    # only): a message sent while its sender handles lockstep step t reaches the receiver's
    # protocols at the start of step t + d, d >= 1, whatever the machines' speed
    # (protocols/engines/step_links.py). `delay_steps` is the mean of `delay_distribution` (its std
    # `delay_steps_std`; a trace file then holds delays in steps); each draw is rounded to whole
    # steps, at least 1. Loss and duplication apply per message as above, drawn in the same
    # order. The wall-clock fields (delay_s, jitter, reordering, bandwidth) do not apply.
    delay_steps: float | None = None
    delay_steps_std: float = 0.0
    # Env-step links only: the message types (their registered `msg_type`, e.g. flood.table)
    # whose fate this link's draws decide: loss, duplication and a delay beyond one step. A
    # message of any other type crosses as on a clean link (due at the next step) and takes no
    # draws from the link's stream (protocols/engines/step_links.py says why). Partitions, the
    # range of a proximity topology and marks are not the link's draws and apply as without it.
    # None: every message. The run's config checks the names (orchestrator/config.py).
    messages: tuple[str, ...] | None = None

    _trace_s: np.ndarray | None = PrivateAttr(default=None)

    @field_validator("delay_s", "jitter_s", "delay_std_s", "burst_bytes", "delay_steps_std")
    @classmethod
    def _non_negative(cls, value: float, info) -> float:
        if not (value >= 0.0 and math.isfinite(value)):  # also rejects NaN and inf
            raise ValueError(f"{info.field_name} must be >= 0 and finite, got {value}")
        return value

    @field_validator("loss", "duplicate", "reorder", "ge_p_good_to_bad", "ge_p_bad_to_good", "ge_loss_good", "ge_loss_bad")
    @classmethod
    def _probability(cls, value: float, info) -> float:
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{info.field_name} is a probability and must be in [0, 1], got {value}")
        return value

    @field_validator("bandwidth_bytes_per_s", "queue_limit_bytes")
    @classmethod
    def _positive_or_none(cls, value: float | None, info) -> float | None:
        if value is not None and not value > 0.0:
            raise ValueError(f"{info.field_name} must be > 0 (or null for no cap), got {value}")
        return value

    @field_validator("messages")
    @classmethod
    def _some_message_types_once_each(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is None:
            return value
        if not value:
            raise ValueError("messages: expected at least one message type (leave it out for every message), got []")
        repeated = sorted({name for name in value if value.count(name) > 1})
        if repeated:
            raise ValueError(f"messages: expected each message type once, got {', '.join(repeated)} more than once")
        return value

    @field_validator("delay_steps")
    @classmethod
    def _at_least_one_step(cls, value: float | None) -> float | None:
        if value is not None and not (value >= 1.0 and math.isfinite(value)):
            raise ValueError(
                f"delay_steps must be >= 1 (a message is heard at the earliest the step after it was sent; "
                f"'free talk' is protocols.talk: free, not delay_steps 0), got {value}"
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "LinkConfig":
        if self.delay_steps is not None:
            return self._consistent_in_steps()
        if self.delay_steps_std != 0.0:
            raise ValueError(f"delay_steps_std={self.delay_steps_std} is the spread of delay_steps; set delay_steps too")
        if self.reorder > 0.0 and self.delay_s == 0.0 and self.delay_distribution != "trace":
            raise ValueError(
                f"reorder={self.reorder} needs delay_s > 0: a reordered message overtakes delayed ones, "
                "and with delay_s = 0 there is nothing to overtake"
            )
        if self.reorder > 0.0 and self.in_order:
            raise ValueError(f"reorder={self.reorder} contradicts in_order: true; choose one")
        if self.loss_model == "gilbert_elliott" and self.loss != 0.0:
            raise ValueError(
                f"loss={self.loss} is the bernoulli rate; with loss_model gilbert_elliott set "
                "ge_p_good_to_bad, ge_p_bad_to_good, ge_loss_good and ge_loss_bad instead"
            )
        ge_fields = ("ge_p_good_to_bad", "ge_p_bad_to_good", "ge_loss_good", "ge_loss_bad")
        changed = [name for name in ge_fields if getattr(self, name) != type(self).model_fields[name].default]
        if self.loss_model == "bernoulli" and changed:
            raise ValueError(f"{', '.join(changed)} only apply with loss_model: gilbert_elliott, got loss_model: bernoulli")
        if self.delay_distribution in ("uniform", "normal", "lognormal") and self.delay_std_s == 0.0:
            raise ValueError(f"delay_distribution {self.delay_distribution} needs delay_std_s > 0 (0 is the constant distribution)")
        if self.delay_distribution in ("lognormal", "pareto") and self.delay_s == 0.0:
            raise ValueError(f"delay_distribution {self.delay_distribution} needs a mean delay_s > 0")
        if self.delay_distribution == "uniform" and math.sqrt(3.0) * self.delay_std_s > self.delay_s:
            raise ValueError(
                f"uniform delay with delay_s={self.delay_s} and delay_std_s={self.delay_std_s} would reach below 0 "
                f"(half-width sqrt(3) * std = {math.sqrt(3.0) * self.delay_std_s:.6g}); lower the std"
            )
        if self.delay_distribution == "trace":
            if self.delay_trace is None:
                raise ValueError("delay_distribution trace needs delay_trace: a file of delays in ms, one per line")
            self._trace_s = _read_trace_ms(self.delay_trace)
        elif self.delay_trace is not None:
            raise ValueError(f"delay_trace is only read with delay_distribution: trace, got {self.delay_distribution}")
        if (self.burst_bytes > 0.0 or self.queue_limit_bytes is not None) and self.bandwidth_bytes_per_s is None:
            raise ValueError("burst_bytes and queue_limit_bytes shape a bandwidth cap; set bandwidth_bytes_per_s too")
        return self

    def _consistent_in_steps(self) -> "LinkConfig":
        """A link whose delay counts env steps: only the fields that make sense in steps."""
        wall_clock = {"delay_s": 0.0, "delay_std_s": 0.0, "jitter_s": 0.0, "reorder": 0.0, "in_order": False,
                      "bandwidth_bytes_per_s": None, "burst_bytes": 0.0, "queue_limit_bytes": None}
        given = [name for name, unset in wall_clock.items() if getattr(self, name) != unset]
        if given:
            raise ValueError(
                f"{', '.join(given)}: wall-clock link settings, which do not apply to a link whose delay counts env "
                "steps (delay_steps); use delay_steps with delay_distribution and delay_steps_std instead"
            )
        copy = self.model_copy(update={"delay_steps": None, "delay_steps_std": 0.0, "delay_s": self.delay_steps,
                                       "delay_std_s": self.delay_steps_std})
        try:
            LinkConfig._consistent(copy)  # the same distribution and loss rules, in steps
        except ValueError as error:
            in_steps = re.sub(r"\bdelay_s\b", "delay_steps", str(error).replace("delay_std_s", "delay_steps_std"))
            raise ValueError(in_steps) from None
        if self.delay_distribution == "trace":
            self._trace_s = _read_trace(self.delay_trace, "steps")
        return self

    def in_steps_as_seconds(self) -> "LinkConfig":
        """This env-step link with its step fields in the seconds fields: `LinkModel` draws the
        delays of an env-step link from it (protocols/engines/step_links.py) with the same rules and the
        same number of draws per message."""
        if self.delay_steps is None:
            raise ValueError("in_steps_as_seconds: this link's delay counts seconds, not env steps")
        copy = self.model_copy(update={"delay_steps": None, "delay_steps_std": 0.0, "delay_s": self.delay_steps,
                                       "delay_std_s": self.delay_steps_std, "messages": None})  # (the filter is StepLinkModel's)
        copy._trace_s = self._trace_s
        return copy

    def counting_steps(self) -> "LinkConfig":
        """This link as a link between agents that talk in env steps: its own `delay_steps`, or
        one step when it names none (a message is heard at the earliest the step after)."""
        return self if self.counts_steps else self.model_copy(update={"delay_steps": 1.0})

    @property
    def counts_steps(self) -> bool:
        """The link's delay counts env steps (protocols.talk: env_steps)."""
        return self.delay_steps is not None

    @property
    def keeps_order(self) -> bool:
        """Every message arrives once, after every message sent before it on this link (in wall
        time): `in_order`, or a constant delay with no jitter, reordering or duplicates."""
        if self.duplicate > 0.0:
            return False
        return self.in_order or (self.delay_distribution == "constant" and self.jitter_s == 0.0 and self.reorder == 0.0)

    @property
    def is_ideal(self) -> bool:
        """True when the link changes nothing (no emulation needed at all). Compares the fields,
        not the models: a trace's loaded delays are a private array, which `==` cannot compare."""
        return self.model_dump() == _IDEAL_FIELDS


_IDEAL_FIELDS = LinkConfig().model_dump()


def link_seed(run_seed: int, src: str, dst: str) -> int:
    """The seed of the directed link src -> dst: the same in every process and in the simulator.

    Both ends of a link know the run seed and the two node ids, so the sender's model and a
    simulator replaying the run draw the same stream; the node index argument of `derive_seed` is
    0 because the stream name already names the link.
    """
    return derive_seed(run_seed, 0, f"link/{src}->{dst}")


@dataclass
class LinkCounters:
    """What happened on one directed link. `in_flight` is kept by whoever holds the copies."""

    sent: int = 0  # messages offered to the link (after the partition check)
    delivered: int = 0  # copies handed on to the receiver's socket (or engine, in the simulator)
    dropped_loss: int = 0
    dropped_queue: int = 0
    dropped_partition: int = 0
    duplicated: int = 0
    bytes_sent: int = 0
    in_flight: int = 0

    @property
    def dropped(self) -> int:
        return self.dropped_loss + self.dropped_queue + self.dropped_partition


class LinkModel:
    """The seeded, deterministic behaviour of one directed link. See the module docstring."""

    def __init__(self, config: LinkConfig, seed: int) -> None:
        if not isinstance(config, LinkConfig):
            raise TypeError(f"LinkModel needs a LinkConfig, got {type(config).__name__}")
        if config.messages is not None:
            raise ValueError(
                f"messages: only a link whose delay counts env steps (protocols.talk: env_steps) limits its faults to "
                f"message types; a wall-clock link decides every message alike; got messages {list(config.messages)}"
            )
        self.config = config
        self.ideal = config.is_ideal  # asked per message by the shared-memory lockstep (protocols/net/transport.py)
        self.counters = LinkCounters()
        self._rng = np.random.default_rng(seed)
        self._ge_bad = False
        # Token bucket: tokens at the departure time of the last message, which may lie ahead.
        self._last_departure = -math.inf
        self._tokens = config.burst_bytes
        self._queue: deque[tuple[float, int]] = deque()  # (departure, bytes) not yet departed
        self._last_arrival = -math.inf  # for in_order
        if config.delay_distribution == "lognormal":
            variance_ratio = 1.0 + (config.delay_std_s / config.delay_s) ** 2
            self._log_sigma = math.sqrt(math.log(variance_ratio))
            self._log_mu = math.log(config.delay_s) - 0.5 * self._log_sigma**2
        if config.delay_distribution == "pareto":
            self._pareto_scale = config.delay_s * (config.pareto_shape - 1.0) / config.pareto_shape

    def decide(self, now: float, size_bytes: int) -> list[float]:
        """Delivery times (absolute, sorted) of the copies of one message sent at `now`."""
        if size_bytes < 0:
            raise ValueError(f"message size must be >= 0 bytes, got {size_bytes}")
        config = self.config
        # A fixed number of draws per call, whatever happens below (see the module docstring).
        # As Python floats (`tolist`): the same doubles, and the arithmetic below on them is
        # several times cheaper than on numpy scalars (a simulator calls this millions of times).
        u_ge, u_loss, u_duplicate, u_reorder, u_delay_1, u_delay_2, u_jitter_1, u_jitter_2 = self._rng.random(DRAWS_PER_MESSAGE).tolist()
        z_1, z_2 = self._rng.standard_normal(2).tolist()
        counters = self.counters
        counters.sent += 1

        departure = now if config.bandwidth_bytes_per_s is None else self._depart(now, size_bytes)
        if departure is None:
            counters.dropped_queue += 1
            return []
        counters.bytes_sent += size_bytes

        if self._lost(u_ge, u_loss):
            counters.dropped_loss += 1
            return []

        if u_duplicate < config.duplicate:
            times = [self._arrival(departure, u_reorder, u_delay_1, z_1, u_jitter_1),
                     self._arrival(departure, u_reorder, u_delay_2, z_2, u_jitter_2)]
            counters.duplicated += 1
            times.sort()
        else:
            times = [self._arrival(departure, u_reorder, u_delay_1, z_1, u_jitter_1)]
        if config.in_order:
            times = [max(time, self._last_arrival) for time in times]
            self._last_arrival = times[-1]
        return times

    def _arrival(self, departure: float, u_reorder: float, u_delay: float, z: float, u_jitter: float) -> float:
        """When one copy arrives: at once when reordered (it overtakes those in flight), else
        after the base delay and the jitter."""
        config = self.config
        if u_reorder < config.reorder:
            return departure
        delay = self._base_delay(u_delay, z) + (2.0 * u_jitter - 1.0) * config.jitter_s
        return departure + max(0.0, delay)

    def _depart(self, now: float, size_bytes: int) -> float | None:
        """When the message leaves under the bandwidth cap; None when the queue is full."""
        config = self.config
        rate = config.bandwidth_bytes_per_s
        if rate is None:
            return now
        while self._queue and self._queue[0][0] <= now:
            self._queue.popleft()
        if config.queue_limit_bytes is not None:
            queued = sum(size for _, size in self._queue)
            if queued + size_bytes > config.queue_limit_bytes:
                return None
        start = max(now, self._last_departure)
        elapsed = 0.0 if self._last_departure == -math.inf else start - self._last_departure
        tokens = min(config.burst_bytes, self._tokens + elapsed * rate)
        if tokens >= size_bytes and config.burst_bytes > 0.0:
            departure = start
            self._tokens = tokens - size_bytes
        else:
            departure = start + (size_bytes - tokens) / rate
            self._tokens = 0.0
        self._last_departure = departure
        self._queue.append((departure, size_bytes))
        return departure

    def _lost(self, u_ge: float, u_loss: float) -> bool:
        config = self.config
        if config.loss_model == "bernoulli":
            return u_loss < config.loss
        # Step the chain, then lose with the new state's rate.
        if self._ge_bad:
            self._ge_bad = not (u_ge < config.ge_p_bad_to_good)
        else:
            self._ge_bad = u_ge < config.ge_p_good_to_bad
        return u_loss < (config.ge_loss_bad if self._ge_bad else config.ge_loss_good)

    def _base_delay(self, u: float, z: float) -> float:
        config = self.config
        kind = config.delay_distribution
        if kind == "constant":
            return config.delay_s
        if kind == "uniform":
            half_width = math.sqrt(3.0) * config.delay_std_s
            return config.delay_s + (2.0 * u - 1.0) * half_width
        if kind == "normal":
            return max(0.0, config.delay_s + config.delay_std_s * z)
        if kind == "lognormal":
            return math.exp(self._log_mu + self._log_sigma * z)
        if kind == "pareto":
            return self._pareto_scale * (1.0 - u) ** (-1.0 / config.pareto_shape)
        trace = config._trace_s
        return float(trace[min(int(u * len(trace)), len(trace) - 1)])


AGE_WINDOW = 4096  # message ages kept per incoming link for the percentiles (the most recent)
# Senders whose ages are kept. In a keyed run (every orchestrated one) a sender is authenticated
# before its age is recorded, so only the run's nodes appear; a hub without keys hears whatever
# names arrive, and this bounds what they can make it keep (at most ~128 KiB of ages each).
MAX_AGE_SENDERS = 256


class LinkTable:
    """Every outgoing link of one node, plus the ages of the messages it received.

    The node's transport hub asks `decide(dst, now, size)` for each message it sends to another
    node; the models are made on first use with `link_seed(run_seed, src, dst)`, so each link's
    draws are independent of the traffic on the others. `partitions` is consulted first (a
    blocked message never enters its link). `record_age` keeps how old each received message
    was (receive time minus the sender's timestamp), per sending node.
    """

    def __init__(self, src: str, run_seed: int, config_for, partitions: PartitionTable | None = None) -> None:
        self.src = src
        self.run_seed = run_seed
        self._config_for = config_for  # (src, dst) -> LinkConfig
        self.partitions = partitions if partitions is not None else PartitionTable()
        self._models: dict[str, LinkModel] = {}
        self._counts_steps: dict[str, bool] = {}
        self._ages: dict[str, deque[float]] = {}
        self._received: dict[str, int] = {}

    def model_for(self, dst: str) -> LinkModel:
        model = self._models.get(dst)
        if model is None:
            config = self._config_for(self.src, dst)
            # A link whose delay counts env steps is ideal in wall time: its delays, losses and
            # partitions are applied in steps, by the node's env-step layer (protocols/engines/step_links.py).
            model = LinkModel(LinkConfig() if config.counts_steps else config, link_seed(self.run_seed, self.src, dst))
            self._models[dst] = model
        return model

    def counts_steps(self, dst: str) -> bool:
        """The link to `dst` counts its delay in env steps (see `model_for`)."""
        counts = self._counts_steps.get(dst)
        if counts is None:
            counts = self._counts_steps[dst] = self._config_for(self.src, dst).counts_steps
        return counts

    def set_config(self, dst: str, config: LinkConfig) -> None:
        """Change the link to `dst` from now on (a link profile change); counters carry over,
        the random stream continues where it was."""
        model = self.model_for(dst)
        # A link between agents that talk in env steps stays one when its new profile names no
        # delay_steps (one step, as `link_in_steps_between` reads it): its loss is applied in
        # steps by the env-step layer, not a second time here, where it would lose the marks.
        counts_steps = config.counts_steps or self.counts_steps(dst)
        replacement = LinkModel(LinkConfig() if counts_steps else config, 0)  # (steps: see `model_for`)
        replacement._rng = model._rng
        replacement.counters = model.counters
        self._models[dst] = replacement
        self._counts_steps[dst] = counts_steps

    def decide(self, dst: str, now: float, size_bytes: int) -> list[float]:
        model = self.model_for(dst)
        if self.partitions.blocks(self.src, dst) and not self.counts_steps(dst):
            model.counters.sent += 1
            model.counters.dropped_partition += 1
            return []
        return model.decide(now, size_bytes)

    def record_age(self, sender: str, age_s: float) -> None:
        ages = self._ages.get(sender)
        if ages is None:
            if len(self._ages) >= MAX_AGE_SENDERS:
                return
            ages = self._ages[sender] = deque(maxlen=AGE_WINDOW)
        self._received[sender] = self._received.get(sender, 0) + 1
        ages.append(age_s)

    def metrics(self) -> dict[str, float]:
        """Flat counters for the metrics writer: `link/SRC_to_DST/<name>` for each link in use
        (TensorBoard refuses ">" in a name)."""
        rows: dict[str, float] = {}
        for dst, model in sorted(self._models.items()):
            counters = model.counters
            prefix = f"link/{self.src}_to_{dst}/"
            rows[prefix + "sent"] = counters.sent
            rows[prefix + "delivered"] = counters.delivered
            rows[prefix + "dropped"] = counters.dropped
            rows[prefix + "dropped_loss"] = counters.dropped_loss
            rows[prefix + "dropped_queue"] = counters.dropped_queue
            rows[prefix + "dropped_partition"] = counters.dropped_partition
            rows[prefix + "duplicated"] = counters.duplicated
            rows[prefix + "in_flight"] = counters.in_flight
            rows[prefix + "bytes"] = counters.bytes_sent
        for sender, ages in sorted(self._ages.items()):
            prefix = f"link/{sender}_to_{self.src}/"
            p50, p99 = np.percentile(np.asarray(ages), [50, 99])
            rows[prefix + "received"] = self._received[sender]
            rows[prefix + "age_p50_ms"] = float(p50) * 1000.0
            rows[prefix + "age_p99_ms"] = float(p99) * 1000.0
        return rows


def group_of_each_node(groups: Iterable[Iterable[str]], field: str) -> dict[str, int]:
    """Each node's index in `groups`, the islands of a partition; a node in two groups is an error
    naming `field` (the config field, or "partition" for the table's own call), as islands cannot
    overlap. The one check of the table, the network section and a scheduled partition fault."""
    owner: dict[str, int] = {}
    for index, group in enumerate(groups):
        for node in group:
            if node in owner:
                raise ValueError(f"{field}: node {node!r} is in groups {owner[node]} and {index}; groups must be disjoint")
            owner[node] = index
    return owner


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
        owner = group_of_each_node(groups, "partition")
        for src, src_group in owner.items():
            for dst, dst_group in owner.items():
                if src_group != dst_group:
                    self._blocked.add((src, dst))

    def heal(self) -> None:
        self._blocked.clear()

    def heal_nodes(self, nodes: Iterable[str]) -> None:
        """Unblock every blocked pair with one end in `nodes` (blocks between others stay)."""
        nodes = set(nodes)
        self._blocked = {(src, dst) for src, dst in self._blocked if src not in nodes and dst not in nodes}

    @property
    def blocked_pairs(self) -> frozenset[tuple[str, str]]:
        return frozenset(self._blocked)
