"""The forward and backward passes of a plain MLP (Linear, ReLU, ..., Linear) by hand, for small
networks whose gradient step is mostly framework overhead.

Why it exists: the main job's Q-network is 64-64 wide and learns from batches of 128 rows. At that
size a gradient step's arithmetic is a few dozen microseconds, and what costs is around it: the
module calls, the autograd engine building and walking its graph, `zero_grad`. Measured on the
project's 2-core machine, a DQN gradient step with autograd took about twice as long as with the
passes written out here. Every agent takes tens of thousands of such steps a run, so this is where
a user waits.

Why it is safe: each pass calls the same ATen operations autograd would, on tensors of the same
shapes and memory layouts, so the gradients come out bit for bit as `loss.backward()` gives them
(tests/unit/test_mlp_gradients.py checks this against autograd, and DQN's networks after many
steps both ways). What autograd does for `nn.Linear` on a 2-D input, read in PyTorch's
`aten/src/ATen/native/Linear.cpp` and `tools/autograd/derivatives.yaml` (`addmm`, `mm_mat1_backward`,
`mm_mat2_backward` in `FunctionsManual.cpp`):

- forward: `addmm(bias, x, weight.t())`;
- the input's gradient: `grad.mm(weight)`;
- the weight's gradient: `grad.t().mm(x)` (`weight.t()` is column-major, so autograd computes it
  in that order and transposes the view back);
- the bias's gradient: `grad` summed over the batch;
- ReLU's backward: `threshold_backward(grad, output, 0)`.

Anything else (a convolutional encoder, other activations) keeps autograd: `MLPPasses.fits`
says whether a module can use these passes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass(frozen=True)
class ForwardTape:
    """What the backward pass needs from a forward pass: each layer's input (for the first layer,
    the batch; after it, the previous ReLU's output)."""

    layer_inputs: list[torch.Tensor]


class MLPPasses:
    """Forward and backward passes over the `nn.Linear` layers of an MLP whose hidden layers are
    followed by ReLU.

    It computes with detached aliases of the modules' parameters (the same memory, outside
    autograd, so no pass builds a graph) and sets the gradients on the parameters themselves.
    Loading a checkpoint or an average into the module copies in place, so the aliases see it."""

    def __init__(self, layers: nn.Sequential) -> None:
        if not self.fits(layers):
            raise ValueError("MLPPasses needs an nn.Sequential of Linear layers with a ReLU after each hidden one")
        linears = [layer for layer in layers if isinstance(layer, nn.Linear)]
        self.weights = [linear.weight.detach() for linear in linears]
        self.transposed_weights = [weight.t() for weight in self.weights]  # views, taken once
        self.biases = [linear.bias.detach() for linear in linears]
        self.weight_parameters = [linear.weight for linear in linears]
        self.bias_parameters = [linear.bias for linear in linears]

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
        """The network's output, without a tape (for targets and acting)."""
        last = len(self.weights) - 1
        for index, (transposed_weight, bias) in enumerate(zip(self.transposed_weights, self.biases)):
            x = torch.addmm(bias, x, transposed_weight)
            if index < last:
                x = torch.relu(x)
        return x

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

    def backward(self, tape: ForwardTape, grad_output: torch.Tensor) -> None:
        """Set each parameter's `.grad` to the gradient of the loss whose gradient with respect
        to the network's output is `grad_output` (replacing what was there, as
        `zero_grad(set_to_none=True)` then `backward()` would)."""
        grad = grad_output
        for index in range(len(self.weights) - 1, -1, -1):
            layer_input = tape.layer_inputs[index]
            self.weight_parameters[index].grad = grad.t().mm(layer_input)
            self.bias_parameters[index].grad = grad.sum(0)
            if index > 0:
                # Through this layer to its input, then back through the ReLU that made it.
                grad = torch.ops.aten.threshold_backward(grad.mm(self.weights[index]), layer_input, 0)


def fused_adam_step(optimizer: torch.optim.Adam) -> None:
    """`optimizer.step()` for a CPU Adam built with `fused=True`: the same kernel with the same
    arguments (so the same bits), without what `step()` wraps around it (profiling hooks, grad-mode
    switches, the state's lazy set-up, grouping tensors by device), which cost a 64-64 network's
    step about three times the kernel. The first step, and any setting not written out here
    (several groups, amsgrad, maximize, decoupled weight decay), go through `step()`."""
    group = optimizer.param_groups[0]
    params = group["params"]
    if (len(optimizer.param_groups) != 1 or not group["fused"] or group["amsgrad"] or group["maximize"]
            or group.get("decoupled_weight_decay", False) or len(optimizer.state) != len(params)
            or any(param.grad is None for param in params)):
        optimizer.step()
        return
    states = [optimizer.state[param] for param in params]
    steps = [state["step"] for state in states]
    beta1, beta2 = group["betas"]
    torch._foreach_add_(steps, 1)
    torch._fused_adam_(params, [param.grad for param in params], [state["exp_avg"] for state in states],
                       [state["exp_avg_sq"] for state in states], [], steps, amsgrad=False, lr=group["lr"],
                       beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"], eps=group["eps"],
                       maximize=False, grad_scale=None, found_inf=None)
