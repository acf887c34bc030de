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


# the four triples (a, b, c) of a 4-point sample whose determinants the solver and the filter
# need: lam_1..lam_3 (p4 replacing p1, p2, p3 in [p1 p2 p3]) and det[p1 p2 p3]
_TRI_A, _TRI_B, _TRI_C = (3, 0, 0, 0), (1, 3, 1, 1), (2, 2, 3, 2)
_INDEX = {}


def _index(values, device) -> torch.Tensor:
    key = (values, device)
    if key not in _INDEX:
        _INDEX[key] = torch.tensor(values, device=device)
    return _INDEX[key]


def _triangle_dets_soa(soa: torch.Tensor) -> torch.Tensor:
    """``4 x 4 x M`` component-major samples (x0, y0, x1, y1) x point x sample -> ``2 x 4 x M``
    determinants per view ``[lam_1, lam_2, lam_3, det[p1 p2 p3]]`` of the homogeneous points,
    where ``lam_i`` is ``det[p1 p2 p3]`` with ``p4`` replacing ``p_i`` (twice the signed
    triangle areas): ``det[a b c] = (b - a) x (c - a)``, all 8 from a handful of operations."""
    dev = soa.device
    a = soa.index_select(1, _index(_TRI_A, dev))
    b = soa.index_select(1, _index(_TRI_B, dev)).sub_(a)
    c = soa.index_select(1, _index(_TRI_C, dev)).sub_(a)
    b, c = b.view(2, 2, *b.shape[1:]), c.view(2, 2, *c.shape[1:])  # view x (x, y) x triple x M
    return b[:, 0] * c[:, 1] - b[:, 1] * c[:, 0]


def _degenerate_from_dets(d: torch.Tensor, min_area: float) -> torch.Tensor:
    """``2 x 4 x M`` determinants -> ``M`` bool: a (nearly) collinear triple in either view or a
    triangle orientation that differs between the views (``|d|`` where the signs agree,
    negative where they differ; then the smallest of the 8)."""
    m = d * d.flip(0).sign()
    m = torch.minimum(m[0], m[1])
    m = torch.minimum(torch.minimum(m[0], m[1]), torch.minimum(m[2], m[3]))  # (amin over dim 0 is slow)
    return m < min_area


def homography_degenerate_soa(soa: torch.Tensor, min_area: float = 1e-4) -> torch.Tensor:
    """:func:`homography_sample_degenerate` on samples stored component-major: ``soa`` is
    ``4 x 4 x M`` = (x0, y0, x1, y1) x point x sample (contiguous per-sample vectors, which is
    what makes the test a handful of element-wise operations on ``M``-vectors). Returns ``M`` bool."""
    return _degenerate_from_dets(_triangle_dets_soa(soa), min_area)


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
    d = _triangle_dets_soa(soa)
    lam, mu = d[0], d[1]  # 4 x M each
    dev = soa.device
    j, k = _index((1, 2, 0), dev), _index((2, 0, 1), dev)
    # c_i = p_j x p_k for homogeneous p = (x, y, 1), over cyclic (i, j, k) of the first 3 points
    pj, pk = soa[:2].index_select(1, j), soa[:2].index_select(1, k)  # (x, y) x i x M
    c = torch.stack([pj[1] - pk[1], pk[0] - pj[0], pj[0] * pk[1] - pj[1] * pk[0]])  # 3 x 3 x M
    # q_i = coef_i (u_i, v_i, 1) with coef_i = mu_i lam_j lam_k
    coef = mu[:3] * lam.index_select(0, j) * lam.index_select(0, k)  # 3 x M
    q = torch.cat([soa[2:, :3] * coef, coef[None]])  # 3 (row) x 3 (i) x M
    H = q[:, 0, None] * c[None, :, 0]  # H = sum_i q_i c_i^T, 3 x 3 x M
    H = H.addcmul_(q[:, 1, None], c[None, :, 1]).addcmul_(q[:, 2, None], c[None, :, 2]).view(9, -1)
    n = H.square().sum(0).sqrt_()  # (the norm kernel is slow on this strided layout)
    ok = torch.isfinite(n) & (n > 0)
    H = (H / torch.where(ok, n, torch.ones_like(n))).T
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
    6 distinct entries of ``p p^T`` instead of materialising the ``2P x 9`` design, then one
    product with a constant table that places the moments into the ``9 x 9`` matrix.

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
    one = torch.ones_like(x)
    feats = torch.stack([x * x, x * y, x, y * y, y, one], 1)  # G x 6 x P (contiguous rows)
    w = one if weights is None else weights.to(dt)
    wu, wv = w * u, w * v
    coef = torch.stack([w, wu, wv, wu * u + wv * v], 1)  # G x 4 x P
    mom = coef @ feats.transpose(1, 2)  # G x 4 x 6: entries (xx, xy, x, yy, y, 1) of sum c p p^T
    M = (mom.view(G, 24) @ _dlt_table(x0.device)).view(G, 9, 9)
    h0 = None if init is None else init.reshape(-1, 9).expand(G, 9)
    return smallest_eigenvector(M, h0).reshape(G, 3, 3).to(x0.dtype)


_DLT_TABLES = {}


def _dlt_table(device) -> torch.Tensor:
    """``24 x 81`` float64 map from the 4 moment matrices ``(S, Su, Sv, Suv)`` (6 distinct
    entries each) to ``A^T W A = [[S, 0, -Su], [0, S, -Sv], [-Su, -Sv, Suv]]`` (one product
    instead of a dozen copies)."""
    if device not in _DLT_TABLES:
        sym = (0, 1, 2, 1, 3, 4, 2, 4, 5)  # 3 x 3 entry -> index among (xx, xy, x, yy, y, 1)
        T = torch.zeros(4, 6, 9, 9, dtype=torch.float64)
        blocks = ((0, 0, 0, 1.0), (0, 1, 1, 1.0), (1, 0, 2, -1.0), (1, 2, 0, -1.0), (2, 1, 2, -1.0),
                  (2, 2, 1, -1.0), (3, 2, 2, 1.0))  # (moment, block row, block column, sign)
        for k, bi, bj, sign in blocks:
            for a in range(3):
                for b in range(3):
                    T[k, sym[3 * a + b], 3 * bi + a, 3 * bj + b] = sign
        _DLT_TABLES[device] = T.view(24, 81).to(device)
    return _DLT_TABLES[device]


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
