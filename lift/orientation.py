"""Orientation estimator (Yi et al. CVPR'16, as used in LIFT): patch -> (cos, sin) -> angle.

Three conv + pool stages, then two fully connected layers, each followed by the GHH(4, 4)
piecewise-linear activation (section 1.5 of the method notes). The paper configuration works on
64 x 64 patches; the shipped model uses 32 x 32 patches with a strided first convolution (see
``lift/weights/README.md``).

Angle convention: the returned angle theta (radians) is measured from the image +x axis towards
+y (y down), i.e. clockwise on screen, the sense of OpenCV and COLMAP. Re-sampling the patch with
its x axis along ``(cos theta, sin theta)`` gives the canonical (upright) patch.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import GHH, conv_stack, normalize_patches, output_shape

__all__ = ["Orientation"]


class Orientation(nn.Module):
    """Orientation network.

    Args:
        input_size: patch side S in pixels. channels / kernels / strides / pools: conv stages.
        hidden: GHH output units of the first fully connected layer (paper: 100).
        num_sum, num_max: GHH groups (paper: 4, 4).
        batch_norm: BN after the convolutions (tf-lift default).

    Shapes:
        ``forward``: ``N x 1 x S x S`` patches in [0, 1] -> ``N x 2`` unit (cos, sin).
        ``angle``: ``N x 1 x S x S`` -> ``N`` radians in (-pi, pi].
    """

    def __init__(self, input_size: int = 64, channels: Sequence[int] = (10, 20, 50),
                 kernels: Sequence[int] = (5, 5, 3), strides: Sequence[int] = (1, 1, 1),
                 pools: Sequence[int] = (2, 2, 2), hidden: int = 100, num_sum: int = 4,
                 num_max: int = 4, batch_norm: bool = True):
        super().__init__()
        self.config = dict(input_size=int(input_size), channels=list(channels),
                           kernels=list(kernels), strides=list(strides), pools=list(pools),
                           hidden=int(hidden), num_sum=int(num_sum), num_max=int(num_max),
                           batch_norm=bool(batch_norm))
        self.input_size = input_size
        self.num_sum, self.num_max = num_sum, num_max
        self.features = conv_stack(channels, kernels, strides, pools, batch_norm)
        flat = output_shape(self.features, input_size).numel()
        g = num_sum * num_max
        self.fc1 = nn.Linear(flat, hidden * g)
        self.fc2 = nn.Linear(hidden, 2 * g)
        self.act1, self.act2 = GHH(num_sum, num_max), GHH(num_sum, num_max)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        if patches.ndim != 4 or patches.shape[1:] != (1, self.input_size, self.input_size):
            raise ValueError(f"Orientation expects N x 1 x {self.input_size} x {self.input_size} "
                             f"patches, got {tuple(patches.shape)}")
        return self.forward_standardized(normalize_patches(patches))

    def forward_standardized(self, x: torch.Tensor) -> torch.Tensor:
        """``forward`` for patches already standardised by :func:`lift.layers.normalize_patches`
        (the runtime standardises in float32 before running the network in bfloat16)."""
        x = self.features(x).flatten(1).to(self.fc1.weight.dtype)  # conv stages may be bfloat16
        x = self.act2(self.fc2(self.act1(self.fc1(x))))
        # LIFT's output normalisation: divide by the max-abs value, nudge away from zero,
        # then L2-normalise to (cos, sin)
        x = x / x.abs().amax(1, keepdim=True).clamp_min(1e-12)
        x = x + torch.where(x >= 0, 1e-3, -1e-3)
        return F.normalize(x, dim=1)

    def angle(self, patches: torch.Tensor) -> torch.Tensor:
        cs = self(patches)
        return torch.atan2(cs[:, 1], cs[:, 0])
