"""Gossip averaging of named numpy tensors over the topology: sans-IO consensus engines.

Every `period_steps` environment steps the agents average some tensors with their topology
neighbours (world-model statistics such as a GP's natural parameters, or network parameters):
at the end each agent should hold (close to) the average over all agents, without any central
node. Two engines do this:

`SyncConsensus` — synchronous rounds `x_i <- sum_j W_ij x_j`.
    In round `r` each node sends its current tensors to every neighbour, waits for theirs, and
    mixes them with the weights of its row of `W` (Metropolis or uniform, `protocols/engines/topology.py`).
    With a doubly stochastic `W` the average is preserved and disagreement shrinks like
    `lambda_2(W)^r`. Each message carries `(epoch, round)`: a share from an older epoch or round
    is dropped (never mixed into a later round), a share from a future round is buffered until
    this node gets there. A round ends when every neighbour's share arrived or at the round
    deadline; a missing neighbour's weight then stays on the node's own value (the row still sums
    to 1, the global average drifts a little) and the round's metrics name it. Round `r` must end
    by `start + (r + 1) * round_timeout_s`: deadlines on a fixed schedule, rather than a timeout
    counted from when each round began, keep a neighbour that waited out a dead node from being
    late for everyone else's next round too. So the engine always finishes within
    `rounds * round_timeout_s` of its start, whatever the network does. Two signals end the wait
    for a neighbour sooner: its `ConsensusDone` for this run (it finished it, e.g. alone while
    cut off), and a share of a *newer* run from it (it moved on: a node sends the runs' shares in
    order, so nothing more for this run will come from it).

`PushSumConsensus` — asynchronous push-sum over running sums.
    Each node holds a value mass `s` (starting at its tensors) and a weight mass `w` (starting
    at 1) and estimates the average as `s / w`. Every `period_s` it keeps a `1/(d+1)` share of
    both and pushes a `1/(d+1)` share to each of its `d` out-neighbours. Plain push-sum sends
    those shares as they are, so a lost message destroys mass and the estimate ends biased.
    Here a node instead sends, to each out-neighbour, the *cumulative* value and weight it has
    ever pushed to it, with an increasing sequence number; the receiver remembers the last
    cumulative totals it got from each sender and adds only the difference. A lost message is
    made good by the next one, a duplicate or a late (reordered) one carries an old sequence
    number and is ignored, and mass pushed towards a neighbour that is cut off arrives in full
    when it comes back. It needs no symmetric weights, so it works on directed graphs (strongly
    connected), and it has no rounds to wait for: delay only slows it down.

Compressed shares (`compression`: fp16, int8, topk; protocols/engines/compression.py). A compressed
share is not exact, so each engine compresses a *difference* with error feedback, arranged so
that the quantity the engine must conserve stays exact:

- Sync rounds follow CHOCO-Gossip (Koloskova, Stich and Jaggi 2019). Every node keeps a public
  copy `x_hat` of its own tensors and of each neighbour's, all starting at 0 each run. In a
  round it sends `q = C(x - x_hat_own)`; sender and receivers add the same `decode(q)` to their
  copy of the sender, so all copies of a node agree bitwise. Then
  `x += gamma * sum_j W_ij (x_hat_j - x_hat_own)` (`compressed_step_size` = gamma). Exact: with
  a symmetric W (Metropolis, or uniform on a regular graph) the sum over nodes of that step is 0
  whatever the codec did, so the average of `x` is preserved, up to float rounding, as in the
  uncompressed rounds. What compression costs is speed: `x - x_hat_own` is the residual still to
  send (`consensus/compression_residual`), and with gamma = 1 and an exact codec the round is
  the plain `x <- W x`. fp16 and int8 (relative errors) converge like uncompressed rounds; top-k
  of a small fraction needs gamma < 1 and more rounds (bench/consensus_compression.py). A
  neighbour whose share a round lacks has a stale copy for the rest of the run: it is left out
  from then on (its weight stays on our value) and named in `missing_neighbours`.
- Push-sum keeps its weights exact: every push carries the exact float64 cumulative weight
  total. The values go as the compressed increment of the running value total towards that
  receiver since the sender's push `base_seq` to it; the sender's `sent_totals` move by what the
  receiver will decode, and what compression left out stays in the sender's residual for the
  next push (error feedback). The receiver absorbs an increment only if it absorbed `base_seq`
  (else, after a loss or a reordering, it waits), together with the weight, so its value and
  weight masses always hold the same pushes. Every `push_sum_full_every`-th push carries the
  exact totals (residual included, which clears it), so a receiver that waited catches up and
  nothing is lost for good. Exact invariant, per tensor and for the weights: mass held by the
  nodes + (sent totals - totals absorbed, over every edge) + residuals held by senders = the
  initial total (weights: without residuals, = the number of nodes). So once everything sent is
  absorbed the network's average of the value mass misses the true average by exactly the sum
  of the residuals over the number of nodes; each node reports the norm of what it holds back as
  `consensus/compression_residual` (0 right after a full push), and `consensus/gaps` counts the
  increments that waited for a full push. A residual is one compression error of one push's
  share (plus the previous residual), not an accumulation; push-sum's shares do not shrink as
  the estimates converge, so this error does not vanish before a full push.

Sans-IO: the engines never touch a socket or a clock. Inputs are messages with their sender and
the current time `now` (float seconds); outputs are lists of `(destination node id, message)`
to send, plus `next_deadline()`, the time at which the caller must call `on_timer`. The node's
event loop, the unit tests and the simulator in `protocols/sim/netsim.py` all drive the same code.
"""

from __future__ import annotations

import math
from collections import abc
from dataclasses import dataclass
from typing import Callable, ClassVar, Literal, Mapping, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from protocols.engines.compression import NO_COMPRESSION, Compression, CompressedTensors, ErrorFeedback, mismatch as compressed_mismatch
from protocols.engines.compression import decode as decode_compressed, encode as encode_compressed
from protocols.engines.engine import Outgoing
from protocols.codec.messages import register_message
from protocols.engines.topology import Topology, metropolis_weights, second_largest_eigenvalue_modulus, uniform_neighbour_weights

# ------------------------------------------------------------------------------------------
# Messages
# ------------------------------------------------------------------------------------------


@register_message("consensus.share")
@dataclass(frozen=True)
class ConsensusShare:
    """A node's tensors at the start of synchronous round `round` of consensus run `epoch`.

    With compression (`protocols.consensus.compression` other than none) `tensors` is empty and
    `compressed` carries the compressed difference between the sender's tensors and its public
    copy (see "Compressed shares" in the module docstring).
    """

    epoch: int
    round: int
    tensors: dict[str, np.ndarray]
    compressed: CompressedTensors | None = None


@register_message("consensus.done")
@dataclass(frozen=True)
class ConsensusDone:
    """The sender has finished synchronous run `epoch`: it sent the receiver its shares of rounds
    0 .. `rounds_sent` - 1 (some may still be in flight) and sends no more for that run.

    A node answers with it a share for a run it has already finished. Without it, a neighbour
    that finished a run alone (it was cut off and saw everyone go down) and is back up before the
    others start that run is waited for in each of their rounds until the round's deadline:
    20 rounds x 5 s held agents for 100 s after a healed partition.
    """

    epoch: int
    rounds_sent: int


@register_message("consensus.push_sum")
@dataclass(frozen=True)
class PushSumShare:
    """Cumulative push-sum mass a sender has pushed to the receiver during run `epoch`.

    `seq` increases with every push of the sender, so the receiver can ignore anything older
    than what it already used (duplicates, reordered messages).
    """

    epoch: int
    seq: int
    weight_total: float
    value_totals: dict[str, np.ndarray]
    # With compression, most pushes carry no `value_totals` but the compressed increment of the
    # value totals since the sender's push `base_seq` to this receiver (see "Compressed shares").
    compressed: CompressedTensors | None = None
    base_seq: int = 0


# The default of `protocols.limits.max_pending_share_bytes` (protocols/net/auth.py): early shares
# a node holds for rounds and runs it has not started, in bytes.
DEFAULT_MAX_BUFFERED_BYTES = 64 << 20


def _share_bytes(tensors: Mapping[str, np.ndarray], compressed: CompressedTensors | None = None) -> int:
    payload = sum(getattr(value, "nbytes", 0) for value in tensors.values())
    return payload + (compressed.nbytes if isinstance(compressed, CompressedTensors) else 0)


@dataclass(frozen=True)
class ConsensusRequest:
    """What a consensus run starts from: this node's tensors, and the run's number.

    `epoch` identifies the run on every node (the agent node uses the lockstep step at which the
    run is due, the same on every agent) and must increase from run to run.
    """

    tensors: Mapping[str, np.ndarray]
    epoch: int


# ------------------------------------------------------------------------------------------
# Config
# ------------------------------------------------------------------------------------------


