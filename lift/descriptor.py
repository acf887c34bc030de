"""DeepDesc-style descriptor: three conv stages -> D-dimensional, L2-normalised vector.

Paper configuration (DeepDesc CNN3 / tf-lift, section 1.6 of the method notes): 64 x 64 input,
conv 7x7/32 -> pool 2, conv 6x6/64 -> pool 3, conv 5x5/128 -> pool 4, giving 128-D. As in
tf-lift we use ReLU + batch norm instead of tanh + L2 pooling + subtractive normalisation
("no significant difference"), and per-patch standardisation of the input (statistics
detached). The output is L2-normalised (DeepDesc's is not), so that descriptor distances are in
[0, 2] and match OpenCV's ``NORM_L2`` habits.

The shipped model uses a 32 x 32 variant with a strided first convolution for speed (see
``lift/weights/README.md`` and ``BENCHMARKS.md``).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import conv_stack, normalize_patches, output_shape

__all__ = ["Descriptor"]


class Descriptor(nn.Module):
    """DeepDesc-style CNN.

    Args:
        input_size: patch side S. channels / kernels / strides / pools: the three conv stages
            (the last stage's channel count is the descriptor dimension D).
        batch_norm: BN after each conv except the last.

    Shapes:
        ``N x 1 x S x S`` patches in [0, 1] -> ``N x D`` float, unit L2 norm.
    """

    def __init__(self, input_size: int = 64, channels: Sequence[int] = (32, 64, 128),
                 kernels: Sequence[int] = (7, 6, 5), strides: Sequence[int] = (1, 1, 1),
                 pools: Sequence[int] = (2, 3, 4), batch_norm: bool = True):
        super().__init__()
        self.config = dict(input_size=int(input_size), channels=list(channels),
                           kernels=list(kernels), strides=list(strides), pools=list(pools),
                           batch_norm=bool(batch_norm))
        self.input_size = input_size
        self.features = conv_stack(channels, kernels, strides, pools, batch_norm,
                                   pool=nn.AvgPool2d, linear_last=True)
        out = output_shape(self.features, input_size)
        if out[-2:] != (1, 1):
            raise ValueError(f"descriptor layers leave a {tuple(out[-2:])} map for "
                             f"{input_size} px input; they must reduce it to 1 x 1")
        self.dim = int(channels[-1])
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        if patches.ndim != 4 or patches.shape[1:] != (1, self.input_size, self.input_size):
            raise ValueError(f"Descriptor expects N x 1 x {self.input_size} x {self.input_size} "
                             f"patches, got {tuple(patches.shape)}")
        return self.forward_standardized(normalize_patches(patches))

    def forward_standardized(self, x: torch.Tensor) -> torch.Tensor:
        """``forward`` for patches already standardised by :func:`lift.layers.normalize_patches`
        (the runtime standardises in float32 before running the network in bfloat16)."""
        return F.normalize(self.features(x).flatten(1), dim=1)
