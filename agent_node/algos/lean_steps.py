"""A small network's gradient step without the framework's overhead: the forward and backward passes
of a plain MLP (Linear, ReLU, ..., Linear) by hand (`MLPPasses`), and Adam's update from a list of
gradients (`adam_step`).

Why it exists: the main job's Q-network is 64-64 wide and learns from batches of 128 rows. At that
size what a gradient step costs is mostly around its arithmetic: the module calls, the autograd
engine building and walking its graph, `zero_grad`, `optimizer.step()`'s wrapper. On the project's
2-core machine a DQN gradient step took about 1.5 times the CPU through autograd and `step()` as
through this module (the same process, timed back to back under load), and every agent of the
main job takes about 39,000 of them a run.

Why it is safe: each pass calls the operations autograd records for `nn.Linear` and `nn.ReLU` on
a 2-D batch, on tensors of the same shapes and memory layouts, so the gradients come out bit for
bit as autograd gives them (tests/unit/test_lean_steps.py checks the gradients, and DQN's networks
after hundreds of steps both ways):

- forward: `addmm(bias, x, weight.t())`;
- the input's gradient: `grad.mm(weight)`;
- the weight's gradient: `grad.t().mm(x)`, in that order (autograd computes it for the
  column-major `weight.t()` and transposes back);
- the bias's gradient: `grad` summed over the batch;
- ReLU's backward: `threshold_backward(grad, output, 0)`.

Anything else (a convolutional encoder, other activations) keeps autograd: `MLPPasses.fits`
says whether a module can use these passes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.optim.adam import adam as functional_adam


@dataclass(frozen=True)
class ForwardTape:
    """What the backward pass needs from a forward pass: each layer's input (for the first layer,
    the batch; after it, the previous ReLU's output)."""

    layer_inputs: list[torch.Tensor]


class MLPPasses:
    """Forward and backward passes over the `nn.Linear` layers of an MLP whose hidden layers are
    followed by ReLU.

    It computes with detached aliases of the modules' parameters (the same memory, outside
    autograd, so no pass builds a graph). Loading a checkpoint or an average into the module copies
    in place, so the aliases see it."""

    def __init__(self, layers: nn.Sequential) -> None:
        if not self.fits(layers):
            raise ValueError("MLPPasses needs an nn.Sequential of Linear layers with a ReLU after each hidden one")
        linears = [layer for layer in layers if isinstance(layer, nn.Linear)]
        self.weights = [linear.weight.detach() for linear in linears]
        self.transposed_weights = [weight.t() for weight in self.weights]  # views, taken once
        self.biases = [linear.bias.detach() for linear in linears]

    @staticmethod
    def fits(layers: nn.Module) -> bool:
        """True for Linear (ReLU, Linear)* with biases, nothing else: what these passes compute."""
        if not isinstance(layers, nn.Sequential) or len(layers) % 2 == 0:
            return False
        for position, layer in enumerate(layers):
            expected = nn.Linear if position % 2 == 0 else nn.ReLU
            if type(layer) is not expected:
                return False
            if isinstance(layer, nn.Linear) and layer.bias is None:
                return False
        return True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The network's output (for targets and acting: the tape is dropped)."""
        return self.forward_with_tape(x)[0]

    def forward_with_tape(self, x: torch.Tensor) -> tuple[torch.Tensor, ForwardTape]:
        """The output and the tape `backward` needs."""
        layer_inputs = [x]
        last = len(self.weights) - 1
        for index, (transposed_weight, bias) in enumerate(zip(self.transposed_weights, self.biases)):
            x = torch.addmm(bias, x, transposed_weight)
            if index < last:
                x = torch.relu(x)
                layer_inputs.append(x)
        return x, ForwardTape(layer_inputs)

    def backward(self, tape: ForwardTape, grad_output: torch.Tensor) -> list[torch.Tensor]:
        """The gradients of the loss whose gradient with respect to the network's output is
        `grad_output`, in the order of the module's `parameters()` (weight, bias, layer by layer):
        what `torch.autograd.grad(loss, parameters)` gives."""
        grads: list[torch.Tensor] = []
        grad = grad_output
        for index in range(len(self.weights) - 1, -1, -1):
            layer_input = tape.layer_inputs[index]
            grads += [grad.sum(0), grad.t().mm(layer_input)]  # bias, weight: reversed below
            if index > 0:
                # Through this layer to its input, then back through the ReLU that made it.
                grad = torch.ops.aten.threshold_backward(grad.mm(self.weights[index]), layer_input, 0)
        grads.reverse()
        return grads


def adam_step(optimizer: torch.optim.Adam, grads: list[torch.Tensor]) -> None:
    """`optimizer.step()` with `grads` as the gradients of its one parameter group, in order.

    The same update as setting each `param.grad` and calling `step()`, with the optimizer's own
    state tensors and the group's settings, but without `step()`'s per-call wrapper (profiling
    hooks, closure handling, the lazy-state walk) and without a `zero_grad`. A fused CPU Adam in
    its plain settings goes straight to the kernel `step()` ends in (`torch._fused_adam_`, after
    counting the step): for a small network that wrapper cost about twice the kernel. Any other
    setting goes through the functional Adam `step()` itself calls. The first call on a parameter
    without state goes through `step()`, so the state is created exactly as Adam creates it (a
    loaded checkpoint's state is used as it is).
    """
    (group,) = optimizer.param_groups
    params, state = group["params"], optimizer.state
    if len(grads) != len(params):
        raise ValueError(f"adam_step needs one gradient per parameter ({len(params)}), got {len(grads)}")
    if any(not state[param] for param in params):
        for param, grad in zip(params, grads):
            param.grad = grad
        optimizer.step()
        for param in params:
            param.grad = None
        return
    states = [state[param] for param in params]
    steps = [entry["step"] for entry in states]
    exp_avgs = [entry["exp_avg"] for entry in states]
    exp_avg_sqs = [entry["exp_avg_sq"] for entry in states]
    beta1, beta2 = group["betas"]
    plain_fused = (group["fused"] and not group["amsgrad"] and not group["maximize"] and not group["capturable"]
                   and not group["differentiable"] and not group["decoupled_weight_decay"])
    with torch.no_grad():  # as step() runs it: the update writes into leaf tensors
        if plain_fused:
            torch._foreach_add_(steps, 1)
            torch._fused_adam_(params, grads, exp_avgs, exp_avg_sqs, [], steps, amsgrad=False, lr=group["lr"],
                               beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"], eps=group["eps"],
                               maximize=False, grad_scale=None, found_inf=None)
            return
        functional_adam(
            params,
            grads,
            exp_avgs,
            exp_avg_sqs,
            [entry["max_exp_avg_sq"] for entry in states] if group["amsgrad"] else [],
            steps,
            foreach=group["foreach"],
            capturable=group["capturable"],
            differentiable=group["differentiable"],
            fused=group["fused"],
            decoupled_weight_decay=group["decoupled_weight_decay"],
            amsgrad=group["amsgrad"],
            beta1=beta1,
            beta2=beta2,
            lr=group["lr"],
            weight_decay=group["weight_decay"],
            eps=group["eps"],
            maximize=group["maximize"],
        )