class ConsensusConfig(BaseModel):
    """The `consensus` section of a run config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    what: Literal["world_model_statistics", "world_model_parameters", "policy_parameters"] = "world_model_statistics"
    period_steps: int = 250
    rounds: int = 10
    mode: Literal["sync", "push_sum"] = "sync"
    weights: Literal["metropolis", "uniform"] = "metropolis"
    self_weight: float = 0.5
    round_timeout_s: float = 2.0
    push_sum_period_s: float = 0.05
    push_sum_duration_s: float = 2.0
    # When talking takes env steps (protocols.talk: env_steps) the engines' clock is the env step,
    # and these replace the three timings above, in steps.
    round_timeout_steps: int = Field(5, ge=1)
    push_sum_period_steps: int = Field(1, ge=1)
    push_sum_duration_steps: int = Field(20, ge=1)
    # Average once more when the run's budget is spent, before the final checkpoints: every
    # agent then ends with the same policy (policy_parameters only; agent_node/node.py,
    # `_on_run_finished`). Without it the copies drift apart after the last periodic average.
    average_at_end: bool = False
    # A newcomer (an agent that joins the run after step 0 without saved state: its checkpoint
    # lost, or set aside by run.on_corrupt_state: start_fresh) starts from the mean of its
    # neighbours' current policies instead of from scratch (protocols/engines/bootstrap.py): it asks them,
    # and waits for their answers up to twice round_timeout_s (or round_timeout_steps). Whatever
    # `what` averages: the policy is what a newcomer lacks most.
    bootstrap_newcomers: bool = False
    # Every agent starts from the same initial policy (its networks drawn from the run's seed, not
    # the agent's; exploration and replay keep the agent's own streams). Averaging networks that
    # began from different random draws mixes unrelated parameters; decentralized SGD assumes one
    # start. policy_parameters only, for a learner that takes an initial-policy seed (dqn).
    same_initial_policy: bool = False
    # What a share carries (protocols/engines/compression.py; "Compressed shares" in protocols/engines/consensus.py): the tensors as
    # they are (none), or compressed with error feedback as float16, int8 with a per-tensor
    # scale, or the `topk_fraction` of entries of largest magnitude.
    compression: Literal["none", "fp16", "int8", "topk"] = "none"
    # With compression 'topk': the fraction of each tensor's entries a share keeps (at least one).
    topk_fraction: float = 0.1
    # Sync rounds with compression: the step `gamma` of `x += gamma * sum_j W_ij (x_hat_j - x_hat_i)`.
    # 1 is plain gossip when nothing is lost; a coarse codec (top-k of a small fraction) needs less.
    compressed_step_size: float = 1.0
    # Push-sum with compression: every this many pushes a share carries the exact totals again,
    # so a receiver that missed an increment (loss, reordering) catches up, and the sender's
    # residual is cleared.
    push_sum_full_every: int = 10

    @model_validator(mode="after")
    def _check_ranges(self) -> "ConsensusConfig":
        if self.period_steps < 1:
            raise ValueError(f"consensus.period_steps must be >= 1, got {self.period_steps}")
        if self.rounds < 0:
            raise ValueError(f"consensus.rounds must be >= 0, got {self.rounds}")
        if not 0.0 <= self.self_weight < 1.0:
            raise ValueError(f"consensus.self_weight must be in [0, 1), got {self.self_weight}")
        for name in ("round_timeout_s", "push_sum_period_s", "push_sum_duration_s"):
            if not getattr(self, name) > 0.0:
                raise ValueError(f"consensus.{name} must be > 0 seconds, got {getattr(self, name)}")
        if not 0.0 < self.topk_fraction <= 1.0:
            raise ValueError(f"consensus.topk_fraction must be in (0, 1], got {self.topk_fraction}")
        if not 0.0 < self.compressed_step_size <= 1.0:
            raise ValueError(f"consensus.compressed_step_size must be in (0, 1], got {self.compressed_step_size}")
        if self.push_sum_full_every < 1:
            raise ValueError(f"consensus.push_sum_full_every must be >= 1 push, got {self.push_sum_full_every}")
        # A setting that would do nothing is refused rather than ignored. Compared with its
        # default rather than "was it given": a resolved config (run directory) spells out every key.
        for name, applies, expected in (
            ("topk_fraction", self.compression == "topk", "consensus.compression 'topk'"),
            ("compressed_step_size", self.compression != "none" and self.mode == "sync",
             "consensus.mode 'sync' with a consensus.compression other than 'none'"),
            ("push_sum_full_every", self.compression != "none" and self.mode == "push_sum",
             "consensus.mode 'push_sum' with a consensus.compression other than 'none'"),
        ):
            if getattr(self, name) != type(self).model_fields[name].default and not applies:
                raise ValueError(
                    f"consensus.{name} applies only with {expected}; got compression={self.compression!r}, mode={self.mode!r}"
                )
        if self.bootstrap_newcomers and not self.enabled:
            raise ValueError("consensus.bootstrap_newcomers: expected consensus.enabled (the newcomer's ask is a consensus "
                             "message), got enabled=False")
        if self.same_initial_policy and not (self.enabled and self.what == "policy_parameters"):
            raise ValueError(
                "consensus.same_initial_policy: expected consensus.enabled with what 'policy_parameters' (the start is "
                f"shared so that the averaged policies come from one start), got enabled={self.enabled}, what={self.what!r}"
            )
        if self.average_at_end and not (self.enabled and self.what == "policy_parameters"):
            raise ValueError(
                "consensus.average_at_end: expected consensus.enabled with what 'policy_parameters' (the final average "
                f"is of the agents' policies), got enabled={self.enabled}, what={self.what!r}"
            )
        return self

    def compression_settings(self) -> Compression:
        return Compression(self.compression, self.topk_fraction)

    def longest_run_s(self) -> float:
        """The most a consensus run can take, whatever the network does (the engines' bounds)."""
        return self.rounds * self.round_timeout_s if self.mode == "sync" else self.push_sum_duration_s


# ------------------------------------------------------------------------------------------
# Tensor helpers
# ------------------------------------------------------------------------------------------


def _copy_tensors(tensors: Mapping[str, np.ndarray], what: str) -> dict[str, np.ndarray]:
    """Private float copies of the caller's tensors, checked once at the engine's boundary."""
    if not isinstance(tensors, Mapping) or not tensors:
        raise TypeError(f"{what} must be a non-empty dict of name -> numpy array, got {tensors!r:.80}")
    copies = {}
    for name, value in tensors.items():
        if not isinstance(name, str):
            raise TypeError(f"{what}: tensor names must be str, got {name!r}")
        if not isinstance(value, np.ndarray):
            raise TypeError(f"{what}[{name!r}] must be a numpy array, got {type(value).__name__}")
        if not np.issubdtype(value.dtype, np.floating):
            raise TypeError(f"{what}[{name!r}] must have a floating dtype to be averaged, got {value.dtype}")
        if not _all_finite(value):
            raise ValueError(f"{what}[{name!r}] contains NaN or infinite values")
        copies[name] = value.copy()
    return copies


def _all_finite(value: np.ndarray) -> bool:
    """No NaN or infinity in `value`, in one pass and without a mask the size of the tensor:
    the float64 sum of float32 (or smaller) values cannot overflow, and NaN or infinity carries
    through it. A float64 tensor, whose sum could overflow, is checked element by element."""
    if value.size <= _SMALL_TENSOR and value.dtype.itemsize <= 8:
        # A few entries (up to float64, exact as Python floats): a Python loop is several times
        # cheaper than numpy's per-call overhead, and push-sum checks every share it receives.
        return all(map(math.isfinite, value.ravel().tolist()))
    if value.dtype.itemsize <= 4:
        return math.isfinite(float(value.sum(dtype=np.float64)))
    return bool(np.isfinite(value).all())


_SMALL_TENSOR = 32  # entries: below this `_all_finite` loops in Python


def _read_only(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Mark the engine's own tensors read-only and return them. A share then carries them as
    they are, to every neighbour, without a copy per round: nobody can change them in place (the
    transport sends arrays of 64 KiB and more without copying, and the simulator hands the very
    object to the receiver), and each round's mix makes new ones."""
    for value in tensors.values():
        value.flags.writeable = False
    return tensors


def _mismatch(reference: Mapping[str, np.ndarray], received: object, check_finite: bool = True) -> str | None:
    """Why `received` cannot be combined with `reference`, or None if it can. `check_finite=False`
    leaves out the pass over every entry for NaN and infinity (for a caller that checks it
    another way: `SyncConsensus._take_share`)."""
    # `collections.abc.Mapping`, whose isinstance check is several times cheaper than
    # `typing.Mapping`'s (this runs for every share received); key views compare as sets.
    if type(received) is not dict and not isinstance(received, abc.Mapping):
        return f"tensors must be a dict, got {type(received).__name__}"
    if received.keys() != reference.keys():
        return f"tensor names {sorted(received)} differ from expected {sorted(reference)}"
    for name, expected in reference.items():
        value = received[name]
        if not isinstance(value, np.ndarray):
            return f"tensor {name!r} is a {type(value).__name__}, expected a numpy array"
        if value.shape != expected.shape or value.dtype != expected.dtype:
            return (
                f"tensor {name!r} has shape {value.shape} and dtype {value.dtype}, "
                f"expected {expected.shape} and {expected.dtype}"
            )
        if check_finite and not _all_finite(value):
            return _not_finite(name)
    return None


def _not_finite(name: str) -> str:
    return f"tensor {name!r} contains NaN or infinite values"


def _non_finite_tensor(tensors: Mapping[str, np.ndarray]) -> str | None:
    """The name of the first tensor with a NaN or infinite entry, or None."""
    return next((name for name, value in tensors.items() if not _all_finite(value)), None)


def _distance(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> float:
    """Euclidean distance between two sets of tensors seen as one long vector.

    Computed once per received share, so it stays in the tensors' own dtype (no float64 copy of
    a million-entry tensor) and reduces with a dot product.
    """
    total = 0.0
    for name in a:
        difference = (a[name] - b[name]).ravel()
        total += float(np.dot(difference, difference))
    return math.sqrt(total)


class _RoundScratch:
    """One synchronous round's arithmetic: the weighted sum of this node's tensors and its
    neighbours' shares, and the distance of each share to this node's tensors (the round's
    disagreement probe), computed together in one pass over each share.

    The tensors go through in blocks of `_MIX_BLOCK` entries that stay in the CPU's cache:
    a share that has just arrived is read from memory once, then subtracted, squared, scaled and
    added while still cached. Measured in `bench/consensus.py` (a million floats, a ring of 8):
    the probe as a separate pass cost more than the whole mix, since a fresh share is not in
    the cache; in one pass the round costs less CPU than raw numpy's allocating form. The only
    allocation is the round's result, which must be new (see `_read_only`).
    """

    def __init__(self, values: Mapping[str, np.ndarray]) -> None:
        largest = max(min(value.size, _MIX_BLOCK) for value in values.values())
        dtypes = {_mixing_dtype(value.dtype) for value in values.values()}
        self._block = {dtype: np.empty(largest, dtype) for dtype in dtypes}  # a difference, then a term

    def mix(
        self, own_weight: float, own: Mapping[str, np.ndarray], shares: list[tuple[float, Mapping[str, np.ndarray]]]
    ) -> tuple[dict[str, np.ndarray], list[float]]:
        """(own_weight * own + sum(weight * share) per tensor, each share's Euclidean distance to
        `own` over all its tensors as one vector). Shares in the order given (sender order).

        Summed in the tensors' own precision (float16 in float32), as an all-reduce of float32
        tensors sums in float32: the weights are convex, so no partial sum overflows, and a
        round adds a rounding of a few units in the last place. Element by element the
        operations are those of `own_weight * own`, then `+= weight * share` per share, so the
        result is bitwise that of the allocating numpy form. A NaN or infinity in a share makes
        its distance NaN or infinite (own tensors are finite), which the caller checks.
        """
        mixed: dict[str, np.ndarray] = {}
        squared = [0.0] * len(shares)
        for name, value in own.items():
            dtype = _mixing_dtype(value.dtype)
            own_flat = value.reshape(-1)
            share_flats = [(weight, tensors[name].reshape(-1)) for weight, tensors in shares]
            total = np.empty(own_flat.size, dtype)  # the round's new array
            scratch = self._block[dtype]
            with np.errstate(over="ignore", invalid="ignore"):  # a non-finite distance is the caller's to check
                for begin in range(0, own_flat.size, _MIX_BLOCK):
                    end = min(begin + _MIX_BLOCK, own_flat.size)
                    own_block, total_block, work = own_flat[begin:end], total[begin:end], scratch[: end - begin]
                    np.multiply(own_block, own_weight, out=total_block, dtype=dtype)
                    for index, (weight, share_flat) in enumerate(share_flats):
                        share_block = share_flat[begin:end]
                        np.subtract(share_block, own_block, out=work, dtype=dtype)
                        squared[index] += float(np.dot(work, work))
                        np.multiply(share_block, weight, out=work, dtype=dtype)
                        total_block += work
            mixed[name] = total.reshape(value.shape).astype(value.dtype, copy=False)
        return mixed, [math.sqrt(total) for total in squared]


# Entries per block of `_RoundScratch.mix`: own, share, result and scratch blocks of float32
# (128 KiB each) fit a core's L2 cache; smaller blocks pay more numpy calls per entry.
_MIX_BLOCK = 1 << 15


def _mixing_dtype(dtype: np.dtype) -> np.dtype:
    """What a tensor of `dtype` is mixed in: its own dtype, at least float32."""
    return np.promote_types(dtype, np.float32)


def _check_next_epoch(epoch: object, last: int | None) -> None:
    """A run's epoch: an int >= 0, above the last run's (`last`, None before the first run)."""
    if not _is_int(epoch) or epoch < 0:
        raise ValueError(f"epoch must be an int >= 0, got {epoch!r}")
    if last is not None and epoch <= last:
        raise ValueError(f"epoch must increase from run to run: last was {last}, got {epoch}")


def _is_int(value: object) -> bool:
    if type(value) is int:  # the common case, checked first (every share's epoch and seq)
        return True
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


# ------------------------------------------------------------------------------------------
# Synchronous rounds
# ------------------------------------------------------------------------------------------


class SyncConsensus:
    """Synchronous averaging rounds with one node's row of a mixing matrix. See module docstring.

    An `Engine` (protocols/engines/engine.py): `start(ConsensusRequest(tensors, epoch), now)` once per
    consensus run (`epoch` strictly increasing), then feed it `on_message` / `on_timer` /
    `on_neighbour_down` until `done`; read `result`, `metrics()` (a summary of the run) and
    `round_metrics` (one dict per round).
    """

    message_types: ClassVar[tuple[type, ...]] = (ConsensusShare, ConsensusDone)

    def __init__(
        self,
        node_id: str,
        neighbour_weights: Mapping[str, float],
        self_weight: float,
        rounds: int,
        round_timeout_s: float,
        max_buffered_bytes: int = DEFAULT_MAX_BUFFERED_BYTES,
        compression: Compression = NO_COMPRESSION,
        step_size: float = 1.0,
        mixing_row: Callable[[], tuple[Mapping[str, float], float] | None] | None = None,
    ) -> None:
        if node_id in neighbour_weights:
            raise ValueError(f"node {node_id!r} lists itself as a neighbour; put its weight in self_weight")
        for neighbour, weight in neighbour_weights.items():
            if not weight >= 0.0:
                raise ValueError(f"weight of neighbour {neighbour!r} must be >= 0, got {weight}")
        if not self_weight >= 0.0:
            raise ValueError(f"self_weight must be >= 0, got {self_weight}")
        total = self_weight + sum(neighbour_weights.values())
        if abs(total - 1.0) > 1e-9:
            raise ValueError(
                f"self_weight + neighbour weights must sum to 1 (one row of a stochastic matrix), got {total!r}"
            )
        if not _is_int(rounds) or rounds < 0:
            raise ValueError(f"rounds must be an int >= 0, got {rounds!r}")
        if not round_timeout_s > 0.0:
            raise ValueError(f"round_timeout_s must be > 0, got {round_timeout_s}")
        if not 0.0 < step_size <= 1.0:
            raise ValueError(f"step_size must be in (0, 1], got {step_size}")

        self.node_id = node_id
        self.compression = compression
        self.step_size = float(step_size)
        # Compressed shares: the public copies x_hat of this node's and each neighbour's tensors
        # (identical on every node that holds one), and the neighbours whose copy went stale this
        # run (a round without their share) and are no longer mixed in.
        self._public: dict[str, dict[str, np.ndarray]] = {}
        self._cut_off: set[str] = set()
        self.neighbour_weights = dict(neighbour_weights)
        self.self_weight = float(self_weight)
        # A graph that changes (topology.kind proximity): the row of W to mix with now, asked at
        # every mix (None from it, or no provider: the fixed row above). See `_row_now`.
        self._mixing_row = mixing_row
        self.rounds = int(rounds)
        self.round_timeout_s = float(round_timeout_s)
        # Early shares held per neighbour, in bytes (besides the count bound of `_buffer_share`):
        # each neighbour gets an equal part of `max_buffered_bytes` (protocols.limits).
        self.max_buffered_bytes_per_sender = max_buffered_bytes // max(1, len(self.neighbour_weights))

        self.epoch: int | None = None
        self.round = 0
        self._state: Literal["idle", "running", "done"] = "idle"
        self._alive: set[str] = set(neighbour_weights)
        self._values: dict[str, np.ndarray] = {}
        self._expected: set[str] = set()  # neighbours alive when this round began
        self._received: dict[str, dict[str, np.ndarray]] = {}
        self._buffer: dict[tuple[int, int, str], ConsensusShare] = {}  # (epoch, round, sender)
        self._started_at = 0.0
        self._round_started_at = 0.0
        self._deadline: float | None = None
        self._bytes_this_round = 0
        self._finished_at: float | None = None
        # Per neighbour, the run it said it finished and how many of its rounds it sent us
        # (ConsensusDone): not waited for in that run's later rounds.
        self._finished_by: dict[str, tuple[int, int]] = {}
        self._told_finished: set[tuple[str, int]] = set()  # (neighbour, epoch) answered once
        self._rounds_sent: dict[tuple[str, int], int] = {}  # (neighbour, epoch) -> rounds sent it
        self._previous_epoch: int | None = None  # the run before this one: still answered for

        self.round_metrics: list[dict[str, float]] = []  # one dict per finished round of this epoch
        self.missing_by_round: list[tuple[str, ...]] = []  # who was not mixed in, per round
        self.counters = {
            "stale_dropped": 0, "duplicates_dropped": 0, "buffered": 0, "rejected": 0, "finished_elsewhere": 0, "moved_on": 0,
        }
        self.last_rejection: str | None = None

    # -- inputs --------------------------------------------------------------------------

    def start(self, request: ConsensusRequest, now: float) -> list[Outgoing]:
        """Begin consensus run `request.epoch` from `request.tensors`; returns the round-0 shares."""
        tensors, epoch = request.tensors, request.epoch
        _check_next_epoch(epoch, self.epoch)
        self._values = _read_only(_copy_tensors(tensors, "consensus tensors"))
        self._scratch = _RoundScratch(self._values)
        if self.compression.enabled:
            zeros = {name: np.zeros(value.shape, _mixing_dtype(value.dtype)) for name, value in self._values.items()}
            self._public = {node: dict(zeros) for node in (self.node_id, *self.neighbour_weights)}
            self._cut_off = set()
        self._previous_epoch = self.epoch
        self.epoch = int(epoch)
        self.round = 0
        self.round_metrics = []
        self.missing_by_round = []
        self._finished_at = None
        self._buffer = {key: share for key, share in self._buffer.items() if key[0] >= self.epoch}
        self._told_finished = {told for told in self._told_finished if told[1] >= self._oldest_remembered_epoch()}
        self._rounds_sent = {key: count for key, count in self._rounds_sent.items() if key[1] >= self._oldest_remembered_epoch()}
        if self.rounds == 0:
            self._state = "done"
            self._deadline = None
            return []
        self._state = "running"
        self._started_at = now
        outgoing = self._begin_round(now)
        return outgoing + self._finish_completed_rounds(now)

    def on_message(self, sender: str, message: object, now: float) -> list[Outgoing]:
        """Entry point for any message addressed to this engine."""
        if isinstance(message, ConsensusShare):
            return self.on_share(sender, message, now)
        if isinstance(message, ConsensusDone):
            return self.on_done(sender, message, now)
        self._reject(f"unexpected message type {type(message).__name__} from {sender!r}")
        return []

    def on_share(self, sender: str, share: ConsensusShare, now: float) -> list[Outgoing]:
        """Use a neighbour's share if it is for the round in progress; keep it if it is for a
        later round; drop it if it is older. Returns the next round's shares if this completed one."""
        if sender not in self.neighbour_weights:
            self._reject(f"share from {sender!r}, which is not a neighbour of {self.node_id!r}")
            return []
        if not (_is_int(share.epoch) and _is_int(share.round) and share.epoch >= 0 and 0 <= share.round < self.rounds):
            self._reject(f"share from {sender!r} has epoch {share.epoch!r} / round {share.round!r} outside 0..{self.rounds - 1}")
            return []
        if self.epoch is not None and (share.epoch, share.round) < (self.epoch, self.round):
            self.counters["stale_dropped"] += 1
            return self._tell_finished(sender, share.epoch)
        if self._state != "running" or (share.epoch, share.round) > (self.epoch, self.round):
            outgoing = self._buffer_share(sender, share)
            if self._state == "running" and share.epoch > self.epoch:
                outgoing += self._moved_on(sender, now)
            return outgoing
        # A share for the round in progress.
        if sender in self._received:
            self.counters["duplicates_dropped"] += 1
            return []
        if not self._take_share(sender, share, "share"):
            return []
        return self._finish_completed_rounds(now)

    def on_done(self, sender: str, done: ConsensusDone, now: float) -> list[Outgoing]:
        """A neighbour finished run `done.epoch`: stop waiting for it in that run (now, or when
        this node starts it)."""
        if sender not in self.neighbour_weights:
            self._reject(f"consensus.done from {sender!r}, which is not a neighbour of {self.node_id!r}")
            return []
        if not (_is_int(done.epoch) and done.epoch >= 0 and _is_int(done.rounds_sent) and 0 <= done.rounds_sent <= self.rounds):
            self._reject(f"consensus.done from {sender!r} has epoch {done.epoch!r} / rounds_sent {done.rounds_sent!r}, "
                         f"expected ints, epoch >= 0 and rounds_sent in 0..{self.rounds}")
            return []
        self._finished_by[sender] = (int(done.epoch), int(done.rounds_sent))
        self.counters["finished_elsewhere"] += 1
        if self._state == "running" and done.epoch == self.epoch and self.round >= done.rounds_sent:
            self._expected.discard(sender)
            return self._finish_completed_rounds(now)
        return []

    def _moved_on(self, sender: str, now: float) -> list[Outgoing]:
        """`sender` began a newer run: what it sent of this one has arrived, so stop waiting for it
        in this run (after a partition heals, a neighbour whose runs are ahead must not hold this
        one until every round's deadline)."""
        if self._finished_by.get(sender, (-1, 0))[0] == self.epoch:
            return []
        self._finished_by[sender] = (self.epoch, self.round + (1 if sender in self._received else 0))
        self.counters["moved_on"] += 1
        self._expected.discard(sender)
        return self._finish_completed_rounds(now)

    def _sends_no_more(self, node: str) -> bool:
        """Whether `node` said it finished this run before sending its share of this round."""
        epoch, rounds_sent = self._finished_by.get(node, (-1, 0))
        return epoch == self.epoch and self.round >= rounds_sent

    def on_timer(self, now: float) -> list[Outgoing]:
        """Close every round whose deadline has passed, mixing only the shares that arrived."""
        outgoing: list[Outgoing] = []
        while self._state == "running" and self._deadline is not None and now >= self._deadline:
            outgoing += self._finish_round(now)
            outgoing += self._finish_completed_rounds(now)
        return outgoing

    def on_neighbour_down(self, node: str, now: float) -> list[Outgoing]:
        """Stop waiting for (and sending to) a neighbour the membership engine declared dead."""
        if node not in self.neighbour_weights:
            raise ValueError(f"{node!r} is not a neighbour of {self.node_id!r}")
        self._alive.discard(node)
        self._expected.discard(node)
        return self._finish_completed_rounds(now)

    def on_neighbour_up(self, node: str, now: float) -> list[Outgoing]:
        """A neighbour is back: it is sent to and waited for again from the next round on."""
        if node not in self.neighbour_weights:
            raise ValueError(f"{node!r} is not a neighbour of {self.node_id!r}")
        self._alive.add(node)
        return []

    # -- outputs -------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        return self._deadline if self._state == "running" else None

    @property
    def done(self) -> bool:
        return self._state == "done"

    @property
    def result(self) -> dict[str, np.ndarray]:
        if self._state != "done":
            raise RuntimeError(f"consensus on {self.node_id!r} has not finished (state {self._state}, round {self.round})")
        return {name: value.copy() for name, value in self._values.items()}

    @property
    def values(self) -> dict[str, np.ndarray]:
        """The node's current tensors (after the rounds finished so far)."""
        return {name: value.copy() for name, value in self._values.items()}

    def metrics(self) -> dict[str, float]:
        """Summary of the latest run: rounds done, the last round's disagreement, the rounds
        that missed a neighbour, bytes sent, duration, and the rejection counters."""
        rounds = self.round_metrics
        summary = {
            "consensus/rounds": float(len(rounds)),
            "consensus/missing_neighbours": float(sum(r["consensus/missing_neighbours"] for r in rounds)),
            "consensus/bytes_sent": float(sum(r["consensus/bytes_sent"] for r in rounds)),
            "consensus/rejected": float(self.counters["rejected"]),
            "consensus/stale_dropped": float(self.counters["stale_dropped"]),
            "consensus/finished_elsewhere": float(self.counters["finished_elsewhere"]),
            "consensus/moved_on": float(self.counters["moved_on"]),
        }
        if rounds:
            summary["consensus/disagreement_first"] = rounds[0]["consensus/disagreement_max"]
            summary["consensus/disagreement_last"] = rounds[-1]["consensus/disagreement_max"]
            if self.compression.enabled:
                summary["consensus/compression_residual"] = rounds[-1]["consensus/compression_residual"]
        if self._finished_at is not None:
            summary["consensus/engine_duration_s"] = self._finished_at - self._started_at
        return summary

    # -- internals -----------------------------------------------------------------------

    def _begin_round(self, now: float) -> list[Outgoing]:
        self._round_started_at = now
        self._deadline = self._started_at + (self.round + 1) * self.round_timeout_s
        self._received = {}
        self._expected = {node for node in self._alive if not self._sends_no_more(node)}
        if self.compression.enabled:
            share = self._compressed_share()
        else:
            share = ConsensusShare(epoch=self.epoch, round=self.round, tensors=dict(self._values))
        destinations = sorted(self._expected)
        for destination in destinations:
            self._rounds_sent[(destination, self.epoch)] = self.round + 1
        self._bytes_this_round = len(destinations) * _share_bytes(share.tensors, share.compressed)
        # Shares for this round that arrived early are now current.
        for key in sorted(k for k in self._buffer if k[0] == self.epoch and k[1] == self.round):
            self._take_share(key[2], self._buffer.pop(key), "buffered share")
        return [(destination, share) for destination in destinations]

    def _compressed_share(self) -> ConsensusShare:
        """This round's share with compression: `q = C(x - x_hat)`, and our public copy moves by
        what every neighbour will decode from it, `x_hat += decode(q)` (module docstring)."""
        own_copy = self._public[self.node_id]
        encoded = encode_compressed({name: value - own_copy[name] for name, value in self._values.items()}, self.compression)
        decoded = decode_compressed(encoded, own_copy)
        self._public[self.node_id] = {name: own_copy[name] + decoded[name] for name in own_copy}
        return ConsensusShare(epoch=self.epoch, round=self.round, tensors={}, compressed=encoded)

    def _take_share(self, sender: str, share: ConsensusShare, what: str) -> bool:
        """Keep `sender`'s share for the round in progress if its names, shapes and dtypes match
        this node's (and its compression this node's), else reject it (False). Uncompressed
        values are checked for NaN and infinity when the round is mixed (`_finish_round`), in the
        same pass; a compressed share is checked and decoded here (the increment of `sender`'s
        public copy)."""
        if self.compression.enabled:
            problem = compressed_mismatch(share.compressed, self._public[sender], codec=self.compression.codec)
            tensors = None if problem else decode_compressed(share.compressed, self._public[sender])
        elif share.compressed is not None:
            problem, tensors = "a compressed share, but this node's protocols.consensus.compression is 'none'", None
        else:
            problem, tensors = _mismatch(self._values, share.tensors, check_finite=False), share.tensors
        if problem is not None:
            self._reject(f"{what} from {sender!r}: {problem}")
            return False
        self._received[sender] = tensors
        return True

    def _tell_finished(self, sender: str, epoch: int) -> list[Outgoing]:
        """Answer a share for a run this node has finished (once per neighbour and run): the
        sender, still in that run, then stops waiting for this node's shares."""
        finished = epoch < self.epoch or (epoch == self.epoch and self._state == "done")
        if not finished or (sender, epoch) in self._told_finished or epoch < self._oldest_remembered_epoch():
            return []  # (a run older than the previous one: how many rounds went out is forgotten)
        self._told_finished.add((sender, epoch))
        return [(sender, ConsensusDone(epoch=int(epoch), rounds_sent=self._rounds_sent.get((sender, epoch), 0)))]

    def _oldest_remembered_epoch(self) -> int:
        """Runs are numbered by the caller (not consecutively); this one and the one before it are
        remembered for `consensus.done` answers."""
        return self.epoch if self._previous_epoch is None else self._previous_epoch

    def _finish_completed_rounds(self, now: float) -> list[Outgoing]:
        """Finish rounds for as long as every expected share is in (buffered shares can
        complete several rounds at once, and a node with no live neighbour never waits)."""
        outgoing: list[Outgoing] = []
        while self._state == "running" and self._expected <= self._received.keys():
            outgoing += self._finish_round(now)
        return outgoing

    def _finish_round(self, now: float) -> list[Outgoing]:
        if self.compression.enabled:
            return self._finish_compressed_round(now)
        # In sender order, not arrival order: float sums then come out the same in every run
        # with one seed (run.reproducible), however the shares raced.
        received = dict(sorted(self._received.items()))
        neighbour_weights, self_weight = self._row_now()
        while True:
            missing = tuple(sorted(set(self.neighbour_weights) - received.keys()))
            # A missing neighbour's weight stays on our own value, so the row still sums to 1.
            own_weight = self_weight + sum(neighbour_weights[name] for name in missing)
            shares = [(neighbour_weights[sender], tensors) for sender, tensors in received.items()]
            mixed, distances = self._scratch.mix(own_weight, self._values, shares)
            # A distance that is not finite: a NaN or infinity in the share (refused, and the
            # round mixed again without it, as if it had not come), or finite values whose
            # squared distance overflows (kept).
            poisoned = {sender: name for sender, distance in zip(received, distances)
                        if not math.isfinite(distance) and (name := _non_finite_tensor(received[sender])) is not None}
            if not poisoned:
                break
            for sender, name in poisoned.items():
                del received[sender]
                self._reject(f"share from {sender!r}: {_not_finite(name)}")
        self._values = _read_only(mixed)
        return self._close_round(now, distances, missing)

    def _finish_compressed_round(self, now: float) -> list[Outgoing]:
        """CHOCO-Gossip's step: every public copy takes its increment, then
        `x += gamma * sum_j W_ij (x_hat_j - x_hat_i)` over the neighbours whose copy is current.
        A neighbour whose share this round lacks has a stale copy from now on: it is left out
        (its weight stays on our value) for the rest of the run."""
        received = dict(sorted(self._received.items()))
        self._cut_off |= set(self.neighbour_weights) - received.keys()
        for sender, increment in received.items():
            if sender not in self._cut_off:
                copy = self._public[sender]
                self._public[sender] = {name: copy[name] + increment[name] for name in copy}
        own_copy = self._public[self.node_id]
        neighbour_weights, _ = self._row_now()
        mixed, distances = {}, [0.0] * len(self.neighbour_weights)
        current = [node for node in sorted(self.neighbour_weights) if node not in self._cut_off]
        for name, value in self._values.items():
            step = np.zeros(value.shape, _mixing_dtype(value.dtype))
            for index, node in enumerate(current):
                copy = self._public[node][name]
                step += neighbour_weights[node] * (copy - own_copy[name])
                difference = (copy - value).ravel()
                distances[index] += float(np.dot(difference, difference))
            mixed[name] = (value + self.step_size * step).astype(value.dtype, copy=False)
        distances = [math.sqrt(total) for total in distances[: len(current)]]
        self._values = _read_only(mixed)
        missing = tuple(sorted(self._cut_off))
        residual = sum(float(np.dot(d, d)) for d in ((self._values[n] - own_copy[n]).ravel() for n in own_copy))
        # What our public copy still lacks of our tensors: next round's residual.
        return self._close_round(now, distances, missing, {"consensus/compression_residual": math.sqrt(residual)})

    def _row_now(self) -> tuple[Mapping[str, float], float]:
        """The weights a round mixes with: the fixed row, or, on a graph that changes, the row
        `mixing_row` gives for the graph of now (every neighbour named, 0 off the graph; it must
        sum to 1). Both ends of an edge mix at the same step in the env-step clock and see the
        same graph, so Metropolis weights recomputed there keep W symmetric."""
        row = None if self._mixing_row is None else self._mixing_row()
        if row is None:
            return self.neighbour_weights, self.self_weight
        neighbour_weights, self_weight = row
        if set(neighbour_weights) != set(self.neighbour_weights):
            raise ValueError(f"mixing_row names {sorted(neighbour_weights)}, expected the neighbours {sorted(self.neighbour_weights)}")
        total = self_weight + sum(neighbour_weights.values())
        if not (self_weight >= 0.0 and all(w >= 0.0 for w in neighbour_weights.values()) and abs(total - 1.0) <= 1e-9):
            raise ValueError(f"mixing_row must be non-negative weights summing to 1, got {self_weight} and {dict(neighbour_weights)}")
        return neighbour_weights, float(self_weight)

    def _close_round(self, now: float, distances: Sequence[float], missing: tuple[str, ...],
                     extra_metrics: Mapping[str, float] | None = None) -> list[Outgoing]:
        """Record the round just mixed (its metrics: the distances to the neighbours mixed in,
        the bytes sent, how long it took, who was missing), then go on to the next."""
        self.round_metrics.append(
            {
                "consensus/round": float(self.round),
                "consensus/disagreement_max": max(distances) if distances else math.nan,
                "consensus/disagreement_mean": float(np.mean(distances)) if distances else math.nan,
                "consensus/bytes_sent": float(self._bytes_this_round),
                "consensus/round_duration_s": now - self._round_started_at,
                "consensus/missing_neighbours": float(len(missing)),
                **(extra_metrics or {}),
            }
        )
        self.missing_by_round.append(missing)
        return self._next_round(now)

    def _next_round(self, now: float) -> list[Outgoing]:
        self.round += 1
        if self.round == self.rounds:
            self._state = "done"
            self._finished_at = now
            self._deadline = None
            self._received = {}
            return []
        return self._begin_round(now)

    def _buffer_share(self, sender: str, share: ConsensusShare) -> list[Outgoing]:
        # Bounded: a neighbour can be at most one run ahead with all its rounds.
        from_sender = sum(1 for key in self._buffer if key[2] == sender)
        if from_sender >= 2 * self.rounds:
            self._reject(f"too many early shares buffered from {sender!r}; dropping epoch {share.epoch} round {share.round}")
            return []
        key = (int(share.epoch), int(share.round), sender)
        if key in self._buffer:
            self.counters["duplicates_dropped"] += 1
            return []
        held = sum(_share_bytes(held.tensors, held.compressed) for k, held in self._buffer.items() if k[2] == sender)
        incoming = _share_bytes(share.tensors, share.compressed)
        if held + incoming > self.max_buffered_bytes_per_sender:
            self._reject(
                f"early shares from {sender!r} would hold {held + incoming} bytes, over "
                f"{self.max_buffered_bytes_per_sender}; dropping epoch {share.epoch} round {share.round}"
            )
            return []
        self._buffer[key] = share
        self.counters["buffered"] += 1
        return []

    def _reject(self, reason: str) -> None:
        self.counters["rejected"] += 1
        self.last_rejection = reason


# ------------------------------------------------------------------------------------------
# Push-sum over running sums
# ------------------------------------------------------------------------------------------


class PushSumConsensus:
    """Asynchronous push-sum that is exact under loss, duplication and reordering.

    See the module docstring. `out_neighbours` are the nodes this node pushes to; it accepts
    pushes from any sender (on a directed graph it need not know its in-neighbours). An `Engine`
    (protocols/engines/engine.py): `start(ConsensusRequest(tensors, epoch), now)` per run, then messages
    and timers until `done` (after `duration_s`); `result` is the estimate `s / w` at the end.
    """

    message_types: ClassVar[tuple[type, ...]] = (PushSumShare,)

    def __init__(
        self,
        node_id: str,
        out_neighbours: Sequence[str],
        period_s: float,
        duration_s: float,
        max_buffered_bytes: int = DEFAULT_MAX_BUFFERED_BYTES,
        compression: Compression = NO_COMPRESSION,
        full_every: int = 10,
    ) -> None:
        out_neighbours = list(out_neighbours)
        if node_id in out_neighbours:
            raise ValueError(f"node {node_id!r} lists itself as an out-neighbour")
        if len(set(out_neighbours)) != len(out_neighbours):
            raise ValueError(f"out_neighbours of {node_id!r} contain duplicates: {out_neighbours}")
        if not period_s > 0.0:
            raise ValueError(f"period_s must be > 0, got {period_s}")
        if not duration_s > 0.0:
            raise ValueError(f"duration_s must be > 0, got {duration_s}")
        if not _is_int(full_every) or full_every < 1:
            raise ValueError(f"full_every must be an int >= 1, got {full_every!r}")
        self.node_id = node_id
        self.compression = compression
        self.full_every = int(full_every)
        # Compressed pushes, per out-neighbour: the residual of what we meant to push and have
        # not got across, and the seq of our last push to it (the next increment's base).
        self._feedback: dict[str, ErrorFeedback] = {}
        self._last_seq_to: dict[str, int] = {}
        self.out_neighbours = out_neighbours
        self.period_s = float(period_s)
        self.duration_s = float(duration_s)
        # Shares of future runs held, in bytes over all senders (protocols.limits).
        self.max_buffered_bytes = max_buffered_bytes

        self.epoch: int | None = None
        self._state: Literal["idle", "running", "done"] = "idle"
        self._alive: set[str] = set(out_neighbours)
        self._dtypes: dict[str, np.dtype] = {}
        self._value: dict[str, np.ndarray] = {}  # value mass s, float64
        self._weight = 0.0  # weight mass w
        self._sent_values: dict[str, dict[str, np.ndarray]] = {}  # cumulative pushed, per out-neighbour
        self._sent_weight: dict[str, float] = {}
        self._seen_values: dict[str, dict[str, np.ndarray]] = {}  # last cumulative received, per sender
        self._seen_weight: dict[str, float] = {}
        self._seen_seq: dict[str, int] = {}
        self._seq = 0
        self._next_push_at = 0.0
        self._ends_at = 0.0
        # epoch -> sender -> shares to apply in seq order: the newest full one, and (compressed)
        # the increments after it.
        self._future: dict[int, dict[str, list[PushSumShare]]] = {}
        self._result: dict[str, np.ndarray] | None = None
        self._started_at = 0.0
        self._last_change = math.nan  # how far the estimate moved over the last push period
        self._estimate_at_last_push: dict[str, np.ndarray] | None = None
        # Disagreement estimate, per sender: the distance between our estimate and the sender's
        # as the new part of its totals carries it (see `_apply`), at its first and latest share.
        self._first_distance: dict[str, float] = {}
        self._last_distance: dict[str, float] = {}

        self.counters = {"stale_dropped": 0, "applied": 0, "buffered": 0, "rejected": 0, "pushes": 0, "gaps": 0, "bytes_sent": 0}
        self.last_rejection: str | None = None

    # -- inputs --------------------------------------------------------------------------

    def start(self, request: ConsensusRequest, now: float) -> list[Outgoing]:
        """Begin push-sum run `request.epoch` from `request.tensors`; pushes once immediately."""
        tensors, epoch = request.tensors, request.epoch
        _check_next_epoch(epoch, self.epoch)
        initial = _copy_tensors(tensors, "push-sum tensors")
        self.epoch = int(epoch)
        self._state = "running"
        self._result = None
        self._dtypes = {name: value.dtype for name, value in initial.items()}
        self._value = {name: value.astype(np.float64) for name, value in initial.items()}
        self._weight = 1.0
        self._sent_values = {node: {name: np.zeros_like(v) for name, v in self._value.items()} for node in self.out_neighbours}
        self._sent_weight = {node: 0.0 for node in self.out_neighbours}
        self._seen_values, self._seen_weight, self._seen_seq = {}, {}, {}
        if self.compression.enabled:
            self._feedback = {node: ErrorFeedback(self.compression, self._value) for node in self.out_neighbours}
            self._last_seq_to = {node: 0 for node in self.out_neighbours}
        self.counters["gaps"] = self.counters["bytes_sent"] = 0
        self._seq = 0
        self._started_at = now
        self._ends_at = now + self.duration_s
        self._next_push_at = now
        self._last_change = math.nan
        self._estimate_at_last_push = None
        self._first_distance, self._last_distance = {}, {}
        early = self._future.pop(self.epoch, {})
        self._future = {e: shares for e, shares in self._future.items() if e > self.epoch}
        for sender in sorted(early):
            for share in sorted(early[sender], key=lambda held: held.seq):
                self._apply(sender, share)
        return self.on_timer(now)

    def on_message(self, sender: str, message: object, now: float) -> list[Outgoing]:
        if isinstance(message, PushSumShare):
            return self.on_share(sender, message, now)
        self._reject(f"unexpected message type {type(message).__name__} from {sender!r}")
        return []

    def on_share(self, sender: str, share: PushSumShare, now: float) -> list[Outgoing]:
        """Absorb the new part of a sender's cumulative totals. Never sends anything itself."""
        if sender == self.node_id:
            self._reject("share from self")
            return []
        if not (_is_int(share.epoch) and _is_int(share.seq) and share.epoch >= 0):
            self._reject(f"share from {sender!r} has a non-integer or negative epoch/seq")
            return []
        if self.epoch is not None and share.epoch < self.epoch:
            self.counters["stale_dropped"] += 1
            return []
        if self.epoch is None or share.epoch > self.epoch:
            # The sender started a run we have not started yet: only its newest totals matter.
            if share.epoch not in self._future and len(self._future) >= 2:
                self._reject(f"share from {sender!r} for epoch {share.epoch}: already holding shares of 2 future runs")
                return []
            full = share.compressed is None  # exact totals: they make every earlier share redundant
            held = sum(
                _share_bytes(one.value_totals, one.compressed)
                for e, shares in self._future.items() for s, kept in shares.items()
                if not (full and (e, s) == (share.epoch, sender)) for one in kept
            )
            if held + _share_bytes(share.value_totals, share.compressed) > self.max_buffered_bytes:
                self._reject(f"share from {sender!r} for epoch {share.epoch}: future shares would hold over {self.max_buffered_bytes} bytes")
                return []
            waiting = self._future.setdefault(int(share.epoch), {})
            kept = waiting.get(sender, [])
            if full and all(share.seq > one.seq for one in kept):
                waiting[sender] = [share]
                self.counters["buffered"] += 1
            elif not full:
                waiting[sender] = kept + [share]
                self.counters["buffered"] += 1
            return []
        if self._state == "done":
            self.counters["stale_dropped"] += 1
            return []
        self._apply(sender, share)
        return []

    def on_timer(self, now: float) -> list[Outgoing]:
        if self._state != "running":
            return []
        if now >= self._ends_at:
            self._result = self.estimate()
            self._state = "done"
            return []
        if now < self._next_push_at:
            return []
        outgoing = self._push()
        self._next_push_at += self.period_s
        if self._next_push_at <= now:  # we were called late: do not burst to catch up
            self._next_push_at = now + self.period_s
        return outgoing

    def on_neighbour_down(self, node: str, now: float) -> list[Outgoing]:
        """Stop pushing mass towards a dead out-neighbour (it would sit there until it returns).
        Nodes that are not out-neighbours (e.g. in-neighbours on a directed graph) are ignored."""
        if node in self._alive:
            self._alive.discard(node)
        return []

    def on_neighbour_up(self, node: str, now: float) -> list[Outgoing]:
        if node in self.out_neighbours:
            self._alive.add(node)
        return []

    # -- outputs -------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        if self._state != "running":
            return None
        return min(self._next_push_at, self._ends_at)

    def estimate(self) -> dict[str, np.ndarray]:
        """The current estimate of the average, `value mass / weight mass`."""
        if self._state == "idle":
            raise RuntimeError(f"push-sum on {self.node_id!r} has not started")
        if self._result is not None:
            return {name: value.copy() for name, value in self._result.items()}
        if not self._weight > 0.0:
            raise RuntimeError(f"push-sum on {self.node_id!r} has no weight mass left (w={self._weight})")
        return {name: (value / self._weight).astype(self._dtypes[name]) for name, value in self._value.items()}

    @property
    def done(self) -> bool:
        return self._state == "done"

    @property
    def result(self) -> dict[str, np.ndarray]:
        if self._result is None:
            raise RuntimeError(f"push-sum on {self.node_id!r} has not finished (state {self._state})")
        return {name: value.copy() for name, value in self._result.items()}

    def metrics(self) -> dict[str, float]:
        """Summary of the latest run: pushes made, totals applied, messages dropped as stale or
        rejected, out-neighbours not alive at the end, the weight mass held, how far the
        estimate moved over the last push period, and a disagreement estimate: the largest
        distance between this node's estimate and a sender's, over the senders it heard, at each
        sender's first share of the run (`disagreement_first`) and at its latest one
        (`disagreement_last`; NaN when no share came). A sender's estimate is what the new part
        of its cumulative totals carries, `(value total - value seen) / (weight total - weight
        seen)`: its `s / w` when it pushed (over several pushes merged by a lost or late
        message, their weighted mean). It is measured against our estimate just before that part
        is absorbed, so it reads as the sync engines' `disagreement_max` does: the distance to the
        neighbours as last heard, not an exact spread over all nodes."""
        return {
            "consensus/pushes": float(self.counters["pushes"]),
            "consensus/applied": float(self.counters["applied"]),
            "consensus/stale_dropped": float(self.counters["stale_dropped"]),
            "consensus/rejected": float(self.counters["rejected"]),
            "consensus/missing_neighbours": float(len(set(self.out_neighbours) - self._alive)),
            "consensus/weight_mass": float(self._weight),
            "consensus/estimate_change": float(self._last_change),
            "consensus/disagreement_first": max(self._first_distance.values(), default=math.nan),
            "consensus/disagreement_last": max(self._last_distance.values(), default=math.nan),
            "consensus/engine_duration_s": self.duration_s if self.done else float("nan"),
            "consensus/bytes_sent": float(self.counters["bytes_sent"]),
            **(self._compression_metrics() if self.compression.enabled else {}),
        }

    def _compression_metrics(self) -> dict[str, float]:
        """`compression_residual`: the value mass this node meant to push and has not got across
        (the norm of its residuals summed over out-neighbours). Summed over all nodes and divided
        by the number of nodes, it is exactly how far the network's average of the value mass
        falls short of the initial average (module docstring). `gaps`: increments not applied
        because one before them went missing (the next full push catches up)."""
        held_back = None
        for feedback in self._feedback.values():
            held_back = dict(feedback.residual) if held_back is None else {n: held_back[n] + feedback.residual[n] for n in held_back}
        norm = 0.0 if held_back is None else math.sqrt(sum(float(np.dot(v.ravel(), v.ravel())) for v in held_back.values()))
        return {"consensus/compression_residual": norm, "consensus/gaps": float(self.counters["gaps"])}

    @property
    def weight_mass(self) -> float:
        return self._weight

    @property
    def value_mass(self) -> dict[str, np.ndarray]:
        return {name: value.copy() for name, value in self._value.items()}

    def sent_totals(self, destination: str) -> tuple[dict[str, np.ndarray], float]:
        """Cumulative (value, weight) mass pushed to `destination` in this run."""
        return {n: v.copy() for n, v in self._sent_values[destination].items()}, self._sent_weight[destination]

    def residual(self, destination: str) -> dict[str, np.ndarray]:
        """Value mass meant for `destination` that compression has not got across yet (zeros
        without compression)."""
        if destination not in self._feedback:
            return {name: np.zeros_like(value) for name, value in self._value.items()}
        return {name: value.copy() for name, value in self._feedback[destination].residual.items()}

    def received_totals(self, sender: str) -> tuple[dict[str, np.ndarray], float] | None:
        """Last cumulative (value, weight) mass absorbed from `sender`, or None if nothing came yet."""
        if sender not in self._seen_values:
            return None
        return {n: v.copy() for n, v in self._seen_values[sender].items()}, self._seen_weight[sender]

    # -- internals -----------------------------------------------------------------------

    def _push(self) -> list[Outgoing]:
        if self._weight > 0.0:
            estimate = {name: value / self._weight for name, value in self._value.items()}
            if self._estimate_at_last_push is not None:
                self._last_change = _distance(estimate, self._estimate_at_last_push)
            self._estimate_at_last_push = estimate
        targets = [node for node in self.out_neighbours if node in self._alive]
        fraction = 1.0 / (len(targets) + 1)
        share_value = {name: value * fraction for name, value in self._value.items()}
        share_weight = self._weight * fraction
        self._value = share_value  # the part we keep equals each pushed part
        self._weight = share_weight
        self._seq += 1
        self.counters["pushes"] += 1
        outgoing = []
        sent_values, sent_weight, epoch, seq = self._sent_values, self._sent_weight, self.epoch, self._seq
        for node in targets:
            weight_total = sent_weight[node] + share_weight
            sent_weight[node] = weight_total
            if self.compression.enabled and seq % self.full_every != 0:
                outgoing.append((node, self._compressed_push(node, share_value, weight_total)))
                continue
            # New arrays rather than in-place adds: earlier messages hold the old totals.
            sent = sent_values[node]
            if self.compression.enabled:  # a full push: the exact totals, residual included
                feedback = self._feedback[node]
                totals = {name: sent[name] + (share_value[name] + feedback.residual[name]) for name in share_value}
                feedback.residual = {name: np.zeros_like(value) for name, value in feedback.residual.items()}
                self._last_seq_to[node] = seq
            else:
                totals = {name: sent[name] + share_value[name] for name in share_value}
            for total in totals.values():
                total.setflags(write=False)  # fresh arrays, now shared with the message
            sent_values[node] = totals
            self.counters["bytes_sent"] += 8 + _share_bytes(totals)
            outgoing.append((node, PushSumShare(epoch=epoch, seq=seq, weight_total=weight_total, value_totals=totals)))
        return outgoing

    def _compressed_push(self, node: str, share_value: dict[str, np.ndarray], weight_total: float) -> PushSumShare:
        """The compressed increment of our value totals towards `node` since our last push to it:
        `share + residual`, compressed; the totals we record move by what `node` will decode."""
        encoded, decoded = self._feedback[node].send(share_value)
        sent = self._sent_values[node]
        self._sent_values[node] = {name: sent[name] + decoded[name] for name in sent}
        base_seq, self._last_seq_to[node] = self._last_seq_to[node], self._seq
        self.counters["bytes_sent"] += 8 + encoded.nbytes
        return PushSumShare(
            epoch=self.epoch, seq=self._seq, weight_total=weight_total, value_totals={}, compressed=encoded, base_seq=base_seq
        )

    def _apply(self, sender: str, share: PushSumShare) -> None:
        if share.seq <= self._seen_seq.get(sender, 0):
            self.counters["stale_dropped"] += 1  # a duplicate, or overtaken by a newer total
            return
        if share.compressed is not None:
            self._apply_increment(sender, share)
            return
        problem = _mismatch(self._value, share.value_totals)
        if problem is None and not (isinstance(share.weight_total, (int, float)) and math.isfinite(share.weight_total)):
            problem = f"weight_total must be a finite float, got {share.weight_total!r}"
        if problem is None and share.weight_total < self._seen_weight.get(sender, 0.0):
            problem = f"weight_total {share.weight_total} decreased (cumulative totals only grow)"
        if problem is not None:
            self._reject(f"push-sum share from {sender!r}: {problem}")
            return
        seen = self._seen_values.get(sender)
        # The new part of the sender's totals (float64, as `_mismatch` checked): measured, then absorbed.
        new_parts = {name: total - (0.0 if seen is None else seen[name]) for name, total in share.value_totals.items()}
        new_weight = float(share.weight_total) - self._seen_weight.get(sender, 0.0)
        self._measure_disagreement(sender, new_parts, new_weight)
        for name, part in new_parts.items():
            self._value[name] = self._value[name] + part
        self._weight += new_weight
        self._seen_values[sender] = {name: np.asarray(total, dtype=np.float64) for name, total in share.value_totals.items()}
        self._seen_weight[sender] = float(share.weight_total)
        self._seen_seq[sender] = int(share.seq)
        self.counters["applied"] += 1

    def _apply_increment(self, sender: str, share: PushSumShare) -> None:
        """Absorb a compressed push: the decoded increment of the sender's value totals since its
        push `base_seq`, if that is the last one we absorbed from it; otherwise one in between
        went missing, and we wait for its next full push (its exact totals) to catch up. The
        weight total is exact in every push, and absorbed with the increment or not at all, so
        our value and weight masses always hold the same pushes."""
        if not self.compression.enabled:
            self._reject(f"push-sum share from {sender!r}: compressed, but this node's protocols.consensus.compression is 'none'")
            return
        problem = compressed_mismatch(share.compressed, self._value, codec=self.compression.codec)
        if problem is None and not (isinstance(share.weight_total, (int, float)) and math.isfinite(share.weight_total)):
            problem = f"weight_total must be a finite float, got {share.weight_total!r}"
        if problem is None and share.weight_total < self._seen_weight.get(sender, 0.0):
            problem = f"weight_total {share.weight_total} decreased (cumulative totals only grow)"
        if problem is None and not (_is_int(share.base_seq) and 0 <= share.base_seq < share.seq):
            problem = f"base_seq must be an int in 0..{share.seq - 1}, got {share.base_seq!r}"
        if problem is not None:
            self._reject(f"push-sum share from {sender!r}: {problem}")
            return
        if share.base_seq != self._seen_seq.get(sender, 0):
            self.counters["gaps"] += 1
            return
        increment = decode_compressed(share.compressed, self._value)
        new_weight = float(share.weight_total) - self._seen_weight.get(sender, 0.0)
        self._measure_disagreement(sender, increment, new_weight)
        seen = self._seen_values.get(sender)
        for name, part in increment.items():
            self._value[name] = self._value[name] + part
        self._weight += new_weight
        self._seen_values[sender] = {name: part + (0.0 if seen is None else seen[name]) for name, part in increment.items()}
        self._seen_weight[sender] = float(share.weight_total)
        self._seen_seq[sender] = int(share.seq)
        self.counters["applied"] += 1

    def _measure_disagreement(self, sender: str, new_parts: dict[str, np.ndarray], new_weight: float) -> None:
        """The distance from our estimate to the sender's, as the new part of its totals carries
        it (see `metrics`); nothing when that part holds no weight. `_distance(ours, theirs)`
        written out, operation for operation, without its two dicts (once per share received)."""
        if not (new_weight > 0.0 and self._weight > 0.0):
            return
        total = 0.0
        for name, value in self._value.items():
            difference = (value / self._weight - new_parts[name] / new_weight).ravel()
            total += float(np.dot(difference, difference))
        distance = math.sqrt(total)
        self._first_distance.setdefault(sender, distance)
        self._last_distance[sender] = distance

    def _reject(self, reason: str) -> None:
        self.counters["rejected"] += 1
        self.last_rejection = reason


# ------------------------------------------------------------------------------------------
# Building engines from a config, and convergence on an ideal network
# ------------------------------------------------------------------------------------------


def mixing_matrix(topology: Topology, config: ConsensusConfig) -> np.ndarray:
    if config.weights == "metropolis":
        return metropolis_weights(topology)
    return uniform_neighbour_weights(topology, config.self_weight)


def build_consensus_engine(
    config: ConsensusConfig, topology: Topology, node_id: str, max_buffered_bytes: int = DEFAULT_MAX_BUFFERED_BYTES,
    in_steps: bool = False, mixing_row: Callable[[], tuple[Mapping[str, float], float] | None] | None = None,
) -> SyncConsensus | PushSumConsensus:
    """The engine one node runs, from the run's consensus config and topology (and the byte
    bound of early shares, `protocols.limits.max_pending_share_bytes`). `in_steps`: the engine's
    clock is the env step (protocols.talk: env_steps), so its timings are the `*_steps` ones; the
    engine itself only compares the times it is given. `mixing_row`: synchronous rounds on a graph
    that changes mix with the row it gives at each mix (`SyncConsensus._row_now`)."""
    index = topology.index_of(node_id)
    neighbours = [topology.nodes[j] for j in topology.neighbours(index)]
    if in_steps:
        config = config.model_copy(update={"round_timeout_s": float(config.round_timeout_steps),
                                           "push_sum_period_s": float(config.push_sum_period_steps),
                                           "push_sum_duration_s": float(config.push_sum_duration_steps)})
    compression = config.compression_settings()
    if config.mode == "push_sum":
        return PushSumConsensus(
            node_id, neighbours, config.push_sum_period_s, config.push_sum_duration_s, max_buffered_bytes,
            compression=compression, full_every=config.push_sum_full_every,
        )
    weights = mixing_matrix(topology, config)
    return SyncConsensus(
        node_id,
        neighbour_weights={topology.nodes[j]: float(weights[index, j]) for j in topology.neighbours(index)},
        self_weight=float(weights[index, index]),
        rounds=config.rounds,
        round_timeout_s=config.round_timeout_s,
        max_buffered_bytes=max_buffered_bytes,
        compression=compression,
        step_size=config.compressed_step_size,
        mixing_row=mixing_row,
    )


def rounds_predicted_by_spectrum(weights: np.ndarray, tol: float) -> int:
    """Rounds for `lambda_2^k <= tol`: the worst case over initial values, for symmetric W."""
    slem = second_largest_eigenvalue_modulus(weights)
    if slem == 0.0:
        return 1
    if slem >= 1.0:
        raise ValueError(f"lambda_2 = {slem} >= 1: this matrix does not converge (disconnected graph?)")
    return math.ceil(math.log(tol) / math.log(slem) - 1e-9)


def rounds_to_tolerance(
    topology: Topology,
    tol: float,
    weights: Literal["metropolis", "uniform"] = "metropolis",
    self_weight: float = 0.5,
    initial: Literal["random", "slowest_mode"] = "random",
    dim: int = 4,
    seed: int = 0,
    max_rounds: int = 100_000,
) -> int:
    """Synchronous rounds until `||X_k - mean|| <= tol * ||X_0 - mean||`, by running the engines.

    Runs one `SyncConsensus` per node on an ideal network (every share delivered, in lockstep
    waves: wave k carries exactly the round-k shares), and measures the disagreement over all
    nodes after each round. `initial="random"` draws seeded Gaussian tensors of `dim` entries;
    `initial="slowest_mode"` starts from the eigenvector of lambda_2, the worst case, which should
    match `rounds_predicted_by_spectrum`.
    """
    if not 0.0 < tol < 1.0:
        raise ValueError(f"tol must be in (0, 1), got {tol}")
    matrix = metropolis_weights(topology) if weights == "metropolis" else uniform_neighbour_weights(topology, self_weight)
    n = topology.num_nodes
    if initial == "random":
        start_values = np.random.default_rng(seed).normal(size=(n, dim))
    elif initial == "slowest_mode":
        start_values = _slowest_mode(matrix)[:, None]
    else:
        raise ValueError(f"initial must be 'random' or 'slowest_mode', got {initial!r}")

    engines = {}
    for i, node in enumerate(topology.nodes):
        engines[node] = SyncConsensus(
            node,
            neighbour_weights={topology.nodes[j]: float(matrix[i, j]) for j in topology.neighbours(i)},
            self_weight=float(matrix[i, i]),
            rounds=max_rounds,
            round_timeout_s=1.0,
        )

    def disagreement() -> float:
        stacked = np.stack([engines[node].values["x"] for node in topology.nodes])
        return float(np.linalg.norm(stacked - stacked.mean(axis=0)))

    wave: list[tuple[str, str, object]] = []
    for i, node in enumerate(topology.nodes):
        wave += [(node, dest, msg) for dest, msg in engines[node].start(ConsensusRequest({"x": start_values[i]}, 0), now=0.0)]
    initial_error = disagreement()
    if initial_error == 0.0:
        return 0
    for completed_rounds in range(1, max_rounds + 1):
        next_wave = []
        for sender, destination, message in wave:
            next_wave += [(destination, dest, msg) for dest, msg in engines[destination].on_message(sender, message, 0.0)]
        wave = next_wave
        if disagreement() <= tol * initial_error:
            return completed_rounds
    raise RuntimeError(f"disagreement did not fall below {tol} of its initial value in {max_rounds} rounds")


def _slowest_mode(matrix: np.ndarray) -> np.ndarray:
    """Unit eigenvector of a symmetric W for its largest-modulus eigenvalue orthogonal to 1."""
    eigenvalues, eigenvectors = np.linalg.eigh(matrix)
    ones = np.ones(matrix.shape[0]) / math.sqrt(matrix.shape[0])
    candidates = [k for k in range(len(eigenvalues)) if abs(eigenvectors[:, k] @ ones) < 1e-8]
    best = max(candidates, key=lambda k: abs(eigenvalues[k]))
    return eigenvectors[:, best]
