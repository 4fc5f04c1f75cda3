"""Compressed consensus shares: the codecs, and error feedback.

A consensus share is a set of named float tensors. `protocols.consensus.compression` picks how a
compressed share carries them:

- `fp16`: each tensor as float16 (2 bytes an entry). Values beyond float16's range are clipped to
  +-65504 (never infinity), and what clipping and rounding leave out is the sender's residual.
- `int8`: each tensor as int8 with one scale per tensor, symmetric on the largest magnitude:
  `scale = max|x| / 127`, `q = round(x / scale)`, decoded `q * scale` (1 byte an entry, plus the
  scale). The error of an entry is at most `scale / 2`.
- `topk`: per tensor, the `ceil(topk_fraction * size)` entries of largest magnitude, as int32 flat
  indices (ascending) and float32 values (8 bytes per entry sent); every other entry decodes to 0.

None of them is exact, so a share compresses *a difference with error feedback* rather than the
tensors themselves (Seide et al. 2014's 1-bit SGD, Karimireddy et al. 2019's EF-SGD; CHOCO-Gossip,
Koloskova, Stich and Jaggi 2019, does the same with its public copies): the sender keeps the
residual, what it meant to send minus what the receiver will decode, and adds it to the next share.
Nothing is dropped for good: after any number of shares, `sum(decoded) + residual ==
sum(intended)` (up to float rounding), so the error is that of the *last* share only, not a sum.
`ErrorFeedback` keeps one such residual; protocols/engines/consensus.py says how each engine uses it and
which of its invariants stay exact.

Decoding is deterministic: sender and receiver run the same `decode` on the same message and get
bitwise the same tensors, so the copies the consensus engines keep of "what the other side has"
agree exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Mapping

import numpy as np

Codec = Literal["none", "fp16", "int8", "topk"]
CODECS: tuple[str, ...] = ("none", "fp16", "int8", "topk")

_FLOAT16_MAX = float(np.finfo(np.float16).max)
_INT8_LEVELS = 127  # symmetric: -127 .. 127, so that 0 and +-max are exact
_TOPK_INDEX_LIMIT = np.iinfo(np.int32).max


@dataclass(frozen=True)
class CompressedTensors:
    """A set of named tensors in a compressed encoding (a record inside a consensus message).

    `values[name]`: float16 (fp16), int8 (int8) or float32 of the kept entries (topk);
    `scales[name]`: int8's per-tensor scale; `indices[name]`: topk's int32 flat indices,
    ascending. The receiver knows each tensor's shape and dtype (its own tensors have them).
    """

    codec: str
    values: dict[str, np.ndarray]
    scales: dict[str, float] = field(default_factory=dict)
    indices: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        """Payload bytes: the arrays, and 8 for each scale."""
        return (
            sum(value.nbytes for value in self.values.values())
            + sum(index.nbytes for index in self.indices.values())
            + 8 * len(self.scales)
        )


@dataclass(frozen=True)
class Compression:
    """How shares are compressed: the codec, and top-k's fraction of entries kept."""

    codec: Codec = "none"
    topk_fraction: float = 0.1

    def __post_init__(self) -> None:
        if self.codec not in CODECS:
            raise ValueError(f"compression codec must be one of {', '.join(CODECS)}, got {self.codec!r}")
        if not 0.0 < self.topk_fraction <= 1.0:
            raise ValueError(f"topk_fraction must be in (0, 1], got {self.topk_fraction}")

    @property
    def enabled(self) -> bool:
        return self.codec != "none"

    def kept_entries(self, size: int) -> int:
        """How many entries top-k keeps of a tensor of `size` entries (at least one)."""
        return min(size, max(1, math.ceil(self.topk_fraction * size)))


NO_COMPRESSION = Compression()


def encode(tensors: Mapping[str, np.ndarray], compression: Compression) -> CompressedTensors:
    """The compressed form of finite float `tensors` (any shapes)."""
    codec = compression.codec
    values: dict[str, np.ndarray] = {}
    scales: dict[str, float] = {}
    indices: dict[str, np.ndarray] = {}
    for name, tensor in tensors.items():
        flat = np.asarray(tensor).reshape(-1)
        if codec == "fp16":
            values[name] = np.clip(flat, -_FLOAT16_MAX, _FLOAT16_MAX).astype(np.float16).reshape(tensor.shape)
        elif codec == "int8":
            largest = float(np.max(np.abs(flat))) if flat.size else 0.0
            scale = largest / _INT8_LEVELS
            scales[name] = scale
            if scale > 0.0:
                quantized = np.clip(np.rint(flat.astype(np.float64) / scale), -_INT8_LEVELS, _INT8_LEVELS)
            else:
                quantized = np.zeros(flat.size)
            values[name] = quantized.astype(np.int8).reshape(tensor.shape)
        elif codec == "topk":
            if flat.size > _TOPK_INDEX_LIMIT:
                raise ValueError(f"tensor {name!r} has {flat.size} entries; top-k indices are int32")
            k = compression.kept_entries(flat.size)
            kept = np.sort(np.argpartition(np.abs(flat), flat.size - k)[flat.size - k:]) if k < flat.size else np.arange(flat.size)
            indices[name] = kept.astype(np.int32)
            values[name] = flat[kept].astype(np.float32)
        else:
            raise ValueError(f"encode needs a compressing codec (fp16, int8, topk), got {codec!r}")
    return CompressedTensors(codec=codec, values=values, scales=scales, indices=indices)


