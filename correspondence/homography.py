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

from .geometry import homogeneous_rows, smallest_eigenvector

__all__ = ["homography_minimal", "homography_minimal_soa", "homography_sample_degenerate",
           "homography_degenerate_soa", "homography_dlt", "transfer_error",
           "transfer_error_rows"]


def _triangle_dets(px: torch.Tensor, py: torch.Tensor) -> torch.Tensor:
    """``4 x M`` sample coordinates (point-major rows) -> ``4 x M`` determinants
    ``[lam_1, lam_2, lam_3, det[p1 p2 p3]]`` of the homogeneous points, where ``lam_i`` is
    ``det[p1 p2 p3]`` with ``p4`` replacing ``p_i`` (twice the signed triangle areas)."""
    dx = px - px[0]  # every point relative to p1: the dets with p1 share these differences
    dy = py - py[0]
    lam1 = (px[1] - px[3]) * (py[2] - py[3]) - (py[1] - py[3]) * (px[2] - px[3])
    lam2 = dx[3] * dy[2] - dy[3] * dx[2]
    lam3 = dx[1] * dy[3] - dy[1] * dx[3]
    d123 = dx[1] * dy[2] - dy[1] * dx[2]
    return torch.stack([lam1, lam2, lam3, d123])


def homography_degenerate_soa(soa: torch.Tensor, min_area: float = 1e-4) -> torch.Tensor:
    """:func:`homography_sample_degenerate` on samples stored component-major: ``soa`` is
    ``4 x 4 x M`` = (x0, y0, x1, y1) x point x sample (contiguous per-sample vectors, which is
    what makes the test a handful of element-wise operations on ``M``-vectors). Returns ``M`` bool."""
    d0 = _triangle_dets(soa[0], soa[1])
    d1 = _triangle_dets(soa[2], soa[3])
    # |d| where the orientations agree, negative where they differ; then the smallest of 8
    m = torch.minimum(d0 * d1.sign(), d1 * d0.sign())
    m = torch.minimum(torch.minimum(m[0], m[1]), torch.minimum(m[2], m[3]))  # (reductions over dim 0 are slow)
    return m < min_area


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
    return homography_degenerate_soa(torch.cat([x0, x1], 2).permute(2, 1, 0), min_area)


