"""Network parameters as named numpy arrays: the `ParamSource` half shared by the learners.

Consensus averages plain numpy arrays; a learner exposes one of its networks under a prefix
(`q_network.fc1.weight`, `actor.mean.bias`, …) and takes averaged arrays back, checked by name,
shape and dtype before anything is written.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from torch import nn


def module_params(module: nn.Module, prefix: str) -> dict[str, np.ndarray]:
    """Copies of the module's parameters, named `<prefix>.<parameter name>`."""
    return {f"{prefix}.{name}": param.detach().numpy().copy() for name, param in module.named_parameters()}


def load_module_params(module: nn.Module, prefix: str, params: Mapping[str, np.ndarray]) -> None:
    """Overwrite the module's parameters; all names, shapes and dtypes are checked first."""
    own = dict(module.named_parameters())
    expected_names = {f"{prefix}.{name}" for name in own}
    if set(params) != expected_names:
        missing = sorted(expected_names - set(params))
        unknown = sorted(set(params) - expected_names)
        raise ValueError(f"set_params needs exactly the names of get_params; missing {missing}, unknown {unknown}")
    for full_name, value in params.items():
        _check_param(full_name, value, own[full_name.removeprefix(f"{prefix}.")])
    with torch.no_grad():
        for full_name, value in params.items():
            own[full_name.removeprefix(f"{prefix}.")].copy_(torch.from_numpy(np.asarray(value)))


def _check_param(name: str, value: Any, param: torch.Tensor) -> None:
    if not isinstance(value, np.ndarray):
        raise TypeError(f"parameter {name!r} must be a numpy array, got {type(value).__name__}")
    expected_dtype = np.dtype(str(param.dtype).removeprefix("torch."))
    if value.shape != tuple(param.shape) or value.dtype != expected_dtype:
        raise ValueError(
            f"parameter {name!r} must be {tuple(param.shape)} {expected_dtype}, got {value.shape} {value.dtype}"
        )
