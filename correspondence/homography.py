"""Homography solvers and errors for the robust estimator (batched, torch).

* :func:`homography_minimal`: the exact homography through 4 correspondences, in closed form
  (the projective-basis construction). It is the unique solution of the minimal normalised DLT
  system, but costs a few element-wise operations per sample instead of an 8 x 8 solve.
* :func:`homography_sample_degenerate`: rejects samples with a (nearly) collinear triple in either
  view and samples that violate the oriented constraint (the 4 triangle orientations must agree
  across the views, Marquez-Neila et al. 2015, as in OpenCV USAC and kornia).
* :func:`homography_dlt`: weighted normalised DLT (total least squares) on any number of points.
* :func:`transfer_error`: squared one-way transfer error ``|x1 - H x0|^2`` (OpenCV's
  ``findHomography`` reprojection error).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch


__all__ = ["homography_minimal", "homography_sample_degenerate", "homography_dlt", "transfer_error",
           "transfer_design", "transfer_residual"]


def _triangle_dets(x: torch.Tensor) -> torch.Tensor:
    """``M x 4 x 2`` samples -> ``4 x M`` determinants ``[lam_1, lam_2, lam_3, det[p1 p2 p3]]``
    of the homogeneous points, where ``lam_i`` is ``det[p1 p2 p3]`` with ``p4`` replacing ``p_i``
    (twice the signed triangle areas)."""
    px, py = x.permute(2, 1, 0).contiguous().unbind(0)  # 4 x M each

    def det(a, b, c):
        return (px[b] - px[a]) * (py[c] - py[a]) - (py[b] - py[a]) * (px[c] - px[a])

    return torch.stack([det(3, 1, 2), det(0, 3, 2), det(0, 1, 3), det(0, 1, 2)])


def homography_sample_degenerate(x0: torch.Tensor, x1: torch.Tensor, min_area: float = 1e-4) -> torch.Tensor:
    """Flag degenerate 4-point samples.

    Args:
        x0, x1: ``M x 4 x 2`` sample points in Hartley-normalised coordinates (mean spread
            sqrt 2), where ``min_area`` is twice a triangle area (1e-4 is about 3 px^2 in a
            640 x 480 image).

    Returns:
        ``M`` bool: True where a triple is (nearly) collinear in either view or the orientations
        of the 4 triangles differ between the views (no orientation-preserving homography).
    """
    d0 = _triangle_dets(x0)
    d1 = _triangle_dets(x1)
    collinear = (torch.minimum(d0.abs(), d1.abs()) < min_area).any(0)
    flipped = ((d0 > 0) != (d1 > 0)).any(0)
    return collinear | flipped


def homography_minimal(x0: torch.Tensor, x1: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Homographies through 4 correspondences each.

    ``H = sum_i (mu_i lam_j lam_k) q_i (p_j x p_k)^T`` over cyclic ``(i, j, k)``, with
    ``lam = adj[p1 p2 p3] p4`` and ``mu = adj[q1 q2 q3] q4``: the map of the projective basis of
    view 0 onto that of view 1 (the unique solution of the minimal DLT system).

    Args:
        x0, x1: ``M x 4 x 2``.

    Returns:
        ``(H M x 1 x 3 x 3, ok M x 1)``; H normalised to unit Frobenius norm, ok False for
        non-finite or zero results (collinear samples).
    """
    lam = _triangle_dets(x0)[:3].T  # M x 3
    mu = _triangle_dets(x1)[:3].T
    p = x0[:, :3]
    pj, pk = p[:, [1, 2, 0]], p[:, [2, 0, 1]]
    # c_i = p_j x p_k for homogeneous (x, y, 1)
    c = torch.stack([pj[..., 1] - pk[..., 1], pk[..., 0] - pj[..., 0],
                     pj[..., 0] * pk[..., 1] - pj[..., 1] * pk[..., 0]], -1)
    q = torch.cat([x1[:, :3], torch.ones_like(x1[:, :3, :1])], -1)
    coef = mu * lam[:, [1, 2, 0]] * lam[:, [2, 0, 1]]
    H = torch.einsum("mi,mia,mib->mab", coef, q, c)
    n = H.flatten(1).norm(dim=1)
    ok = torch.isfinite(n) & (n > 0)
    H = H / torch.where(ok, n, torch.ones_like(n))[:, None, None]
    return H[:, None], ok[:, None]


