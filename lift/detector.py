"""TILDE-like keypoint detector: one convolution + piecewise-linear (GHH) activation.

A single ``k x k`` convolution with ``num_sum * num_max`` filters on the grey image, followed by
the GHH activation (max over groups of ``num_max`` responses, then a signed sum of ``num_sum``
maxima with alternating signs), gives one score map. No batch norm: the detector runs on whole
images at test time (LIFT, section 1.2 of the method notes).

Scale convention: the network looks at the image resized by ``px_per_sigma / sigma`` for the
scale sigma, so its ``k x k`` window covers ``k * sigma / px_per_sigma`` image pixels. The
paper configuration (``kernel_size=25``, ``px_per_sigma=47/24``) sees +-6.1 sigma. The shipped
model uses a half-resolution variant (``kernel_size=13``, ``px_per_sigma=23/24``): the same
support in sigma units at a quarter of the pixels (see ``BENCHMARKS.md`` for the timing).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import ghh

__all__ = ["Detector"]


class Detector(nn.Module):
    """TILDE-style score network.

    Args:
        kernel_size: side of the convolution window in pixels of the resized image (odd).
        num_sum: GHH sum groups (paper: 4). num_max: GHH max pieces per group (paper: 4).
        px_per_sigma: pixels of the resized image per unit of keypoint scale sigma.

    Shapes:
        ``forward``: ``B x 1 x H x W`` image in [0, 1] -> ``B x 1 x (H-k+1) x (W-k+1)`` scores
        ("valid" convolution, score ``[i, j]`` belongs to input pixel ``(i + k//2, j + k//2)``).
        ``score_map``: same, padded with ``-inf`` to ``B x 1 x H x W``.
    """

    def __init__(self, kernel_size: int = 25, num_sum: int = 4, num_max: int = 4,
                 px_per_sigma: float = 47.0 / 24.0):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError("Detector kernel_size must be odd")
        self.config = dict(kernel_size=int(kernel_size), num_sum=int(num_sum),
                           num_max=int(num_max), px_per_sigma=float(px_per_sigma))
        self.kernel_size = kernel_size
        self.num_sum, self.num_max = num_sum, num_max
        self.px_per_sigma = px_per_sigma
        self.conv = nn.Conv2d(1, num_sum * num_max, kernel_size)
        fan_in = kernel_size * kernel_size
        nn.init.trunc_normal_(self.conv.weight, std=2.0 / fan_in, a=-4.0 / fan_in, b=4.0 / fan_in)
        nn.init.zeros_(self.conv.bias)

    @property
    def border(self) -> int:
        """Pixels lost on each side by the valid convolution."""
        return self.kernel_size // 2

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.ndim != 4 or image.shape[1] != 1:
            raise ValueError(f"Detector expects B x 1 x H x W images, got {tuple(image.shape)}")
        if min(image.shape[-2:]) < self.kernel_size:
            raise ValueError(f"image of size {tuple(image.shape[-2:])} is smaller than the "
                             f"detector window ({self.kernel_size} px)")
        x = (image - 0.5) * 2.0  # LIFT's "hardcoded" normalisation (mean 128, std 128)
        return ghh(self.conv(x), self.num_sum, self.num_max, dim=1)

    def score_map(self, image: torch.Tensor) -> torch.Tensor:
        """Scores at every input pixel; the ``k//2`` border that the window cannot see is -inf."""
        b = self.border
        return F.pad(self(image), (b, b, b, b), value=-math.inf)
