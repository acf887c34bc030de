"""Shared two-view geometry helpers for the robust estimators.

Everything here is batched over a leading problem dimension ``B`` and works in the dtype and
on the device of its inputs. Points are ``(x, y)`` pixels (top-left pixel centre at (0, 0)) or
normalised camera coordinates; 3 x 3 matrices act on homogeneous column vectors.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import numpy as np
import torch

ArrayLike = Union[np.ndarray, torch.Tensor]


def as_points(x: ArrayLike, name: str, device=None, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Convert numpy / torch input to a floating tensor (float64 stays float64, the rest -> float32)."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    elif not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}")
    if device is not None:
        x = x.to(device)
    if dtype is None:
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    if x.dtype.is_complex or x.dtype == torch.bool:
        raise TypeError(f"{name} must be real-valued, got {x.dtype}")
    return x.to(dtype)


def batch_correspondences(src: ArrayLike, dst: ArrayLike, mask: Optional[ArrayLike] = None,
                          weights: Optional[ArrayLike] = None, device=None):
    """Validate and batch two correspondence sets.

    Args:
        src, dst: ``N x 2`` or ``B x N x 2`` (numpy or torch); same shape.
        mask: optional ``N`` / ``B x N`` validity mask for padded sets (True = real match).
        weights: optional ``N`` / ``B x N`` non-negative prior per match.

    Returns:
        ``(x0 B x N x 2, x1 B x N x 2, valid B x N bool, weights B x N or None, batched)``;
        ``valid`` is False where the mask is False or a coordinate is NaN / infinite (those
        coordinates are replaced by 0 so that no NaN reaches the solvers).

    Raises:
        ValueError: shapes that are not ``(N, 2)`` / ``(B, N, 2)`` or that differ.
    """
    x0 = as_points(src, "src", device)
    x1 = as_points(dst, "dst", x0.device, x0.dtype)
    if x0.ndim not in (2, 3) or x0.shape[-1] != 2:
        raise ValueError(f"src must be N x 2 or B x N x 2, got shape {tuple(x0.shape)}")
    if x1.shape != x0.shape:
        raise ValueError(f"src and dst shapes differ: {tuple(x0.shape)} vs {tuple(x1.shape)}")
    batched = x0.ndim == 3
    if not batched:
        x0, x1 = x0[None], x1[None]
    B, N = x0.shape[:2]

    def _per_match(v, name, dtype):
        t = v if isinstance(v, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(v))
        t = t.to(x0.device)
        if not batched:
            t = t[None]
        if tuple(t.shape) != (B, N):
            want = (B, N) if batched else (N,)
            raise ValueError(f"{name} must have shape {want}, got {tuple(t.shape) if batched else tuple(t.shape[1:])}")
        return t.to(dtype)

    valid = torch.ones(B, N, dtype=torch.bool, device=x0.device)
    if mask is not None:
        valid = _per_match(mask, "mask", torch.bool)
    valid = valid & torch.isfinite(x0).all(-1) & torch.isfinite(x1).all(-1)
    w = None
    if weights is not None:
        w = _per_match(weights, "weights", x0.dtype)
        w = torch.where(torch.isfinite(w), w, torch.zeros_like(w)).clamp_min(0)
    x0 = torch.where(valid[..., None], x0, torch.zeros_like(x0))
    x1 = torch.where(valid[..., None], x1, torch.zeros_like(x1))
    return x0, x1, valid, w, batched


def normalizing_transform(x: torch.Tensor, valid: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Hartley normalisation per problem: centroid to 0, mean distance sqrt(2).

    Args:
        x: ``B x N x 2`` points. valid: ``B x N`` bool.

    Returns:
        ``(T B x 3 x 3, scale B)`` with ``T = [[s, 0, -s cx], [0, s, -s cy], [0, 0, 1]]``;
        problems without valid points get the identity.
    """
    w = valid.to(x.dtype)
    n = w.sum(1).clamp_min(1)
    c = (x * w[..., None]).sum(1) / n[:, None]
    d = ((x - c[:, None]).norm(dim=-1) * w).sum(1) / n
    s = torch.where(d > 1e-12, 2 ** 0.5 / d.clamp_min(1e-12), torch.ones_like(d))
    T = torch.zeros(x.shape[0], 3, 3, dtype=x.dtype, device=x.device)
    T[:, 0, 0] = s
    T[:, 1, 1] = s
    T[:, 0, 2] = -s * c[:, 0]
    T[:, 1, 2] = -s * c[:, 1]
    T[:, 2, 2] = 1
    return T, s


def homogeneous_rows(x: torch.Tensor) -> torch.Tensor:
    """``G x P x 2`` points -> ``G x 3 x P`` homogeneous coordinates as rows ``(x, y, 1)``."""
    return torch.cat([x.transpose(1, 2), torch.ones_like(x[:, None, :, 0])], 1)


