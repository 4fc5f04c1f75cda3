"""DQN's gradient step over flat float32 buffers, compiled by numba, for a plain MLP Q-network
(`DQNConfig.numpy_updates`).

Why it exists: the main job's Q-network is 64-64 wide and learns from batches of 128 rows, about
39,000 gradient steps per agent a run. At that size a step's arithmetic is small (its 14 matrix
products are ~70 µs here) and what costs is calling the library: torch dispatches ~60 small
operations around the products, numpy ~50. So the whole step — both networks' forward passes,
the Double DQN targets, the loss's gradient, the backward pass, clipping, Adam and the soft
target update — is one function numba compiles (`_dqn_step`): the same operations on the same
float32 values in the same order as the numpy code it replaced (OpenBLAS for the products, each
elementwise operation rounded where numpy rounded it), with no Python between them. Measured
here, one step alone: ~280 µs in numpy, ~150 µs compiled; a reproducible main job writes the
same checkpoints either way.

The networks' parameters, their gradients and Adam's moments each live in one flat float32
buffer; a layer's weight and bias are consecutive slices of it (`network_layout` says where).
What stays torch's: the modules (`q_network`, `target_network`) and the Adam optimizer remain
the learner's, and their tensors are views of the flat buffers (`bind_flat`), so checkpoints,
consensus averaging (`set_params` copies into the parameters) and acting read and write the same
memory, in the same formats as before. A checkpoint's optimizer state comes back as new tensors;
`NumpyDQNUpdate.bind_optimizer_state` copies it into the buffers and points the optimizer at
them again.

What differs from torch: the arithmetic (OpenBLAS for the products, not torch's kernels), so a
run with `numpy_updates` is reproducible with itself, not with a run without it. The update is
the same: Double DQN targets, the Huber or squared TD loss averaged over the batch, the global
gradient norm clipped, Adam as torch computes it (bias corrections, eps outside the square root),
and the Polyak target update.

Compiling: numba compiles the step on its first call (5–15 s of CPU here) and caches the machine
code beside this file (`__pycache__`), so later processes load it in about a second. `make setup`
compiles it; the fork server loads it once before forking the nodes (`warm_up`), so agents never
do. (numba cannot load a recursive function back from its cache, hence `_pairwise_sum`'s stacks.)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn as nn
from numba import njit

from agent_node.replay import ReplayBuffer
from agent_node.roles import Transition


def bind_flat(tensors: list[torch.Tensor]) -> np.ndarray:
    """One new float32 buffer holding `tensors`' values in order; each tensor's `.data` becomes a
    view of its slice, so the tensor and the buffer are one memory from then on."""
    flat = np.empty(sum(tensor.numel() for tensor in tensors), dtype=np.float32)
    for tensor, view in zip(tensors, flat_views(flat, [tuple(tensor.shape) for tensor in tensors])):
        view[...] = tensor.detach().numpy()
        tensor.data = torch.from_numpy(view)
    return flat


def flat_views(flat: np.ndarray, shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    """Views of consecutive slices of `flat`, shaped `shapes`."""
    views, offset = [], 0
    for shape in shapes:
        size = int(np.prod(shape))
        views.append(flat[offset:offset + size].reshape(shape))
        offset += size
    return views


def network_layout(shapes: list[tuple[int, ...]]) -> np.ndarray:
    """Where each layer lies in a flat buffer of `shapes` (weight (out, in), bias (out,), …, as
    `nn.Linear` holds them): one row (start, out, in) per layer."""
    rows, start = [], 0
    for (out_dim, in_dim), bias_shape in zip(shapes[0::2], shapes[1::2]):
        if bias_shape != (out_dim,):
            raise ValueError(f"expected a Linear layer's weight then its bias, got shapes {(out_dim, in_dim)} and {bias_shape}")
        rows.append((start, out_dim, in_dim))
        start += out_dim * in_dim + out_dim
    return np.array(rows, dtype=np.int64).reshape(-1, 3)


@njit(cache=True)
def _layer(flat, layout, k):
    """Layer `k`'s weight (out, in) and bias (out,): views of `flat`."""
    start, out_dim, in_dim = layout[k, 0], layout[k, 1], layout[k, 2]
    weight_end = start + out_dim * in_dim
    return flat[start:weight_end].reshape((out_dim, in_dim)), flat[weight_end:weight_end + out_dim]


@njit(cache=True)
def _forward(flat, layout, x):
    """Every layer's input, then the output, of the MLP (Linear, ReLU, ..., Linear) for rows `x`."""
    activations = [x]
    last = layout.shape[0] - 1
    for k in range(layout.shape[0]):
        weight, bias = _layer(flat, layout, k)
        x = x @ weight.T
        x += bias
        if k < last:
            np.maximum(x, 0.0, x)
        activations.append(x)
    return activations


