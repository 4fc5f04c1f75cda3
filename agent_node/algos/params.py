"""Network parameters as named numpy arrays: the `ParamSource` half shared by the learners.

Consensus averages plain numpy arrays; a learner exposes one of its networks under a prefix
(`q_network.fc1.weight`, `actor.mean.bias`, …) and takes averaged arrays back, checked by name,
shape and dtype before anything is written.

`ModuleLearner` is the base of the learners whose checkpoint is a `StateLayout`
(agent_node/algos/learner_parts.py) and whose shared parameters are one network's: it gives them
`state_dict`, `load_state_dict`, `get_params` and `set_params`. `OfflineLearner` adds what the
offline learners (CQL, BC) share: no online rows, a fixed number of gradient steps once a dataset
is loaded, and the greedy discrete action; `transitions_for_learning` checks and converts the
columns of a dataset (agent_node/offline/datasets.py) for them.
"""

from __future__ import annotations

from typing import Any, Mapping

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from agent_node.algos.learner_parts import check_config, check_space, update_counters


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


class ModuleLearner:
    """`STATE`: what the checkpoint holds (a `StateLayout`); `PARAMS`: the attribute naming the
    network that `get_params` / `set_params` expose, which is also the parameters' name prefix
    (`q_network.layers.0.weight`). `learning_rates()` gives each optimizer of `STATE` the rate
    the config sets, as a restored optimizer takes the config's rate, not the checkpoint's."""

    STATE: Any
    PARAMS: str
    config: Any

    def learning_rates(self) -> dict[str, float]:
        return {"optimizer": self.config.learning_rate}

    def state_dict(self) -> dict[str, Any]:
        """Loadable with `torch.load(..., weights_only=True)`; a replay buffer is saved apart
        (`self.replay.save`)."""
        return self.STATE.save(self)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.STATE.load(self, state, self.learning_rates())

    def get_params(self) -> dict[str, np.ndarray]:
        """The `PARAMS` network's parameters, named `<PARAMS>.<module>.<weight|bias>` (copies)."""
        return module_params(getattr(self, self.PARAMS), self.PARAMS)

    def set_params(self, params: Mapping[str, np.ndarray]) -> None:
        """Overwrite the `PARAMS` network; names, shapes and dtypes must match `get_params`."""
        load_module_params(getattr(self, self.PARAMS), self.PARAMS, params)


class OfflineLearner(ModuleLearner):
    """`NAME`: the learner's name in messages ("CQL"); `PREFIX`: its metric prefix ("cql");
    `CONFIG`: its config class. `__init__` checks and keeps the config and the spaces (a Box
    observation, Discrete actions), builds the networks (`build_networks`, on a torch stream of
    their own drawn from `seed`) and an Adam optimizer over the `PARAMS` network, and keeps the
    dataset's sampler (the other stream of `seed`); `data` is None until `load_dataset`. A
    subclass gives `build_networks()` and `action_scores(obs)`, one score per action."""

    NAME: str
    PREFIX: str
    CONFIG: type
    data: Any
    gradient_steps: int

    def __init__(self, config: Any, observation_space: gym.spaces.Space, action_space: gym.spaces.Space, seed: int) -> None:
        check_config(config, self.CONFIG)
        check_space(observation_space, gym.spaces.Box, f"{self.NAME} needs a Box observation space")
        check_space(action_space, gym.spaces.Discrete, f"this {self.NAME} is for Discrete action spaces")
        self.config = config
        self.observation_space = observation_space
        self.action_space = action_space
        self.obs_shape = tuple(observation_space.shape)
        init_seed, sample_seed = np.random.SeedSequence(int(seed)).spawn(2)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(init_seed.generate_state(1)[0]))
            self.build_networks()
        self.optimizer = torch.optim.Adam(getattr(self, self.PARAMS).parameters(), lr=config.learning_rate, fused=True)
        self.sample_rng = np.random.default_rng(sample_seed)
        self.data = None
        self.gradient_steps = 0

    def build_networks(self) -> None:
        """Set the learner's networks (the torch stream is already seeded)."""
        raise NotImplementedError

    def observe(self, transition: Any) -> None:
        raise TypeError(f"{self.NAME} is an offline learner: it trains from load_dataset(...), not from online transitions")

    def gradient_steps_due(self) -> int:
        return 0 if self.data is None else self.config.gradient_steps - self.gradient_steps

    def counters(self) -> dict[str, float]:
        """The update contract (roles.Learner.counters): an offline learner owes its configured
        gradient steps once a dataset is loaded; it observes no rows online."""
        return update_counters(self.PREFIX, self.gradient_steps, self.gradient_steps_due())

    def action_scores(self, obs: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def act(self, obs: np.ndarray, explore: bool = False) -> np.ndarray:
        """The best-scored actions; an offline policy has no exploration, so `explore` changes nothing."""
        index = self.action_scores(obs).argmax(axis=1)
        return (index + int(self.action_space.start)).astype(self.action_space.dtype)


class UnusableDataset(ValueError):
    """A dataset whose columns do not fit the offline learner's spaces (or hold nothing)."""


def transitions_for_learning(
    arrays: Mapping[str, np.ndarray], observation_space: gym.spaces.Space, action_space: gym.spaces.Space
) -> dict[str, np.ndarray]:
    """One agent's columns checked against the learner's spaces and converted for training:
    float32 observations, int64 action indices from 0 (a Discrete `start` subtracted), float32
    rewards, bool flags."""
    if not isinstance(observation_space, gym.spaces.Box):
        raise UnusableDataset(f"offline learners here need a Box observation space, got {observation_space!r}")
    if not isinstance(action_space, gym.spaces.Discrete):
        raise UnusableDataset(f"offline learners here need a Discrete action space, got {action_space!r}")
    required = ("obs", "action", "reward", "next_obs", "terminated")
    missing = [name for name in required if name not in arrays]
    if missing:
        raise UnusableDataset(f"dataset arrays lack columns {missing}")
    count = len(arrays["reward"])
    if count == 0:
        raise UnusableDataset("the dataset holds no transitions")
    obs_shape = (count, *observation_space.shape)
    for name in ("obs", "next_obs"):
        if arrays[name].shape != obs_shape:
            raise UnusableDataset(f"dataset column {name!r} has shape {arrays[name].shape}, the learner expects {obs_shape}")
    actions = np.asarray(arrays["action"])
    if actions.shape != (count,) or not np.issubdtype(actions.dtype, np.integer):
        raise UnusableDataset(f"dataset actions must be ({count},) integers, got {actions.shape} {actions.dtype}")
    index = actions.astype(np.int64) - int(action_space.start)
    if index.min() < 0 or index.max() >= int(action_space.n):
        raise UnusableDataset(f"dataset actions lie in [{actions.min()}, {actions.max()}], outside {action_space}")
    return {
        "obs": arrays["obs"].astype(np.float32).reshape(count, -1),
        "action": index,
        "reward": arrays["reward"].astype(np.float32),
        "next_obs": arrays["next_obs"].astype(np.float32).reshape(count, -1),
        "terminated": arrays["terminated"].astype(bool),
    }


def _check_param(name: str, value: Any, param: torch.Tensor) -> None:
    if not isinstance(value, np.ndarray):
        raise TypeError(f"parameter {name!r} must be a numpy array, got {type(value).__name__}")
    expected_dtype = np.dtype(str(param.dtype).removeprefix("torch."))
    if value.shape != tuple(param.shape) or value.dtype != expected_dtype:
        raise ValueError(
            f"parameter {name!r} must be {tuple(param.shape)} {expected_dtype}, got {value.shape} {value.dtype}"
        )