def homography_minimal_soa(soa: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`homography_minimal` on component-major samples ``4 x 4 x M`` (x0, y0, x1, y1) x
    point x sample. Returns ``(H M x 1 x 3 x 3, ok M x 1)``."""
    x0, y0, x1, y1 = soa.unbind(0)  # 4 x M each
    lam = _triangle_dets(x0, y0)
    mu = _triangle_dets(x1, y1)
    # c_i = p_j x p_k for homogeneous p = (x, y, 1); q_i = coef_i (u_i, v_i, 1), coef_i = mu_i lam_j lam_k
    cyc = ((0, 1, 2), (1, 2, 0), (2, 0, 1))
    c, q = [], []
    for i, j, k in cyc:
        c.append((y0[j] - y0[k], x0[k] - x0[j], x0[j] * y0[k] - y0[j] * x0[k]))
        coef = mu[i] * lam[j] * lam[k]
        q.append((x1[i] * coef, y1[i] * coef, coef))
    H = torch.stack([q[0][r] * c[0][col] + q[1][r] * c[1][col] + q[2][r] * c[2][col]
                     for r in range(3) for col in range(3)])  # 9 x M
    H = H.T.contiguous()  # M x 9
    n = H.norm(dim=1)
    ok = torch.isfinite(n) & (n > 0)
    H = H / torch.where(ok, n, torch.ones_like(n))[:, None]
    return H.reshape(-1, 1, 3, 3), ok[:, None]


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
    return homography_minimal_soa(torch.cat([x0, x1], 2).permute(2, 1, 0))


def homography_dlt(x0: torch.Tensor, x1: torch.Tensor, weights: Optional[torch.Tensor] = None,
                   init: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Weighted DLT: ``G x 3 x 3`` homographies minimising the weighted algebraic error
    ``sum_i w_i |x1_i x (H x0_i)|^2`` (first two rows), i.e. the smallest eigenvector of ``A^T W A``.

    ``A^T W A`` is assembled from four weighted moment matrices of ``p p^T`` (``p = (x, y, 1)``)
    with weights ``w``, ``w u``, ``w v``, ``w (u^2 + v^2)``: one small batched product of the
    6 distinct entries of ``p p^T`` instead of materialising the ``2P x 9`` design.

    Args:
        x0, x1: ``G x P x 2`` correspondences, ideally Hartley-normalised (the estimator passes
            normalised points). weights: ``G x P`` non-negative (default 1).
        init: optional ``G x 3 x 3`` (or broadcastable ``G x 9``) starting model: the
            eigenvector is then found by inverse iteration (see
            :func:`correspondence.geometry.smallest_eigenvector`).
    """
    G, P = x0.shape[:2]
    dt = torch.float64
    x, y = x0[..., 0].to(dt), x0[..., 1].to(dt)
    u, v = x1[..., 0].to(dt), x1[..., 1].to(dt)
    w = torch.ones(G, P, dtype=dt, device=x0.device) if weights is None else weights.to(dt)
    feats = torch.stack([x * x, x * y, x, y * y, y, torch.ones_like(x)], 1)  # G x 6 x P
    wu, wv = w * u, w * v
    coef = torch.stack([w, wu, wv, wu * u + wv * v], 1)  # G x 4 x P
    mom = coef @ feats.transpose(1, 2)  # G x 4 x 6: entries (xx, xy, x, yy, y, 1) of sum c p p^T
    sym = mom[..., [0, 1, 2, 1, 3, 4, 2, 4, 5]].reshape(G, 4, 3, 3)
    S, Su, Sv, Suv = sym.unbind(1)
    Z = torch.zeros_like(S)
    M = torch.cat([torch.cat([S, Z, -Su], 2), torch.cat([Z, S, -Sv], 2), torch.cat([-Su, -Sv, Suv], 2)], 1)
    h0 = None if init is None else init.reshape(-1, 9).expand(G, 9)
    return smallest_eigenvector(M, h0).reshape(G, 3, 3).to(x0.dtype)


def transfer_error_rows(H: torch.Tensor, p0: torch.Tensor, p1: torch.Tensor,
                        s0: Optional[torch.Tensor] = None, s1: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Squared one-way transfer errors ``|x1 - pi(H x0)|^2`` of ``K`` hypotheses per problem.

    One batched product ``H p0`` gives ``(X, Y, W)`` for every hypothesis and point, then
    ``((u W - X)^2 + (v W - Y)^2) / W^2``, mostly in place (the scoring hot path).

    Args:
        H: ``G x K x 3 x 3``. p0, p1: ``G x 3 x P`` homogeneous points (rows x, y, 1).
        s1: optional ``G`` scale of view 1's normalisation; errors are divided by ``s1^2``
            (pixels^2 for Hartley-normalised points). ``s0`` is unused (uniform signature).

    Returns:
        ``G x K x P``; points mapped to infinity get ``inf``.
    """
    G, K = H.shape[:2]
    q = (H.reshape(G, 3 * K, 3) @ p0).view(G, K, 3, -1)
    X, Y, W = q.unbind(2)
    ru = torch.addcmul(X, p1[:, None, 0], W, value=-1).square_()
    ru.add_(torch.addcmul(Y, p1[:, None, 1], W, value=-1).square_())
    W2 = W.square()
    if s1 is not None:
        W2.mul_((s1 * s1)[:, None, None])
    return ru.div_(W2).masked_fill_(W2 <= 1e-20, float("inf"))


def transfer_error(H: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor,
                   s0: Optional[torch.Tensor] = None, s1: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Squared one-way transfer error ``|x1 - pi(H x0)|^2`` (OpenCV's reprojection error).

    Args:
        H: ``G x K x 3 x 3``. x0, x1: ``G x P x 2``. s0, s1: see :func:`transfer_error_rows`.

    Returns:
        ``G x K x P``; points mapped to infinity get ``inf``.
    """
    return transfer_error_rows(H, homogeneous_rows(x0), homogeneous_rows(x1), s0, s1)