@njit(cache=True)
def _backward(flat, grads, layout, activations, grad_output):
    """Write into `grads` the gradients of the loss whose gradient with respect to the output is
    `grad_output`. `activations` may hold more rows than `grad_output` (a stacked forward pass):
    its first rows count."""
    rows = grad_output.shape[0]
    grad = grad_output
    for k in range(layout.shape[0] - 1, -1, -1):
        weight, _ = _layer(flat, layout, k)
        weight_grad, bias_grad = _layer(grads, layout, k)
        layer_input = activations[k][:rows]
        weight_grad[:, :] = grad.T @ layer_input
        bias_grad[:] = grad.sum(axis=0)
        if k > 0:
            grad = grad @ weight
            grad *= layer_input > 0  # ReLU's backward: its output was this layer's input


@njit(cache=True)
def _block_sum(values, start, count):
    """numpy's float32 sum of at most 128 values: in 8 interleaved running sums from 8 values on."""
    if count < 8:
        total = np.float32(0.0)
        for i in range(start, start + count):
            total += values[i]
        return total
    sums = values[start:start + 8].copy()
    i = 8
    while i < count - count % 8:
        for lane in range(8):
            sums[lane] += values[start + i + lane]
        i += 8
    total = ((sums[0] + sums[1]) + (sums[2] + sums[3])) + ((sums[4] + sums[5]) + (sums[6] + sums[7]))
    while i < count:
        total += values[start + i]
        i += 1
    return total


@njit(cache=True)
def _first_part(count):
    """How many of `count` values numpy's pairwise summation adds up before the rest: half,
    rounded down to a multiple of 8."""
    half = count // 2
    return half - half % 8


@njit(cache=True)
def _pairwise_sum(values):
    """The float32 sum of `values` in numpy's order: its pairwise summation splits a run of more
    than 128 values into a first part (`_first_part`) and the rest, sums each the same way and
    adds the two. numba cannot cache a recursive function (loading it back crashed), so numpy's
    recursion runs here on explicit stacks: per frame its start, count, whether its first part is
    summed (and it now sums the rest), and that first part's sum."""
    starts, counts = np.zeros(64, np.int64), np.zeros(64, np.int64)
    summing_rest, first_sums = np.zeros(64, np.bool_), np.zeros(64, np.float32)
    depth, counts[0] = 0, values.shape[0]
    while True:
        if counts[depth] > 128:  # split: the first part first
            starts[depth + 1], counts[depth + 1], summing_rest[depth + 1] = starts[depth], _first_part(counts[depth]), False
            depth += 1
            continue
        total = _block_sum(values, starts[depth], counts[depth])
        depth -= 1
        while depth >= 0 and summing_rest[depth]:  # both parts summed: add them, and go up
            total = first_sums[depth] + total
            depth -= 1
        if depth < 0:
            return total
        # the first part of the frame at `depth` is summed: now its rest
        first = _first_part(counts[depth])
        first_sums[depth], summing_rest[depth] = total, True
        starts[depth + 1], counts[depth + 1], summing_rest[depth + 1] = starts[depth] + first, counts[depth] - first, False
        depth += 1


@njit(cache=True)
def _numpy_mean(values):
    """`values.mean()` of a float32 vector, to the bit as numpy computes it: the step's metrics
    are then those of the numpy code it replaced."""
    return _pairwise_sum(values) / np.float32(values.shape[0])