def apply_similarity(T: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Apply ``B x 3 x 3`` similarity/affine transforms to ``B x N x 2`` points."""
    return x @ T[:, :2, :2].transpose(1, 2) + T[:, None, :2, 2]


def smallest_eigenvector(M: torch.Tensor, init: Optional[torch.Tensor] = None, steps: int = 3) -> torch.Tensor:
    """Unit eigenvector of the smallest eigenvalue of symmetric PSD ``G x D x D`` matrices.

    Without ``init``: ``torch.linalg.eigh``. With ``init`` (``G x D``, e.g. the model being
    refined), ``steps`` inverse iterations ``v <- (M + eps I)^-1 v`` instead: one batched
    ``D x D`` LU solve each, some 20x cheaper than the eigen-decomposition on CPU, and exact to
    ``(lambda_1 / lambda_2)^steps`` (tiny for a well-posed fit). Rows whose iteration breaks
    down (non-finite) fall back to ``eigh``. Computed in float64; returns ``M``'s dtype.
    """
    M64 = M.double()
    M64 = M64 / M64.diagonal(dim1=1, dim2=2).sum(-1).clamp_min(1e-300)[:, None, None]
    if init is None:
        return torch.linalg.eigh(M64)[1][..., 0].to(M.dtype)
    D = M64.shape[-1]
    LU, piv, _ = torch.linalg.lu_factor_ex(M64 + 1e-13 * torch.eye(D, dtype=M64.dtype, device=M64.device))
    v = init.double().reshape(-1, D, 1)
    # no normalisation between the steps: the trace-normalised matrix's eigenvalues are
    # >= 1e-13, so a step grows the vector by at most 1e13 (far from float64 overflow)
    v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-300)
    for _ in range(steps):
        v = torch.linalg.lu_solve(LU, piv, v)
    v = v[..., 0]
    n = v.norm(dim=1, keepdim=True)
    v = v / n.clamp_min(1e-300)
    bad = ~torch.isfinite(n[:, 0]) | (n[:, 0] < 1e-200)
    if bool(bad.any()):
        v[bad] = torch.linalg.eigh(M64[bad])[1][..., 0]
    return v.to(M.dtype)


def weighted_nullvector(A: torch.Tensor, w: torch.Tensor, init: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Unit vector minimising ``sum_i w_i (a_i . h)^2`` (weighted total least squares).

    Args:
        A: ``G x R x D`` design rows. w: ``G x R`` non-negative weights.
        init: optional ``G x D`` starting guess (see :func:`smallest_eigenvector`).

    Returns:
        ``G x D`` eigenvector of the smallest eigenvalue of ``A^T W A``, computed in float64.
    """
    A64 = A.double()
    M = (A64 * w.double()[..., None]).transpose(1, 2) @ A64
    return smallest_eigenvector(M, init).to(A.dtype)


def epipolar_rows(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """Rows of the epipolar constraint ``x1^T F x0 = 0`` for ``F`` flattened row-major.

    Args: x0, x1: ``... x 2``. Returns ``... x 9``.
    """
    u0, v0 = x0[..., 0], x0[..., 1]
    u1, v1 = x1[..., 0], x1[..., 1]
    one = torch.ones_like(u0)
    return torch.stack([u1 * u0, u1 * v0, u1, v1 * u0, v1 * v0, v1, u0, v0, one], -1)


def sampson_error(F: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor,
                  s0: Optional[torch.Tensor] = None, s1: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Squared Sampson distance of correspondences to epipolar geometries.

    Args:
        F: ``G x H x 3 x 3`` fundamental / essential matrices (``x1^T F x0 = 0``).
        x0, x1: ``G x P x 2`` points in the coordinates ``F`` acts on.
        s0, s1: optional ``G`` scales of isotropic normalisations ``x_n = s x + t`` of each image;
            with them the distance is in the un-normalised units (pixels).

    Returns:
        ``G x H x P`` squared distances.
    """
    f = F.reshape(*F.shape[:2], 9)[..., None, :]  # G x H x 1 x 9
    u0, v0 = x0[:, None, :, 0], x0[:, None, :, 1]
    u1, v1 = x1[:, None, :, 0], x1[:, None, :, 1]
    # l1 = F x0 (line in image 1), l0 = F^T x1 (line in image 0)
    l1a = f[..., 0] * u0 + f[..., 1] * v0 + f[..., 2]
    l1b = f[..., 3] * u0 + f[..., 4] * v0 + f[..., 5]
    l1c = f[..., 6] * u0 + f[..., 7] * v0 + f[..., 8]
    r = u1 * l1a + v1 * l1b + l1c
    l0a = f[..., 0] * u1 + f[..., 3] * v1 + f[..., 6]
    l0b = f[..., 1] * u1 + f[..., 4] * v1 + f[..., 7]
    g1 = l1a * l1a + l1b * l1b
    g0 = l0a * l0a + l0b * l0b
    if s1 is not None:
        g1 = g1 * (s1 * s1)[:, None, None]
    if s0 is not None:
        g0 = g0 * (s0 * s0)[:, None, None]
    return r * r / (g0 + g1).clamp_min(torch.finfo(F.dtype).tiny)


def skew(t: torch.Tensor) -> torch.Tensor:
    """``... x 3`` vectors -> ``... x 3 x 3`` cross-product matrices ``[t]_x``."""
    z = torch.zeros_like(t[..., 0])
    return torch.stack([z, -t[..., 2], t[..., 1], t[..., 2], z, -t[..., 0], -t[..., 1], t[..., 0], z],
                       -1).reshape(*t.shape[:-1], 3, 3)
