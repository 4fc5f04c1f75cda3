"""DQN's gradient step in numpy, for a plain MLP Q-network (`DQNConfig.numpy_updates`).

Why it exists: the main job's Q-network is 64-64 wide and learns from batches of 128 rows, about
39,000 gradient steps per agent a run. At that size a torch step is mostly the cost of calling
torch: about 60 small operations (their dispatch, the tensors they allocate) around 14 matrix
products (agent_node/algos/lean_steps.py already leaves autograd out). In numpy the same step
is fewer, cheaper calls: the networks' parameters, their gradients and Adam's moments each live
in one flat float32 buffer, so clipping, Adam and the soft target update are a handful of vector
operations over the whole network instead of one call per tensor, and the online network reads
`obs` and `next_obs` in one stacked pass.

What stays torch's: the modules (`q_network`, `target_network`) and the Adam optimizer remain
the learner's, and their tensors are views of the flat buffers (`bind_flat`), so checkpoints,
consensus averaging (`set_params` copies into the parameters) and acting read and write the same
memory, in the same formats as before. A checkpoint's optimizer state comes back as new tensors;
`NumpyDQNUpdate.bind_optimizer_state` copies it into the buffers and points the optimizer at
them again.

What differs: the arithmetic is numpy's (OpenBLAS for the products), not torch's, so the
results are not bit for bit the torch path's: a run with `numpy_updates` is reproducible with
itself, not with a run without it. The update is the same: Double DQN targets, the Huber or
squared TD loss averaged over the batch, the global gradient norm clipped, Adam as torch
computes it (bias corrections, eps outside the square root), and the Polyak target update.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn as nn


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


class NumpyMLP:
    """Forward and backward passes of a plain MLP (Linear, ReLU, ..., Linear) over numpy views of
    its parameters: `weights[i]` is (out, in) as `nn.Linear` holds it, `biases[i]` (out,)."""

    def __init__(self, weights: list[np.ndarray], biases: list[np.ndarray]) -> None:
        self.weights = weights
        self.transposed_weights = [weight.T for weight in weights]
        self.biases = biases

    def forward(self, x: np.ndarray, tape: list[np.ndarray] | None = None) -> np.ndarray:
        """The output for rows `x`; with `tape`, each layer's input is appended to it (the
        batch, then each hidden ReLU's output) for `backward`."""
        last = len(self.weights) - 1
        for index, (transposed_weight, bias) in enumerate(zip(self.transposed_weights, self.biases)):
            if tape is not None:
                tape.append(x)
            x = x @ transposed_weight
            x += bias
            if index < last:
                np.maximum(x, 0.0, out=x)
        return x

    def backward(self, tape: list[np.ndarray], grad_output: np.ndarray,
                 weight_grads: list[np.ndarray], bias_grads: list[np.ndarray]) -> None:
        """Write the gradients of the loss whose gradient with respect to the output is
        `grad_output` into `weight_grads` and `bias_grads` (views of the flat gradient buffer).
        `tape` may hold more rows than `grad_output` (a stacked forward): its first rows count."""
        rows = grad_output.shape[0]
        grad = grad_output
        for index in range(len(self.weights) - 1, -1, -1):
            layer_input = tape[index][:rows]
            np.matmul(grad.T, layer_input, out=weight_grads[index])
            np.sum(grad, axis=0, out=bias_grads[index])
            if index > 0:
                grad = grad @ self.weights[index]
                grad *= layer_input > 0  # ReLU's backward: its output was this layer's input


