"""Epipolar solvers for the robust estimator (batched, torch): fundamental and essential matrices.

Convention: ``x1^T F x0 = 0`` for homogeneous points ``x0`` of image 0 and ``x1`` of image 1;
for the essential matrix ``E = [t]_x R`` with ``X1 = R X0 + t`` (camera-0 to camera-1 coordinates,
as ``cv2.recoverPose``).

* :func:`fundamental_7pt`: the 2-dimensional null space of the 7 x 9 system, then the real roots
  of the cubic ``det(a F1 + (1 - a) F2) = 0`` in closed form: up to 3 models per sample.
* :func:`fundamental_fit`: weighted (normalised) 8-point with rank-2 projection (Sampson-reweighted
  when given the current model).
* :func:`essential_5pt`: 5-point solver: 4-dimensional null space, the 10 cubic constraints
  (``det E = 0`` and ``2 E E^T E - tr(E E^T) E = 0``), Gauss-Jordan (one batched solve) and the
  eigen-decomposition of the 10 x 10 action matrix of ``x`` (Stewenius et al. 2006; batches split
  over the CPU threads by :func:`batched_eig`): up to 10 models per sample.
* :func:`essential_fit`: weighted 8-point projected on the essential manifold.
* :func:`sampson_error_rows`: squared Sampson distances of many hypotheses (batched products).
* :func:`decompose_essential`, :func:`recover_pose`: the 4 (R, t) candidates and cheirality.
* :func:`refine_pose`: robust (Cauchy) Gauss-Newton on the Sampson error over (R, t).
"""
from __future__ import annotations

import itertools
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Tuple

import torch

from .geometry import epipolar_rows, skew, weighted_nullvector

__all__ = ["fundamental_7pt", "fundamental_fit", "essential_5pt", "essential_fit", "sampson_error_rows", "batched_eig",
           "solve_cubic", "decompose_essential", "recover_pose", "refine_pose"]