@njit(cache=True)
def _dqn_step(obs, action, reward, next_obs, terminated, online, target, grads, exp_avg, exp_avg_sq, layout,
              gamma, double_dqn, huber, max_grad_norm, update_target, tau, beta1, beta2, eps,
              adam_step_size, adam_denominator_scale):
    """One gradient step, in place on the flat buffers. Returns the batch's mean loss, mean Q of
    the actions taken and mean TD target (float32), the step's metrics."""
    rows = obs.shape[0]
    # The online network reads obs and next_obs in one stacked pass; the backward pass uses the
    # obs rows of it.
    online_activations = _forward(online, layout, np.concatenate((obs, next_obs)))
    q_both = online_activations[-1]
    next_q_target = _forward(target, layout, next_obs)[-1]

    q_taken = np.empty(rows, dtype=np.float32)
    td_target = np.empty(rows, dtype=np.float32)
    loss_terms = np.empty(rows, dtype=np.float32)
    grad_output = np.zeros((rows, q_both.shape[1]), dtype=np.float32)
    for row in range(rows):
        if double_dqn:  # the online network chooses, the target network evaluates
            next_value = next_q_target[row, np.argmax(q_both[rows + row])]
        else:
            next_value = np.max(next_q_target[row])
        # Bootstrap unless the episode truly ended; a truncated row bootstraps from next_obs.
        not_terminated = np.float32(0.0) if terminated[row] else np.float32(1.0)
        td_target[row] = reward[row] + np.float32(gamma) * not_terminated * next_value
        q_taken[row] = q_both[row, action[row]]
        error = q_taken[row] - td_target[row]
        if huber:  # smooth L1 with threshold 1
            absolute = abs(error)
            loss_terms[row] = np.float32(0.5) * error * error if absolute < 1.0 else absolute - np.float32(0.5)
            grad_error = min(max(error, np.float32(-1.0)), np.float32(1.0))
        else:
            loss_terms[row] = error * error
            grad_error = np.float32(2.0) * error
        grad_output[row, action[row]] = grad_error / np.float32(rows)  # the loss is the batch's mean
    _backward(online, grads, layout, online_activations, grad_output)

    norm = np.sqrt(np.dot(grads, grads))
    scale = max_grad_norm / (norm + 1e-6)
    if scale < 1.0:
        grads *= np.float32(scale)
    # Adam as torch computes it, then target += tau * (online - target).
    decay1, decay2 = np.float32(beta1), np.float32(beta2)
    rate1, rate2 = np.float32(1.0 - beta1), np.float32(1.0 - beta2)
    step_size, denominator_scale = np.float32(adam_step_size), np.float32(adam_denominator_scale)
    epsilon, tau32 = np.float32(eps), np.float32(tau)
    for i in range(online.shape[0]):
        grad = grads[i]
        exp_avg[i] = exp_avg[i] * decay1 + rate1 * grad
        exp_avg_sq[i] = exp_avg_sq[i] * decay2 + rate2 * (grad * grad)
        online[i] -= exp_avg[i] / (np.sqrt(exp_avg_sq[i]) * denominator_scale + epsilon) * step_size
        if update_target:
            target[i] += tau32 * (online[i] - target[i])
    return _numpy_mean(loss_terms), _numpy_mean(q_taken), _numpy_mean(td_target)


@njit(cache=True)
def _dqn_step_on_rows(indices, obs_rows, action_rows, reward_rows, next_obs_rows, terminated_rows, *rest):
    """`_dqn_step` on the replay's rows `indices` (what `ReplayBuffer.sample` would copy out),
    gathered here: no batch of six arrays built in Python per step."""
    return _dqn_step(obs_rows[indices], action_rows[indices], reward_rows[indices], next_obs_rows[indices],
                     terminated_rows[indices], *rest)