def homography_dlt(x0: torch.Tensor, x1: torch.Tensor, weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Weighted DLT: ``G x 3 x 3`` homographies minimising the weighted algebraic error
    ``sum_i w_i |x1_i x (H x0_i)|^2`` (first two rows), i.e. the smallest eigenvector of ``A^T W A``.

    ``A^T W A`` is assembled from four weighted moment matrices of ``p p^T`` (``p = (x, y, 1)``)
    with weights ``w``, ``w u``, ``w v``, ``w (u^2 + v^2)``: one small batched product instead of
    materialising the ``2P x 9`` design.

    Args:
        x0, x1: ``G x P x 2`` correspondences, ideally Hartley-normalised (the estimator passes
            normalised points). weights: ``G x P`` non-negative (default 1).
    """
    G, P = x0.shape[:2]
    dt = torch.float64
    if weights is None:
        weights = torch.ones(G, P, dtype=dt, device=x0.device)
    w = weights.to(dt)
    p = torch.cat([x0.to(dt), torch.ones(G, P, 1, dtype=dt, device=x0.device)], -1)
    u, v = x1[..., 0].to(dt), x1[..., 1].to(dt)
    coef = torch.stack([w, w * u, w * v, w * (u * u + v * v)], 1)  # G x 4 x P
    mom = (coef @ (p[..., :, None] * p[..., None, :]).flatten(2)).reshape(G, 4, 3, 3)
    S, Su, Sv, Suv = mom.unbind(1)
    Z = torch.zeros_like(S)
    M = torch.cat([torch.cat([S, Z, -Su], 2), torch.cat([Z, S, -Sv], 2), torch.cat([-Su, -Sv, Suv], 2)], 1)
    M = M / M.diagonal(dim1=1, dim2=2).sum(-1).clamp_min(1e-300)[:, None, None]
    _, vecs = torch.linalg.eigh(M)
    return vecs[..., 0].reshape(G, 3, 3).to(x0.dtype)


def transfer_design(x0: torch.Tensor, x1: torch.Tensor, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
    """Linear maps ``G x 9 x 3 x P`` giving, for a flattened ``H`` (row-major), the three
    quantities ``(r_u, r_v, w)`` of each correspondence: ``w = h_3 . p`` and
    ``r_u = (u w - h_1 . p) / s1``, ``r_v = (v w - h_2 . p) / s1`` with ``p = (x, y, 1)``.
    Then :func:`transfer_residual` gives ``|x1 - pi(H x0)|^2 / s1^2``.

    Args: x0, x1: ``G x P x 2`` (normalised) points; s0 (unused), s1: ``G`` scales.
    """
    x, y = x0[..., 0], x0[..., 1]
    u, v = x1[..., 0], x1[..., 1]
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    k = (1 / s1)[:, None]
    ru = torch.stack([-x * k, -y * k, -k.expand_as(x), zero, zero, zero, u * x * k, u * y * k, u * k], 1)
    rv = torch.stack([zero, zero, zero, -x * k, -y * k, -k.expand_as(x), v * x * k, v * y * k, v * k], 1)
    w = torch.stack([zero, zero, zero, zero, zero, zero, x, y, one], 1)
    return torch.stack([ru, rv, w], 2)


def transfer_residual(lin: torch.Tensor) -> torch.Tensor:
    """``G x K x 3 x P`` outputs of :func:`transfer_design` -> ``G x K x P`` squared transfer
    errors (``inf`` for points mapped to infinity)."""
    ru, rv, w = lin.unbind(2)
    w2 = w * w
    e = (ru * ru + rv * rv) / w2
    return torch.where(w2 > 1e-20, e, torch.full_like(e, float("inf")))


def transfer_error(H: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor,
                   s0: Optional[torch.Tensor] = None, s1: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Squared one-way transfer error ``|x1 - pi(H x0)|^2``.

    Args:
        H: ``G x K x 3 x 3``. x0, x1: ``G x P x 2``.
        s1: optional ``G`` scale of view 1's normalisation; the error is divided by ``s1^2`` to
            give pixels^2. (``s0`` is accepted for a uniform error signature and unused.)

    Returns:
        ``G x K x P``; points mapped to infinity get ``inf``.
    """
    G = H.shape[0]
    one = torch.ones(G, dtype=H.dtype, device=H.device)
    D = transfer_design(x0, x1, one, one if s1 is None else s1)
    lin = (H.reshape(G, -1, 9) @ D.flatten(2)).unflatten(2, D.shape[2:])
    return transfer_residual(lin)
