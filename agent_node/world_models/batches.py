"""The input check both world models share: a batch of rows becomes a tensor only when it is a
2-D finite real numpy array of the expected width."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def as_matrix(name: str, array: Any, columns: int, dtype: type[np.floating]) -> torch.Tensor:
    """`array` checked (a 2-D finite real numpy array with `columns` columns) and converted to a
    `dtype` tensor: float32 for the ensemble, float64 for the sparse GP."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"{name}: expected a numpy array, got {type(array).__name__}")
    if array.ndim != 2 or array.shape[1] != columns:
        raise ValueError(f"{name}: expected a 2-D array of shape (batch, {columns}), got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise TypeError(f"{name}: expected a real numeric dtype, got {array.dtype}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name}: contains NaN or infinite values")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=dtype))
