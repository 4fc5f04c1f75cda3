"""What turns an observation into the features a value or policy head reads.

Vector observations are flattened (the MLP's input is the whole vector). Image observations
(a Box of shape (height, width, channels), uint8 in [0, 255], PettingZoo's convention: e.g.
pistonball's 457 x 120 x 3) go through the convolutional torso of the DQN paper (Mnih et al.
2015: 32 filters 8x8 stride 4, 64 4x4 stride 2, 64 3x3 stride 1, ReLU after each): flattening
such an image into an MLP's first layer makes that layer alone tens of millions of weights (one
4-piston pistonball agent's MLP checkpoint was 84 MB), and it sees no locality.
"""

from __future__ import annotations

from typing import Literal

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn

from protocols.codec.spaces import is_image_space

EncoderKind = Literal["auto", "mlp", "cnn"]

# (out channels, kernel, stride) of each convolution: the DQN paper's torso.
CONV_LAYERS = ((32, 8, 4), (64, 4, 2), (64, 3, 1))
# The smallest side those three layers accept: 8 + 4*(4 - 1) + 4*2*(3 - 1) = 36 pixels.
MIN_IMAGE_SIDE = 36


def choose_encoder(kind: EncoderKind, space: gym.spaces.Box) -> Literal["mlp", "cnn"]:
    """`auto`: the CNN for image observations, the flattening MLP input otherwise. `cnn` on a
    space that is not an image is an error naming what was expected."""
    if kind == "auto":
        return "cnn" if is_image_space(space) and min(space.shape[:2]) >= MIN_IMAGE_SIDE else "mlp"
    if kind == "cnn":
        if not is_image_space(space):
            raise ValueError(f"encoder 'cnn' needs image observations (a uint8 Box shaped (height, width, "
                             f"channels) with 1, 3 or 4 channels), got {space!r}; use encoder 'mlp'")
        if min(space.shape[:2]) < MIN_IMAGE_SIDE:
            raise ValueError(f"encoder 'cnn' needs images at least {MIN_IMAGE_SIDE} pixels on each side, "
                             f"got {space.shape[0]} x {space.shape[1]}; use encoder 'mlp'")
    return kind


class ConvEncoder(nn.Module):
    """Images (batch, height, width, channels), uint8 values as floats in [0, 255], to a flat
    feature vector of `out_features`."""

    def __init__(self, image_shape: tuple[int, int, int]) -> None:
        super().__init__()
        height, width, channels = image_shape
        layers: list[nn.Module] = []
        for out_channels, kernel, stride in CONV_LAYERS:
            layers += [nn.Conv2d(channels, out_channels, kernel, stride), nn.ReLU()]
            channels = out_channels
        self.torso = nn.Sequential(*layers, nn.Flatten())
        with torch.no_grad():
            self.out_features = int(self.torso(torch.zeros(1, image_shape[2], height, width)).shape[1])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # Channels last (PettingZoo) to channels first (torch's convolutions), scaled to [0, 1].
        return self.torso(images.permute(0, 3, 1, 2) / 255.0)