class NumpyDQNUpdate:
    """A DQN learner's gradient step (`_dqn_step`) over flat buffers bound to its torch modules
    and Adam optimizer (see the module docstring). `step(batch, ...)` returns the step's loss,
    mean Q of the actions taken and mean TD target."""

    def __init__(self, online_layers: nn.Sequential, target_layers: nn.Sequential,
                 optimizer: torch.optim.Adam) -> None:
        (group,) = optimizer.param_groups
        if group["amsgrad"] or group["maximize"] or group["weight_decay"] or group.get("decoupled_weight_decay"):
            raise ValueError("numpy updates implement plain Adam only (no amsgrad, maximize or weight decay)")
        self.optimizer = optimizer
        self.params = list(online_layers.parameters())
        if [id(param) for param in group["params"]] != [id(param) for param in self.params]:
            raise ValueError("the optimizer must hold exactly the online network's parameters, in order")
        shapes = [tuple(param.shape) for param in self.params]
        self.layout = network_layout(shapes)
        self.online = bind_flat(self.params)
        self.target = bind_flat(list(target_layers.parameters()))
        self.grads = np.zeros_like(self.online)
        self.exp_avg = np.zeros_like(self.online)
        self.exp_avg_sq = np.zeros_like(self.online)
        self.step_count = np.zeros((), dtype=np.float32)  # Adam's `step`, shared by every parameter's state
        self.bind_optimizer_state()

    def bind_optimizer_state(self) -> None:
        """Point the optimizer's state at the flat moments, taking over what it holds (a loaded
        checkpoint's state, which arrives as new tensors); a fresh optimizer starts at zero."""
        state = self.optimizer.state
        held = [state[param] for param in self.params if state[param]]
        if held:
            if len(held) != len(self.params):
                raise ValueError("the optimizer holds state for some parameters and not others")
            self.step_count[...] = float(held[0]["step"])
            for name, flat in (("exp_avg", self.exp_avg), ("exp_avg_sq", self.exp_avg_sq)):
                flat[...] = np.concatenate([entry[name].detach().reshape(-1).numpy() for entry in held])
        step = torch.from_numpy(self.step_count)
        exp_avgs = flat_views(self.exp_avg, [tuple(param.shape) for param in self.params])
        exp_avg_sqs = flat_views(self.exp_avg_sq, [tuple(param.shape) for param in self.params])
        for param, exp_avg, exp_avg_sq in zip(self.params, exp_avgs, exp_avg_sqs):
            state[param] = {"step": step, "exp_avg": torch.from_numpy(exp_avg), "exp_avg_sq": torch.from_numpy(exp_avg_sq)}

    def step(self, batch: dict[str, np.ndarray], *, gamma: float, double_dqn: bool, loss: str,
             max_grad_norm: float | None, tau: float | None,
             reward_bonus: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None) -> tuple[float, float, float, float | None]:
        """One gradient step on `batch` (the replay's sample); `tau` None skips the target
        update. Returns (loss, mean Q taken, mean TD target, mean reward bonus or None)."""
        rows = len(batch["obs"])
        reward = np.array(batch["reward"], dtype=np.float32)  # a copy: the bonus is added in place
        bonus_mean = None
        if reward_bonus is not None:
            bonus = np.asarray(reward_bonus(batch["obs"], batch["action"]), dtype=np.float32)
            reward += bonus
            bonus_mean = float(bonus.mean())
        rows_and_settings = (
            _float_rows(batch["obs"], rows), np.asarray(batch["action"], dtype=np.int64), reward,
            _float_rows(batch["next_obs"], rows), np.asarray(batch["terminated"], dtype=np.bool_),
            *self._buffers_and_settings(gamma, double_dqn, loss, max_grad_norm, tau))
        loss_mean, q_mean, target_mean = _dqn_step(*rows_and_settings)
        return float(loss_mean), float(q_mean), float(target_mean), bonus_mean

    def step_on_replay(self, replay: ReplayBuffer, batch_size: int, *, gamma: float, double_dqn: bool, loss: str,
                       max_grad_norm: float | None, tau: float | None) -> tuple[float, float, float, None]:
        """`step` on the batch `replay.sample(batch_size)` would give (the same draw, the same
        rows and values), gathered inside the compiled step."""
        if replay.obs.dtype != np.float32 or replay.action.dtype != np.int64:
            return self.step(replay.sample(batch_size), gamma=gamma, double_dqn=double_dqn, loss=loss,
                             max_grad_norm=max_grad_norm, tau=tau)
        loss_mean, q_mean, target_mean = _dqn_step_on_rows(
            replay.draw_indices(batch_size), replay.obs.reshape(replay.capacity, -1), replay.action, replay.reward,
            replay.next_obs.reshape(replay.capacity, -1), replay.terminated,
            *self._buffers_and_settings(gamma, double_dqn, loss, max_grad_norm, tau))
        return float(loss_mean), float(q_mean), float(target_mean), None

    def _buffers_and_settings(self, gamma: float, double_dqn: bool, loss: str, max_grad_norm: float | None,
                              tau: float | None) -> tuple:
        """`_dqn_step`'s arguments after the batch, for the step about to be taken (Adam's step
        count advances here)."""
        (group,) = self.optimizer.param_groups
        beta1, beta2 = group["betas"]
        self.step_count += 1
        step = float(self.step_count)
        return (self.online, self.target, self.grads, self.exp_avg, self.exp_avg_sq, self.layout,
                float(gamma), bool(double_dqn), loss == "huber",
                np.inf if max_grad_norm is None else float(max_grad_norm),  # no bound: no scale falls below 1
                tau is not None, 0.0 if tau is None else float(tau),
                float(beta1), float(beta2), float(group["eps"]),
                # Adam's bias corrections, in Python floats as torch computes them.
                group["lr"] / (1.0 - beta1 ** step), 1.0 / (1.0 - beta2 ** step) ** 0.5)


def _float_rows(values: np.ndarray, rows: int) -> np.ndarray:
    """`values` as C-ordered float32 rows of features, the one array type `_dqn_step` is compiled for."""
    return np.ascontiguousarray(np.asarray(values, dtype=np.float32).reshape(rows, -1))


def warm_up() -> None:
    """Compile the step's two entries, or load them from numba's cache, with a one-layer network:
    the fork server calls this before forking the nodes, so they share the machine code and none
    compiles."""
    online, target = nn.Sequential(nn.Linear(2, 2)), nn.Sequential(nn.Linear(2, 2))
    update = NumpyDQNUpdate(online, target, torch.optim.Adam(online.parameters()))
    replay = ReplayBuffer(4, (2,), np.float32, (), np.int64, seed=0)
    replay.add(Transition(obs=np.zeros((4, 2), np.float32), action=np.zeros(4, np.int64), reward=np.zeros(4, np.float32),
                          next_obs=np.zeros((4, 2), np.float32), terminated=np.zeros(4, bool), truncated=np.zeros(4, bool)))
    settings = dict(gamma=0.9, double_dqn=True, loss="huber", max_grad_norm=1.0, tau=0.5)
    update.step(replay.sample(2), **settings)
    update.step_on_replay(replay, 2, **settings)