def decode(encoded: CompressedTensors, like: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The tensors `encoded` carries, in the shapes and dtypes of `like` (the receiver's own).

    Raises `ValueError` naming the tensor and what was expected when `encoded` does not fit `like`
    (names, codec, dtypes, shapes, index range, a non-finite value or scale): a share from a peer
    is checked here, at the engine's boundary.
    """
    problem = mismatch(encoded, like)
    if problem is not None:
        raise ValueError(problem)
    return _decode_checked(encoded, like)


def mismatch(encoded: object, like: Mapping[str, np.ndarray], codec: str | None = None) -> str | None:
    """Why `encoded` cannot be decoded into tensors like `like` (with `codec`, when given), or None."""
    if not isinstance(encoded, CompressedTensors):
        return f"expected compressed tensors, got {type(encoded).__name__}"
    if codec is not None and encoded.codec != codec:
        return f"codec {encoded.codec!r} differs from this node's {codec!r} (protocols.consensus.compression)"
    if encoded.codec not in CODECS[1:]:
        return f"codec must be one of fp16, int8, topk, got {encoded.codec!r}"
    if not isinstance(encoded.values, dict) or encoded.values.keys() != like.keys():
        return f"tensor names {sorted(encoded.values) if isinstance(encoded.values, dict) else encoded.values!r} differ from expected {sorted(like)}"
    for name, reference in like.items():
        value = encoded.values[name]
        if not isinstance(value, np.ndarray):
            return f"tensor {name!r} is a {type(value).__name__}, expected a numpy array"
        if encoded.codec == "fp16":
            if value.dtype != np.float16 or value.shape != reference.shape:
                return f"tensor {name!r}: fp16 expects float16 of shape {reference.shape}, got {value.dtype} {value.shape}"
            if not np.isfinite(value).all():
                return f"tensor {name!r} contains NaN or infinite values"
        elif encoded.codec == "int8":
            scale = encoded.scales.get(name)
            if value.dtype != np.int8 or value.shape != reference.shape:
                return f"tensor {name!r}: int8 expects int8 of shape {reference.shape}, got {value.dtype} {value.shape}"
            if not (isinstance(scale, float) and math.isfinite(scale) and scale >= 0.0):
                return f"tensor {name!r}: int8 expects a finite scale >= 0, got {scale!r}"
        else:
            index = encoded.indices.get(name)
            if not isinstance(index, np.ndarray) or index.dtype != np.int32 or index.ndim != 1:
                return f"tensor {name!r}: topk expects int32 indices of one dimension, got {getattr(index, 'dtype', type(index).__name__)}"
            if value.dtype != np.float32 or value.shape != index.shape:
                return f"tensor {name!r}: topk expects float32 values, one per index ({index.shape}), got {value.dtype} {value.shape}"
            if index.size and (index[0] < 0 or index[-1] >= reference.size or not (np.diff(index) > 0).all()):
                return f"tensor {name!r}: topk indices must ascend strictly within 0..{reference.size - 1}"
            if not np.isfinite(value).all():
                return f"tensor {name!r} contains NaN or infinite values"
    return None


def _decode_checked(encoded: CompressedTensors, like: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    decoded = {}
    for name, reference in like.items():
        value = encoded.values[name]
        if encoded.codec == "fp16":
            decoded[name] = value.astype(reference.dtype)
        elif encoded.codec == "int8":
            decoded[name] = (value.astype(np.float64) * encoded.scales[name]).astype(reference.dtype)
        else:
            flat = np.zeros(reference.size, reference.dtype)
            flat[encoded.indices[name]] = value
            decoded[name] = flat.reshape(reference.shape)
    return decoded


class ErrorFeedback:
    """One sender's residual for one stream of compressed shares: what it meant to send and has
    not yet got across. `send(intended)` compresses `intended + residual`, keeps what the
    compression left out as the new residual, and returns the message part and what the
    receiver will decode from it. So, over any number of calls,
    `sum(decoded) + residual == sum(intended)` (each float rounding aside)."""

    def __init__(self, compression: Compression, like: Mapping[str, np.ndarray]) -> None:
        if not compression.enabled:
            raise ValueError("error feedback needs a compressing codec (fp16, int8, topk)")
        self.compression = compression
        self.residual = {name: np.zeros_like(value) for name, value in like.items()}

    def send(self, intended: Mapping[str, np.ndarray]) -> tuple[CompressedTensors, dict[str, np.ndarray]]:
        target = {name: intended[name] + self.residual[name] for name in self.residual}
        encoded = encode(target, self.compression)
        decoded = _decode_checked(encoded, target)
        self.residual = {name: target[name] - decoded[name] for name in target}
        return encoded, decoded

    def residual_norm(self) -> float:
        return math.sqrt(sum(float(np.dot(value.ravel(), value.ravel())) for value in self.residual.values()))