class NumpyDQNUpdate:
    """A DQN learner's gradient step in numpy over flat buffers bound to its torch modules and
    Adam optimizer (see the module docstring). `step(batch, ...)` returns the step's loss, mean
    Q of the actions taken and mean TD target."""

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
        self.online = bind_flat(self.params)
        self.target = bind_flat(list(target_layers.parameters()))
        self.online_mlp = self._mlp(self.online, shapes)
        self.target_mlp = self._mlp(self.target, shapes)
        self.grads = np.zeros_like(self.online)
        grad_views = flat_views(self.grads, shapes)
        self.weight_grads, self.bias_grads = grad_views[0::2], grad_views[1::2]
        self.exp_avg = np.zeros_like(self.online)
        self.exp_avg_sq = np.zeros_like(self.online)
        self.step_count = np.zeros((), dtype=np.float32)  # Adam's `step`, shared by every parameter's state
        self._scratch = np.empty_like(self.online)
        self.bind_optimizer_state()

    @staticmethod
    def _mlp(flat: np.ndarray, shapes: list[tuple[int, ...]]) -> NumpyMLP:
        views = flat_views(flat, shapes)
        return NumpyMLP(views[0::2], views[1::2])

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
        obs = np.asarray(batch["obs"], dtype=np.float32).reshape(len(batch["obs"]), -1)
        next_obs = np.asarray(batch["next_obs"], dtype=np.float32).reshape(len(obs), -1)
        action = batch["action"]
        rows = np.arange(len(obs))
        reward = batch["reward"].astype(np.float32)
        bonus_mean = None
        if reward_bonus is not None:
            bonus = np.asarray(reward_bonus(batch["obs"], action), dtype=np.float32)
            reward += bonus
            bonus_mean = float(bonus.mean())

        # The online network reads obs and next_obs in one pass; the tape keeps both, the
        # backward pass uses the obs rows.
        tape: list[np.ndarray] = []
        q_both = self.online_mlp.forward(np.concatenate((obs, next_obs)), tape)
        q_all, next_q_online = q_both[:len(obs)], q_both[len(obs):]
        next_q_target = self.target_mlp.forward(next_obs)
        if double_dqn:
            next_value = next_q_target[rows, next_q_online.argmax(axis=1)]
        else:
            next_value = next_q_target.max(axis=1)
        not_terminated = 1.0 - batch["terminated"].astype(np.float32)
        td_target = reward + np.float32(gamma) * not_terminated * next_value

        q_taken = q_all[rows, action]
        error = q_taken - td_target
        if loss == "huber":
            absolute = np.abs(error)
            loss_value = float(np.where(absolute < 1.0, 0.5 * error * error, absolute - 0.5).mean())
            grad_q_taken = np.clip(error, -1.0, 1.0)
        else:
            loss_value = float((error * error).mean())
            grad_q_taken = 2.0 * error
        grad_q_all = np.zeros_like(q_all)
        grad_q_all[rows, action] = grad_q_taken / np.float32(len(obs))
        self.online_mlp.backward(tape, grad_q_all, self.weight_grads, self.bias_grads)

        if max_grad_norm is not None:
            norm = float(np.sqrt(np.dot(self.grads, self.grads)))
            scale = max_grad_norm / (norm + 1e-6)
            if scale < 1.0:
                self.grads *= np.float32(scale)
        self._adam()
        if tau is not None:
            np.subtract(self.online, self.target, out=self._scratch)
            self._scratch *= np.float32(tau)
            self.target += self._scratch  # target += tau * (online - target)
        return loss_value, float(q_taken.mean()), float(td_target.mean()), bonus_mean

    def _adam(self) -> None:
        """torch's Adam (not AdamW) on the flat buffers, with the group's current settings."""
        (group,) = self.optimizer.param_groups
        beta1, beta2 = group["betas"]
        self.step_count += 1
        step = float(self.step_count)
        grads, exp_avg, exp_avg_sq, scratch = self.grads, self.exp_avg, self.exp_avg_sq, self._scratch
        exp_avg *= np.float32(beta1)
        exp_avg += np.float32(1.0 - beta1) * grads
        exp_avg_sq *= np.float32(beta2)
        np.multiply(grads, grads, out=scratch)
        scratch *= np.float32(1.0 - beta2)
        exp_avg_sq += scratch
        bias_correction1 = 1.0 - beta1 ** step
        bias_correction2_sqrt = (1.0 - beta2 ** step) ** 0.5
        np.sqrt(exp_avg_sq, out=scratch)
        scratch *= np.float32(1.0 / bias_correction2_sqrt)
        scratch += np.float32(group["eps"])
        np.divide(exp_avg, scratch, out=scratch)
        scratch *= np.float32(group["lr"] / bias_correction1)
        self.online -= scratch