def _null_space(x0: torch.Tensor, x1: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Null space of the ``M x s x 9`` epipolar system (``s`` in 5..8), float64.

    The basis is ``[z_k ; e_k]``: the last ``9 - s`` coordinates are fixed to unit vectors and the
    first ``s`` solved in one batched ``s x s`` solve. Returns ``(M x (9 - s) x 9, ok M)``.
    """
    A = epipolar_rows(x0.double(), x1.double())
    s = A.shape[1]
    lead, rest = A[..., :s], A[..., s:]
    ok = torch.linalg.det(lead).abs() > 1e-12 * lead.flatten(1).abs().amax(1).clamp_min(1e-300) ** s
    safe = torch.where(ok[:, None, None], lead, torch.eye(s, dtype=A.dtype, device=A.device).expand_as(lead))
    Z = torch.linalg.solve(safe, -rest)  # M x s x (9 - s)
    eye = torch.eye(9 - s, dtype=A.dtype, device=A.device).expand(A.shape[0], 9 - s, 9 - s)
    return torch.cat([Z, eye], 1).transpose(1, 2), ok


def solve_cubic(c: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Real roots of ``c0 + c1 a + c2 a^2 + c3 a^3`` (``c``: ``M x 4``) in closed form.

    Returns ``(roots M x 3, valid M x 3)``; one Newton step polishes each root.
    """
    c0, c1, c2, c3 = c.unbind(-1)
    scale = c.abs().amax(-1).clamp_min(1e-300)
    cubic = c3.abs() > 1e-10 * scale
    c3s = torch.where(cubic, c3, torch.ones_like(c3))
    b, cc, d = c2 / c3s, c1 / c3s, c0 / c3s
    p = cc - b * b / 3
    q = 2 * b ** 3 / 27 - b * cc / 3 + d
    disc = (q / 2) ** 2 + (p / 3) ** 3
    sq = disc.clamp_min(0).sqrt()
    one = torch.sign(-q / 2 + sq) * (-q / 2 + sq).abs().pow(1 / 3) + \
        torch.sign(-q / 2 - sq) * (-q / 2 - sq).abs().pow(1 / 3)
    pn = torch.where(p < 0, p, -torch.ones_like(p))
    r = 2 * (-pn / 3).sqrt()
    arg = (3 * q / (2 * pn) * (-3 / pn).sqrt()).clamp(-1, 1)
    phi = torch.acos(arg)
    k = torch.arange(3, dtype=c.dtype, device=c.device)
    three = r[:, None] * torch.cos(phi[:, None] / 3 - 2 * math.pi * k / 3)
    single = disc > 0
    t = torch.where(single[:, None], torch.stack([one, one, one], 1), three)
    roots = t - b[:, None] / 3
    valid = torch.stack([torch.ones_like(single), ~single, ~single], 1) & cubic[:, None]
    # one Newton step on the original polynomial
    f = ((c3[:, None] * roots + c2[:, None]) * roots + c1[:, None]) * roots + c0[:, None]
    df = (3 * c3[:, None] * roots + 2 * c2[:, None]) * roots + c1[:, None]
    step = torch.where(df.abs() > 1e-300, f / df, torch.zeros_like(f))
    roots = torch.where(step.abs() < 1e-2 * (1 + roots.abs()), roots - step, roots)
    return roots, valid & torch.isfinite(roots)


def _rows_cross(X: torch.Tensor) -> torch.Tensor:
    """Columns of adj(X) for ``... x 3 x 3``: ``r1 x r2, r2 x r0, r0 x r1`` (stacked on dim -2)."""
    r0, r1, r2 = X.unbind(-2)
    return torch.stack([torch.linalg.cross(r1, r2), torch.linalg.cross(r2, r0), torch.linalg.cross(r0, r1)], -2)


def fundamental_7pt(x0: torch.Tensor, x1: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """7-point fundamental matrices.

    Args: x0, x1: ``M x 7 x 2`` (Hartley-normalised) points.

    Returns: ``(F M x 3 x 3 x 3, ok M x 3)``, unit Frobenius norm, float dtype of the input.
    """
    N, ok = _null_space(x0, x1)  # M x 2 x 9
    F1, F2 = N[:, 0].reshape(-1, 3, 3), N[:, 1].reshape(-1, 3, 3)
    Dm = F1 - F2  # det(F2 + a D) = c0 + c1 a + c2 a^2 + c3 a^3
    aF2, aD = _rows_cross(F2), _rows_cross(Dm)
    c0 = (aF2[:, 0] * F2[:, 0]).sum(-1)
    c3 = (aD[:, 0] * Dm[:, 0]).sum(-1)
    c1 = (aF2 * Dm).sum((-1, -2))
    c2 = (aD * F2).sum((-1, -2))
    roots, valid = solve_cubic(torch.stack([c0, c1, c2, c3], -1))
    F = F2[:, None] + roots[..., None, None] * Dm[:, None]
    n = F.flatten(2).norm(dim=-1)
    valid = valid & ok[:, None] & torch.isfinite(n) & (n > 0)
    F = F / torch.where(valid, n, torch.ones_like(n))[..., None, None]
    return F.to(x0.dtype), valid


def _rank2(F: torch.Tensor) -> torch.Tensor:
    U, S, Vh = torch.linalg.svd(F)
    S = torch.stack([S[..., 0], S[..., 1], torch.zeros_like(S[..., 2])], -1)
    return U @ torch.diag_embed(S) @ Vh


def _sampson_reweight(x0: torch.Tensor, x1: torch.Tensor, weights: torch.Tensor,
                      init: Optional[torch.Tensor]) -> torch.Tensor:
    """Weights divided by the squared gradient norm of the epipolar constraint under ``init``
    (``G x 3 x 3``), so that the weighted algebraic fit minimises (to first order) the Sampson
    error instead of the algebraic one: repeated, as in IRLS, it converges to a far more
    accurate model than the plain 8-point fit."""
    if init is None:
        return weights
    F = init.reshape(-1, 3, 3).to(x0.dtype).expand(x0.shape[0], 3, 3)
    p0 = torch.cat([x0, torch.ones_like(x0[..., :1])], -1)
    p1 = torch.cat([x1, torch.ones_like(x1[..., :1])], -1)
    l1 = p0 @ F.transpose(1, 2)  # F x0
    l0 = p1 @ F  # F^T x1
    den = l1[..., :2].square().sum(-1) + l0[..., :2].square().sum(-1)
    den = den.clamp_min(1e-8 * den.mean(1, keepdim=True).clamp_min(1e-300))
    w = weights / den
    return torch.where(torch.isfinite(w), w, torch.zeros_like(w))


def _weighted_eight_point(x0, x1, weights, init) -> torch.Tensor:
    """Shared core of the weighted 8-point fits: ``G x 3 x 3`` null vector of the epipolar rows
    (Sampson-reweighted and started from ``init`` when a current model is given)."""
    if weights is None:
        weights = torch.ones(x0.shape[:2], dtype=x0.dtype, device=x0.device)
    h0 = None if init is None else init.reshape(-1, 9).expand(x0.shape[0], 9)
    weights = _sampson_reweight(x0, x1, weights, init)
    return weighted_nullvector(epipolar_rows(x0, x1), weights, h0).reshape(-1, 3, 3)


def fundamental_fit(x0: torch.Tensor, x1: torch.Tensor, weights: Optional[torch.Tensor] = None,
                    init: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Weighted 8-point: ``G x P x 2`` normalised points, ``G x P`` weights -> ``G x 3 x 3`` rank-2 F.
    ``init``: optional ``G x 3 x 3`` current model: the weights are then Sampson-normalised by it
    and the eigenvector found by inverse iteration from it."""
    F = _rank2(_weighted_eight_point(x0, x1, weights, init).double())
    return (F / F.flatten(1).norm(dim=1).clamp_min(1e-300)[:, None, None]).to(x0.dtype)


def essential_fit(x0: torch.Tensor, x1: torch.Tensor, weights: Optional[torch.Tensor] = None,
                  init: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Weighted 8-point on calibrated points, projected to singular values (1, 1, 0): ``G x 3 x 3``.
    ``init``: optional ``G x 3 x 3`` current model: the weights are then Sampson-normalised by it
    and the eigenvector found by inverse iteration from it."""
    e = _weighted_eight_point(x0, x1, weights, init).double()
    U, _, Vh = torch.linalg.svd(e)
    S = torch.tensor([1.0, 1.0, 0.0], dtype=e.dtype, device=e.device)
    E = U @ torch.diag_embed(S.expand(e.shape[0], 3)) @ Vh
    return (E / 2 ** 0.5).to(x0.dtype)


# ---------------------------------------------------------------- 5-point solver (action matrix)
def _monomials():
    """Exponents of the 20 monomials of degree <= 3 in (x, y, z), graded order (cubic first)."""
    out = []
    for deg in (3, 2, 1, 0):
        out += sorted([e for e in itertools.product(range(deg + 1), repeat=3) if sum(e) == deg], reverse=True)
    return out


_MONO = _monomials()
_LIN, _QUAD = _MONO[16:], _MONO[10:]  # degree <= 1 (x, y, z, 1) and degree <= 2 (10 terms)
_TABLES = {}


def _table(left, right, out, device, dtype) -> torch.Tensor:
    """``(len(left) * len(right)) x len(out)`` 0/1 matrix mapping the outer product of two
    coefficient vectors on the monomial lists ``left`` and ``right`` to the product's coefficients."""
    key = (len(left), len(right), len(out), device, dtype)
    if key not in _TABLES:
        index = {e: i for i, e in enumerate(out)}
        T = torch.zeros(len(left), len(right), len(out), dtype=dtype)
        for i, a in enumerate(left):
            for j, b in enumerate(right):
                T[i, j, index[(a[0] + b[0], a[1] + b[1], a[2] + b[2])]] = 1
        _TABLES[key] = T.flatten(0, 1).to(device)
    return _TABLES[key]


#: batches of at least this many matrices are split over the torch threads by batched_eig
EIG_SPLIT_MIN = 128
_EIG_POOL: Tuple[int, Optional[ThreadPoolExecutor]] = (0, None)  # (threads, pool)
_EIG_POOL_LOCK = threading.Lock()


def batched_eig(a: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``torch.linalg.eig`` of an ``M x n x n`` batch, split over threads on CPU.

    PyTorch's CPU ``eig`` runs LAPACK's ``geev`` on one matrix after another in the calling
    thread; the 5-point solver's batches of small matrices then leave the other cores idle
    (2048 action matrices of 10 x 10: 68 ms on one of 2 threads, 39 ms split in two). Batches
    of at least :data:`EIG_SPLIT_MIN` matrices on CPU are cut into ``torch.get_num_threads()``
    chunks, solved in a thread pool (the LAPACK calls release the GIL) and concatenated: the
    same values and vectors as one call. Other devices and small batches: one call.
    """
    global _EIG_POOL
    workers = torch.get_num_threads()
    m = a.shape[0]
    if a.device.type != "cpu" or workers < 2 or m < EIG_SPLIT_MIN:
        return torch.linalg.eig(a)
    with _EIG_POOL_LOCK:
        if _EIG_POOL[0] < workers - 1:  # the calling thread solves one chunk itself
            if _EIG_POOL[1] is not None:
                _EIG_POOL[1].shutdown(wait=False)  # its queued work still runs; its threads end
            _EIG_POOL = (workers - 1, ThreadPoolExecutor(workers - 1, thread_name_prefix="lift-eig"))
        pool = _EIG_POOL[1]
    chunks = a.chunk(workers)
    futures = [pool.submit(torch.linalg.eig, c) for c in chunks[1:]]
    first = torch.linalg.eig(chunks[0])  # the calling thread takes a share too
    parts = [first] + [f.result() for f in futures]
    return torch.cat([v for v, _ in parts]), torch.cat([w for _, w in parts])


def essential_5pt(x0: torch.Tensor, x1: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """5-point essential matrices.

    Args: x0, x1: ``M x 5 x 2`` calibrated (normalised camera) coordinates.

    Returns: ``(E M x 10 x 3 x 3, ok M x 10)``: up to 10 real solutions per sample, each with
    unit Frobenius norm; ``ok`` marks the real, finite ones.
    """
    M = x0.shape[0]
    N, ok = _null_space(x0, x1)  # M x 4 x 9: E = x X + y Y + z Z + W
    dev, dt = N.device, N.dtype
    T11 = _table(_LIN, _LIN, _QUAD, dev, dt)  # 16 x 10
    T21 = _table(_QUAD, _LIN, _MONO, dev, dt)  # 40 x 20
    E = N.permute(0, 2, 1).reshape(M, 3, 3, 4)  # entries as polynomials on (x, y, z, 1)
    EEt = torch.einsum("mikp,mjkq->mijpq", E, E).flatten(-2) @ T11  # M x 3 x 3 x 10
    tr = EEt[:, 0, 0] + EEt[:, 1, 1] + EEt[:, 2, 2]
    EEtE = torch.einsum("mikp,mkjq->mijpq", EEt, E).flatten(-2) @ T21  # M x 3 x 3 x 20
    trE = torch.einsum("mp,mijq->mijpq", tr, E).flatten(-2) @ T21
    C = 2 * EEtE - trE

    def quad(a, b):
        return (a[..., :, None] * b[..., None, :]).flatten(-2) @ T11

    cof = torch.stack([quad(E[:, 1, 1], E[:, 2, 2]) - quad(E[:, 1, 2], E[:, 2, 1]),
                       quad(E[:, 1, 2], E[:, 2, 0]) - quad(E[:, 1, 0], E[:, 2, 2]),
                       quad(E[:, 1, 0], E[:, 2, 1]) - quad(E[:, 1, 1], E[:, 2, 0])], 1)  # M x 3 x 10
    det = torch.einsum("mkp,mkq->mpq", cof, E[:, 0]).flatten(-2) @ T21
    A = torch.cat([det[:, None], C.reshape(M, 9, 20)], 1)  # M x 10 x 20
    lead = A[..., :10]
    good = ok & (torch.linalg.det(lead).abs() > 1e-30)
    lead = torch.where(good[:, None, None], lead, torch.eye(10, dtype=dt, device=dev).expand_as(lead))
    Bm = torch.linalg.solve(lead, A[..., 10:])  # cubic monomial i = -Bm_i . [x2 xy xz y2 yz z2 x y z 1]
    act = torch.zeros(M, 10, 10, dtype=dt, device=dev)
    act[:, :6] = -Bm[:, :6]
    act[:, 6, 0] = 1  # x * x = x^2
    act[:, 7, 1] = 1  # x * y = xy
    act[:, 8, 2] = 1  # x * z = xz
    act[:, 9, 6] = 1  # x * 1 = x
    act = torch.nan_to_num(act)
    vals, vecs = batched_eig(act)
    real = vals.imag.abs() < 1e-6 * (1 + vals.real.abs())
    v = vecs.real  # M x 10 (component) x 10 (solution)
    w = v[:, 9]
    real = real & (w.abs() > 1e-12) & good[:, None]
    wsafe = torch.where(real, w, torch.ones_like(w))
    xyz = v[:, 6:9] / wsafe[:, None]  # M x 3 x 10
    xyz = torch.cat([vals.real[:, None], xyz[:, 1:]], 1)  # the eigenvalue is the more accurate x
    Es = (xyz.transpose(1, 2) @ N[:, :3] + N[:, 3:4]).reshape(M, 10, 3, 3)
    n = Es.flatten(2).norm(dim=-1)
    real = real & torch.isfinite(n) & (n > 0)
    Es = Es / torch.where(real, n, torch.ones_like(n))[..., None, None]
    return Es.to(x0.dtype), real


# ---------------------------------------------------------------- Sampson error
def sampson_error_rows(F: torch.Tensor, p0: torch.Tensor, p1: torch.Tensor,
                       s0: Optional[torch.Tensor] = None, s1: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Squared Sampson distances of ``K`` epipolar hypotheses per problem (the scoring hot path).

    Two batched products give the epipolar lines ``l1 = F x0`` and ``l0 = F^T x1`` of every
    hypothesis and point; then ``(x1 . l1)^2 / (s1^2 |l1_ab|^2 + s0^2 |l0_ab|^2)``.

    Args:
        F: ``G x K x 3 x 3`` (``x1^T F x0 = 0``). p0, p1: ``G x 3 x P`` homogeneous points.
        s0, s1: optional ``G`` scales of isotropic normalisations ``x_n = s x + t``; with them
            the distance is in the un-normalised units (pixels).

    Returns:
        ``G x K x P`` squared distances (as :func:`correspondence.geometry.sampson_error`).
    """
    G, K = F.shape[:2]
    l1 = (F.reshape(G, 3 * K, 3) @ p0).view(G, K, 3, -1)
    l0 = (F.transpose(-1, -2).reshape(G, 3 * K, 3) @ p1).view(G, K, 3, -1)
    r = torch.addcmul(l1[:, :, 2], p1[:, None, 0], l1[:, :, 0]).addcmul_(p1[:, None, 1], l1[:, :, 1])
    g1 = l1[:, :, :2].square().sum(2)
    g0 = l0[:, :, :2].square().sum(2)
    if s1 is not None:
        g1.mul_((s1 * s1)[:, None, None])
    if s0 is not None:
        g0.mul_((s0 * s0)[:, None, None])
    return r.square_().div_(g0.add_(g1).clamp_min_(torch.finfo(F.dtype).tiny))


# ---------------------------------------------------------------- pose from E
def decompose_essential(E: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The four ``(R, t)`` of ``B x 3 x 3`` essential matrices: ``B x 4 x 3 x 3`` and ``B x 4 x 3``
    (``t`` unit norm), in the order (R1, t), (R1, -t), (R2, t), (R2, -t)."""
    U, _, Vh = torch.linalg.svd(E.double())
    U = U * torch.sign(torch.linalg.det(U))[:, None, None]
    Vh = Vh * torch.sign(torch.linalg.det(Vh))[:, None, None]
    W = torch.tensor([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]], dtype=U.dtype, device=U.device)
    R1 = U @ W @ Vh
    R2 = U @ W.T @ Vh
    t = U[..., 2]
    R = torch.stack([R1, R1, R2, R2], 1)
    T = torch.stack([t, -t, t, -t], 1)
    return R.to(E.dtype), T.to(E.dtype)


def recover_pose(E: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor, mask: torch.Tensor,
                 max_depth: float = 1e4) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Choose the ``(R, t)`` of ``E`` that puts most masked points in front of both cameras.

    Args:
        E: ``B x 3 x 3``. x0, x1: ``B x N x 2`` calibrated coordinates. mask: ``B x N`` inliers.
        max_depth: points farther than this (in baseline units) are not counted (cv2's
            ``distanceThresh`` idea: near-infinite points carry no cheirality information).

    Returns:
        ``(R B x 3 x 3, t B x 3, mask B x N)``: the mask keeps the inliers with positive depth.
    """
    R, t = decompose_essential(E)  # B x 4 x 3 x 3, B x 4 x 3
    p0 = torch.cat([x0, torch.ones_like(x0[..., :1])], -1)[:, None]  # B x 1 x N x 3
    p1 = torch.cat([x1, torch.ones_like(x1[..., :1])], -1)[:, None]
    Rp0 = p0 @ R.transpose(-1, -2)  # B x 4 x N x 3
    # depth z0 along p0 from  z1 p1 = z0 R p0 + t  (least squares via the cross product with p1)
    a = torch.linalg.cross(p1.expand_as(Rp0), Rp0)
    b = torch.linalg.cross(p1.expand_as(Rp0), t[:, :, None].expand_as(Rp0))
    z0 = -(a * b).sum(-1) / (a * a).sum(-1).clamp_min(1e-30)
    X1 = z0[..., None] * Rp0 + t[:, :, None]
    z1 = X1[..., 2]
    front = (z0 > 0) & (z1 > 0) & (z0 < max_depth) & (z1 < max_depth) & mask[:, None]
    best = front.sum(-1).argmax(1)
    ar = torch.arange(E.shape[0], device=E.device)
    return R[ar, best], t[ar, best], front[ar, best]


def _so3_exp(w: torch.Tensor) -> torch.Tensor:
    """``... x 3`` rotation vectors -> ``... x 3 x 3`` rotations (Rodrigues)."""
    theta = w.norm(dim=-1, keepdim=True)[..., None]
    K = skew(w)
    small = theta < 1e-12
    st = torch.where(small, torch.ones_like(theta), theta)
    a = torch.where(small, torch.ones_like(theta), torch.sin(st) / st)
    b = torch.where(small, torch.full_like(theta, 0.5), (1 - torch.cos(st)) / (st * st))
    eye = torch.eye(3, dtype=w.dtype, device=w.device).expand_as(K)
    return eye + a * K + b * (K @ K)


def refine_pose(R: torch.Tensor, t: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor, valid: torch.Tensor,
                threshold: torch.Tensor, iters: int = 10, tol: float = 1e-10) -> Tuple[torch.Tensor, torch.Tensor]:
    """Robust Gauss-Newton refinement of relative poses on the Sampson error (batched).

    Minimises ``sum_i rho(d_i)`` over ``(R, t)`` (``|t| = 1``), ``d_i`` the Sampson distance of
    ``E = [t]_x R``, ``rho`` the Cauchy loss with scale ``threshold``, by damped Newton steps on
    the 5-dimensional manifold (``R <- R exp(dw)``, ``t`` moved in its tangent plane) with a
    numerical Jacobian. Each iteration solves for two steps, one with the IRLS weights
    ``rho'(r) / r`` in the Hessian and one with the loss's curvature ``max(rho''(r), 0)``, and
    keeps the one with the lower cost; it is kept only where it lowers the cost (else the
    damping grows). Near the optimum the curvature step converges in 6-13 iterations where the
    IRLS step alone needs 16-30 (10 %-inlier scenes of ``tools/bench_cne.py``).

    Args:
        R: ``B x 3 x 3``. t: ``B x 3`` unit. x0, x1: ``B x N x 2`` calibrated coordinates.
        valid: ``B x N`` matches to use (e.g. the inliers). threshold: ``B`` Cauchy scale in the
            calibrated units of the Sampson distance. iters: most Gauss-Newton steps.
        tol: stop early once, in every problem, an accepted step lowers the cost by less than
            this fraction (or the step is below 1e-12): the remaining steps would not move the
            pose beyond float64 noise.

    Returns:
        refined ``(R, t)`` in float64 (cast back to the input dtype).
    """
    dt = R.dtype
    R, t = R.double(), t.double()
    p0 = torch.cat([x0.double(), torch.ones_like(x0[..., :1]).double()], -1).transpose(1, 2)  # B x 3 x N
    p1 = torch.cat([x1.double(), torch.ones_like(x1[..., :1]).double()], -1).transpose(1, 2)
    w = valid.double()
    c2 = (threshold.double() ** 2)[:, None]

    def residuals(Rs, ts):  # B x K x 3 x 3, B x K x 3 -> signed Sampson distances B x K x N
        E = skew(ts) @ Rs
        l1 = (E.flatten(1, 2) @ p0).view(*E.shape[:2], 3, -1)
        l0 = (E.transpose(-1, -2).flatten(1, 2) @ p1).view(*E.shape[:2], 3, -1)
        r = (l1 * p1[:, None]).sum(2)
        den = l1[:, :, :2].square().sum(2) + l0[:, :, :2].square().sum(2)
        return r / den.clamp_min(1e-300).sqrt()

    def cost(res):
        return (torch.log1p(res.square() / c2[:, None]) * w[:, None]).sum(-1)

    eye5 = torch.eye(5, dtype=R.dtype, device=R.device)
    lam = torch.full((R.shape[0],), 1e-4, dtype=R.dtype, device=R.device)
    h = 1e-6
    for _ in range(iters):
        # tangent basis of the translation sphere: two unit vectors orthogonal to t
        a = torch.where((t[:, :1].abs() < 0.9), torch.tensor([1.0, 0, 0], dtype=t.dtype, device=t.device),
                        torch.tensor([0, 1.0, 0], dtype=t.dtype, device=t.device))
        b1 = torch.linalg.cross(t, a)
        b1 = b1 / b1.norm(dim=-1, keepdim=True)
        b2 = torch.linalg.cross(t, b1)
        dR = _so3_exp(h * torch.eye(3, dtype=R.dtype, device=R.device))  # 3 x 3 x 3
        Rk = torch.cat([R[:, None], R[:, None] @ dR], 1)[:, [0, 1, 2, 3, 0, 0]]  # B x 6 x 3 x 3
        tk = torch.stack([t, t, t, t, t + h * b1, t + h * b2], 1)
        res = residuals(Rk, tk)  # B x 6 x N
        r0 = res[:, 0]
        J = (res[:, 1:] - r0[:, None]) / h  # B x 5 x N
        # two damped steps per problem, the better one kept: Gauss-Newton with the IRLS
        # weights rho'(r) / r (robust far from the optimum, but it over-estimates the curvature
        # of every residual near c, and its steps then shrink geometrically: 16-30 steps to
        # tol on the 10 %-inlier scenes of tools/bench_cne.py) and with the loss's curvature
        # rho''(r), clamped at 0 beyond its inflection |r| = c (Newton-like near the optimum)
        q = r0.square() / c2
        wr = w / (1 + q)
        wh = w * ((1 - q) / (1 + q).square()).clamp_min(0)
        g = (J * wr[:, None]) @ r0[..., None]  # B x 5 x 1
        Hs = torch.stack([(J * wr[:, None]) @ J.transpose(1, 2), (J * wh[:, None]) @ J.transpose(1, 2)], 1)
        damp = Hs.diagonal(dim1=-2, dim2=-1).mean(-1)[..., None, None] * eye5 + 1e-12 * eye5
        Hd = Hs + lam[:, None, None, None] * damp  # B x 2 x 5 x 5
        steps = -torch.linalg.solve_ex(Hd, g[:, None].expand(-1, 2, -1, -1))[0][..., 0]  # B x 2 x 5
        steps = torch.nan_to_num(steps)
        Rc = R[:, None] @ _so3_exp(steps[..., :3])  # B x 2 x 3 x 3
        tc = t[:, None] + steps[..., 3:4] * b1[:, None] + steps[..., 4:5] * b2[:, None]
        tc = tc / tc.norm(dim=-1, keepdim=True)
        c_old = cost(r0[:, None])[:, 0]
        c_cand = cost(residuals(Rc, tc))  # B x 2
        pick = c_cand.argmin(1)
        ar = torch.arange(R.shape[0], device=R.device)
        Rn, tn, c_new, delta = Rc[ar, pick], tc[ar, pick], c_cand[ar, pick], steps[ar, pick]
        better = c_new < c_old
        R = torch.where(better[:, None, None], Rn, R)
        t = torch.where(better[:, None], tn, t)
        lam = torch.where(better, lam * 0.1, lam * 10).clamp(1e-8, 1e4)
        # converged everywhere: the step is at float64 noise, or an accepted step gained less
        # than ``tol`` of the cost
        done = (delta.abs().amax(-1) < 1e-12) | (better & (c_old - c_new <= tol * c_old.abs()))
        if bool(done.all()):
            break
    return R.to(dt), t.to(dt)
