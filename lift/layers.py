"""Small building blocks shared by the networks."""
from __future__ import annotations

import math

import torch
import torch.nn as nn

__all__ = ["ghh", "ghh_piece_major", "piece_major_order", "GHH", "centre_patches", "normalize_patches", "max_filter", "MaxPool", "conv_stack",
           "output_shape"]


def ghh(x: torch.Tensor, num_sum: int, num_max: int, dim: int = 1) -> torch.Tensor:
    """Generalised hinging hyperplanes (TILDE's piecewise-linear activation).

    Splits ``dim`` (size ``C * num_sum * num_max``) into groups of ``num_max`` consecutive
    channels, takes the max within each group, then a signed sum over ``num_sum`` consecutive
    maxima with alternating signs (+1, -1, +1, ...):
    ``h = sum_n delta_n max_m (x_{n,m})``, ``delta_n = (-1)^n``.

    Args:
        x: tensor whose ``dim`` has size ``C * num_sum * num_max``.

    Returns:
        tensor with ``dim`` of size ``C``.
    """
    dim = dim % x.ndim
    c = x.shape[dim]
    if c % (num_sum * num_max):
        raise ValueError(f"GHH needs a multiple of {num_sum * num_max} channels, got {c}")
    shape = x.shape[:dim] + (c // (num_sum * num_max), num_sum, num_max) + x.shape[dim + 1:]
    v = x.reshape(shape)
    if dim == x.ndim - 1:  # pieces innermost: elementwise maxima of slices (2-3x faster)
        y = v.select(dim + 2, 0)
        for m in range(1, num_max):
            y = torch.maximum(y, v.select(dim + 2, m))
    else:  # pieces strided (e.g. channels of an image): one reduction is faster
        y = v.amax(dim + 2)
    out = y.select(dim + 1, 0)
    for n in range(1, num_sum):
        out = out - y.select(dim + 1, n) if n % 2 else out + y.select(dim + 1, n)
    return out


def piece_major_order(units: int, num_sum: int, num_max: int) -> torch.Tensor:
    """Permutation ``perm`` of ``units`` GHH inputs (laid out as :func:`ghh` groups them:
    ``(C, num_sum, num_max)``, pieces innermost) into the piece-major layout
    ``(num_max, num_sum, C)`` that :func:`ghh_piece_major` reads: ``x_new = x[..., perm]``
    (for a linear or convolution layer: ``weight[perm]``, ``bias[perm]``)."""
    c = units // (num_sum * num_max)
    m, n, k = torch.meshgrid(torch.arange(num_max), torch.arange(num_sum), torch.arange(c),
                             indexing="ij")
    return (k * num_sum * num_max + n * num_max + m).reshape(-1)


def ghh_piece_major(x: torch.Tensor, num_sum: int, num_max: int, dim: int = -1) -> torch.Tensor:
    """:func:`ghh` for inputs in the piece-major layout of :func:`piece_major_order`: along
    ``dim`` (size ``num_max * num_sum * C``) the ``num_max`` pieces are contiguous blocks of
    ``num_sum * C`` and the groups ``C``-blocks within them, so the maxima and the signed sum
    are elementwise ops on contiguous slices (several times faster than :func:`ghh`'s strided
    groups). Returns ``x`` with ``dim`` of size ``C``."""
    block = x.shape[dim] // num_max
    y = x.narrow(dim, 0, block)
    for m in range(1, num_max):
        y = torch.maximum(y, x.narrow(dim, m * block, block))
    c = block // num_sum
    out = y.narrow(dim, 0, c)
    for n in range(1, num_sum):
        part = y.narrow(dim, n * c, c)
        out = out - part if n % 2 else out + part
    return out


class GHH(nn.Module):
    """:func:`ghh` over the last dimension as a module (``N x (C num_sum num_max)`` ->
    ``N x C``), so that an inference copy can swap it for an equivalent layout
    (:class:`lift.inference.BlockGHH`)."""

    def __init__(self, num_sum: int, num_max: int):
        super().__init__()
        self.num_sum, self.num_max = int(num_sum), int(num_max)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ghh(x, self.num_sum, self.num_max)

    def extra_repr(self) -> str:
        return f"num_sum={self.num_sum}, num_max={self.num_max}"


def centre_patches(x: torch.Tensor):
    """``B x C x S x S`` patches minus their means, and their standard deviations (``B x C``,
    Bessel-corrected), both statistics detached (as kornia's HardNet does: gradients through
    the statistics destabilise detector training).

    Two-pass statistics: the spread is measured on the centred patch, as a norm (no squared
    copy). ``E[x^2] - E[x]^2`` in float32 loses faint texture on a bright patch to
    cancellation: for a texture of amplitude 0.002 on a 0.9 background it put standardised
    values off by up to 0.33 (in units of the spread)."""
    n = x.shape[-2] * x.shape[-1]
    centred = x - x.detach().flatten(-2).mean(-1)[..., None, None]
    sd = torch.linalg.vector_norm(centred.detach().flatten(-2), dim=-1) / math.sqrt(max(n - 1, 1))
    return centred, sd


def normalize_patches(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-patch standardisation of ``B x 1 x S x S`` patches: ``(x - mean) / (std + eps)``
    with the statistics of :func:`centre_patches` (detached, two-pass)."""
    centred, sd = centre_patches(x)
    return centred / (sd[..., None, None] + eps)


def max_filter(x: torch.Tensor, radius: int) -> torch.Tensor:
    """``(2r+1) x (2r+1)`` maximum filter over the last two dims (outside = -inf), the same as
    ``F.max_pool2d(x, 2r+1, stride=1, padding=r)``. Separable, and each 1-D pass is a doubling
    scheme of elementwise maxima of shifted views (windows 1, 2, 4, ... then two overlapping
    windows cover 2r+1): ``O(log r)`` full-map ops per axis, ~3x faster on CPU than a reduction
    over unfolded windows and ~40x faster than ``max_pool2d`` on single-channel maps."""
    if radius <= 0:
        return x
    k = 2 * radius + 1
    p = torch.nn.functional.pad(x, (radius, radius, radius, radius), value=float("-inf"))
    return _max_1d(_max_1d(p, k, -1), k, -2)


def _max_1d(p: torch.Tensor, k: int, dim: int) -> torch.Tensor:
    """Sliding maximum over windows of ``k`` along ``dim`` (output ``k - 1`` shorter)."""
    n = p.shape[dim] - k + 1
    m, size = p, 1
    while 2 * size <= k:  # m[i] = max(p[i : i + 2 size])
        m = torch.maximum(m.narrow(dim, 0, m.shape[dim] - size), m.narrow(dim, size, m.shape[dim] - size))
        size *= 2
    return torch.maximum(m.narrow(dim, 0, n), m.narrow(dim, k - size, n))


class MaxPool(nn.Module):
    """``p x p`` max pooling with stride ``p`` (``nn.MaxPool2d(p)``: no padding, floor mode),
    computed as the elementwise maximum of ``p^2`` strided views: same values, 2-3x faster on
    CPU for the small maps of the patch networks (notably in bfloat16 / channels-last)."""

    def __init__(self, kernel_size: int):
        super().__init__()
        self.kernel_size = int(kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.kernel_size
        ho, wo = x.shape[-2] // p * p, x.shape[-1] // p * p
        out = x[..., 0:ho:p, 0:wo:p]
        for i in range(p):
            for j in range(p):
                if i or j:
                    out = torch.maximum(out, x[..., i:ho:p, j:wo:p])
        return out

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}"


def conv_stack(channels, kernels, strides, pools, batch_norm: bool, pool=MaxPool,
               linear_last: bool = False) -> nn.Sequential:
    """Conv stages on 1-channel patches: ``conv -> [BN] -> ReLU -> [pool]`` per stage (a pool
    only where its size is > 1). With ``linear_last`` the last stage is a plain biased
    convolution (no BN, no ReLU), as a descriptor's output layer."""
    layers, cin = [], 1
    last = len(channels) - 1
    for i, (cout, k, s, p) in enumerate(zip(channels, kernels, strides, pools)):
        plain = linear_last and i == last
        layers.append(nn.Conv2d(cin, cout, k, stride=s, bias=not batch_norm or plain))
        if not plain:
            if batch_norm:
                layers.append(nn.BatchNorm2d(cout))
            layers.append(nn.ReLU(inplace=True))
        if p > 1:
            layers.append(pool(p))
        cin = cout
    return nn.Sequential(*layers)


def output_shape(stack: nn.Module, size: int) -> torch.Size:
    """Output shape of ``stack`` for one ``1 x 1 x size x size`` input (run in eval mode)."""
    with torch.no_grad():
        was = stack.training
        stack.eval()
        shape = stack(torch.zeros(1, 1, size, size)).shape
        stack.train(was)
    return shape
