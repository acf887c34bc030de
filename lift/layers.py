"""Small building blocks shared by the networks."""
from __future__ import annotations

import torch

__all__ = ["ghh", "normalize_patches"]


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
    y = x.reshape(shape).amax(dim + 2)
    sign = torch.ones(num_sum, dtype=x.dtype, device=x.device)
    sign[1::2] = -1
    view = [1] * y.ndim
    view[dim + 1] = num_sum
    return (y * sign.view(view)).sum(dim + 1)


def normalize_patches(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-patch standardisation of ``B x 1 x S x S`` patches (statistics detached, as kornia's
    HardNet does: gradients through the statistics destabilise detector training)."""
    var, mean = torch.var_mean(x.detach(), dim=(-2, -1), keepdim=True)
    return (x - mean) / (var.sqrt() + eps)
