"""Synthetic correspondence problems for tests and benchmarks of the robust estimators.

The protocol of the robust-estimation benchmark: a 640 x 480 frame, ``N`` correspondences of
which a fraction ``inlier_ratio`` follow the ground-truth geometry with Gaussian noise
(``noise`` px per coordinate) and the rest are uniform in both frames.
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np

__all__ = ["random_homography", "homography_problem", "relative_pose_problem", "corner_error",
           "rotation_error_deg", "translation_error_deg"]


def random_homography(rng: np.random.Generator, size=(640, 480), max_shift: float = 0.2) -> np.ndarray:
    """Homography moving the 4 image corners by up to ``max_shift`` x the image size each (x, y)."""
    W, H = size
    c = np.array([[0, 0], [W - 1, 0], [W - 1, H - 1], [0, H - 1]], np.float64)
    d = c + rng.uniform(-max_shift, max_shift, (4, 2)) * np.array([W, H])
    A = []
    for (x, y), (u, v) in zip(c, d):
        A.append([-x, -y, -1, 0, 0, 0, u * x, u * y, u])
        A.append([0, 0, 0, -x, -y, -1, v * x, v * y, v])
    h = np.linalg.svd(np.asarray(A))[2][-1]
    Hm = h.reshape(3, 3)
    return Hm / Hm[2, 2]


def _project(Hm: np.ndarray, x: np.ndarray) -> np.ndarray:
    y = x @ Hm[:, :2].T + Hm[:, 2]
    return y[:, :2] / y[:, 2:]


def _add_outliers(rng: np.random.Generator, a_in: np.ndarray, b_in: np.ndarray, n: int, size):
    """Complete ``n_in`` inlier correspondences to ``n`` with points uniform over both images,
    then shuffle. Returns (a, b, inlier mask), each of length ``n``."""
    W, Hh = size
    n_out = n - len(a_in)
    a = np.concatenate([a_in, rng.uniform([0, 0], [W - 1, Hh - 1], (n_out, 2))])
    b = np.concatenate([b_in, rng.uniform([0, 0], [W - 1, Hh - 1], (n_out, 2))])
    perm = rng.permutation(n)
    return a[perm], b[perm], (np.arange(n) < len(a_in))[perm]


def homography_problem(rng: np.random.Generator, n: int = 2000, inlier_ratio: float = 0.5,
                       noise: float = 1.0, size=(640, 480)) -> Dict[str, np.ndarray]:
    """One synthetic homography problem.

    Returns: dict with ``src``, ``dst`` (``n x 2`` float64 pixels, shuffled), ``H`` (3 x 3 ground
    truth, ``dst ~ H src``) and ``inlier`` (``n`` bool).
    """
    W, Hh = size
    Hm = random_homography(rng, size)
    n_in = int(round(n * inlier_ratio))
    src_in = np.empty((0, 2))
    while len(src_in) < n_in:  # inliers whose image stays inside frame 1
        cand = rng.uniform([0, 0], [W - 1, Hh - 1], (2 * n_in + 16, 2))
        p = _project(Hm, cand)
        ok = (p[:, 0] >= 0) & (p[:, 0] <= W - 1) & (p[:, 1] >= 0) & (p[:, 1] <= Hh - 1)
        src_in = np.concatenate([src_in, cand[ok]])[:n_in]
    dst_in = _project(Hm, src_in) + rng.normal(0, noise, (n_in, 2))
    src, dst, inl = _add_outliers(rng, src_in, dst_in, n, size)
    return {"src": src, "dst": dst, "H": Hm, "inlier": inl}


def corner_error(H_est: Optional[np.ndarray], H_gt: np.ndarray, size=(640, 480)) -> float:
    """Mean distance (px) between the image corners mapped by ``H_est`` and by ``H_gt``
    (``inf`` when ``H_est`` is None or not finite)."""
    if H_est is None or not np.all(np.isfinite(H_est)):
        return float("inf")
    W, Hh = size
    c = np.array([[0, 0], [W - 1, 0], [W - 1, Hh - 1], [0, Hh - 1]], np.float64)
    return float(np.linalg.norm(_project(np.asarray(H_est, np.float64), c) - _project(H_gt, c), axis=1).mean())


def _rotation(rng: np.random.Generator, max_angle_deg: float) -> np.ndarray:
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    ang = np.deg2rad(rng.uniform(0, max_angle_deg))
    K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(ang) * K + (1 - np.cos(ang)) * K @ K


def relative_pose_problem(rng: np.random.Generator, n: int = 2000, inlier_ratio: float = 0.5,
                          noise: float = 1.0, size=(640, 480), focal: float = 500.0,
                          max_angle_deg: float = 20.0) -> Dict[str, np.ndarray]:
    """A synthetic two-view scene: points at depth 4..12 in front of camera 0, camera 1 rotated
    by up to ``max_angle_deg`` and translated by a unit-norm baseline direction, both with
    intrinsics ``K`` (focal ``focal`` px, principal point at the centre). Only points visible in
    both frames are inliers.

    Returns: dict with ``kpts0``, ``kpts1`` (``n x 2`` px), ``K`` (3 x 3), ``R``, ``t`` (unit,
    ``x1 = R x0 + t`` in camera coordinates) and ``inlier`` (``n`` bool).
    """
    W, Hh = size
    K = np.array([[focal, 0, (W - 1) / 2], [0, focal, (Hh - 1) / 2], [0, 0, 1.0]])
    R = _rotation(rng, max_angle_deg)
    t = rng.normal(size=3)
    t /= np.linalg.norm(t)
    n_in = int(round(n * inlier_ratio))
    k0 = np.empty((0, 2))
    k1 = np.empty((0, 2))
    Ki = np.linalg.inv(K)
    while len(k0) < n_in:
        m = 2 * n_in + 16
        px = rng.uniform([0, 0], [W - 1, Hh - 1], (m, 2))
        depth = rng.uniform(4, 12, (m, 1))
        X0 = (np.c_[px, np.ones(m)] @ Ki.T) * depth
        X1 = X0 @ R.T + t
        p1 = X1 @ K.T
        ok = p1[:, 2] > 0.1
        p1 = p1[:, :2] / np.where(ok, p1[:, 2], 1.0)[:, None]
        ok &= (p1[:, 0] >= 0) & (p1[:, 0] <= W - 1) & (p1[:, 1] >= 0) & (p1[:, 1] <= Hh - 1)
        k0 = np.concatenate([k0, px[ok]])[:n_in]
        k1 = np.concatenate([k1, p1[ok]])[:n_in]
    k0 = k0 + rng.normal(0, noise, k0.shape)
    k1 = k1 + rng.normal(0, noise, k1.shape)
    kp0, kp1, inl = _add_outliers(rng, k0, k1, n, size)
    return {"kpts0": kp0, "kpts1": kp1, "K": K, "R": R, "t": t, "inlier": inl}


def rotation_error_deg(R_est: Optional[np.ndarray], R_gt: np.ndarray) -> float:
    """Angle (degrees) of ``R_est R_gt^T``; 180 when ``R_est`` is None / not finite."""
    if R_est is None or not np.all(np.isfinite(R_est)):
        return 180.0
    c = (np.trace(np.asarray(R_est) @ R_gt.T) - 1) / 2
    return float(np.degrees(np.arccos(np.clip(c, -1, 1))))


def translation_error_deg(t_est: Optional[np.ndarray], t_gt: np.ndarray) -> float:
    """Angle (degrees) between translation directions, sign-invariant; 180 when missing."""
    if t_est is None or not np.all(np.isfinite(t_est)):
        return 180.0
    a = np.asarray(t_est, np.float64).ravel()
    na = np.linalg.norm(a)
    if na == 0:
        return 180.0
    c = abs(a @ t_gt) / (na * np.linalg.norm(t_gt))
    return float(np.degrees(np.arccos(np.clip(c, -1, 1))))
