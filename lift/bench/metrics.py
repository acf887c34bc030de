"""Benchmark metrics with the published protocols (numpy; all inputs in pixels unless stated).

* **MMA** (mean matching accuracy, D2-Net protocol): mutual-nearest-neighbour matches; a match
  ``(i, j)`` is correct at threshold ``t`` when ``|| H(x0_i) - x1_j || <= t``. The accuracy of a
  pair is the fraction of its matches that are correct (0 for a pair without matches); MMA is
  the mean over pairs, reported for ``t = 1..10`` px.
* **Homography accuracy** (SuperPoint / HPatches protocol): the four image-0 corners (pixel
  centres ``(0, 0), (W-1, 0), (W-1, H-1), (0, H-1)``) are mapped with the estimated and the
  ground-truth homography; the pair's error is the mean corner distance (``inf`` when estimation
  fails); accuracy at ``t`` = fraction of pairs with error ``<= t`` (``t = 1, 3, 5``).
* **Repeatability** (LIFT paper's definition, distance criterion): keypoints of each image whose
  projection falls inside the other image form the shared region; a keypoint is repeated when a
  projected keypoint of the other image lies within ``eps`` px. Repeatability
  = (repeated in 0 + repeated in 1) / (shared in 0 + shared in 1).
* **Matching score** (LIFT paper: "ratio of ground truth correspondences that can be recovered
  by the whole pipeline over the number of features proposed by the pipeline in the shared
  viewpoint region"): correct MNN matches (both ends in the shared region, error ``<= eps``)
  divided by ``min(shared in 0, shared in 1)`` (Mikolajczyk & Schmid's denominator).
* **Relative pose** (SuperGlue protocol): pose error = max(rotation angle error, translation
  direction angle error, the latter folded to [0, 90] deg since E fixes t up to sign);
  AUC@t = area under the recall-vs-error curve from 0 to t degrees, divided by t (failed
  estimates count as infinite error).
"""
from __future__ import annotations

from typing import Dict, Iterable, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "MMA_THRESHOLDS", "warp_points", "reprojection_errors", "match_accuracy",
    "mean_matching_accuracy", "image_corners", "corner_error", "threshold_accuracy",
    "shared_region", "repeatability", "matching_score", "rotation_error",
    "translation_angle_error", "pose_error", "pose_auc", "sampson_errors",
    "fundamental_from_pose",
]

#: D2-Net thresholds (px) for MMA curves.
MMA_THRESHOLDS = tuple(range(1, 11))


def warp_points(H: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 3 x 3 homography to ``N x 2`` points (x, y); points mapped to infinity give inf."""
    p = np.asarray(points, np.float64).reshape(-1, 2)
    q = p @ H[:, :2].T + H[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        out = q[:, :2] / q[:, 2:3]
    out[~np.isfinite(out).all(1) | (q[:, 2] <= 0)] = np.inf
    return out


def reprojection_errors(kpts0: np.ndarray, kpts1: np.ndarray, matches: np.ndarray,
                        H: np.ndarray) -> np.ndarray:
    """``K`` reprojection errors ``|| H(kpts0[i]) - kpts1[j] ||`` (px, image 1) of matches ``K x 2``."""
    matches = np.asarray(matches, np.int64).reshape(-1, 2)
    if len(matches) == 0:
        return np.zeros(0)
    proj = warp_points(H, np.asarray(kpts0)[matches[:, 0]])
    err = np.linalg.norm(proj - np.asarray(kpts1, np.float64)[matches[:, 1]], axis=1)
    return np.where(np.isfinite(err), err, np.inf)


def match_accuracy(errors: np.ndarray, thresholds: Iterable[float] = MMA_THRESHOLDS) -> np.ndarray:
    """Fraction of matches with error ``<= t`` for each threshold (``T``); zeros when no match."""
    errors = np.asarray(errors, np.float64).reshape(-1)
    th = np.asarray(list(thresholds), np.float64)
    if errors.size == 0:
        return np.zeros(len(th))
    return (errors[None, :] <= th[:, None]).mean(1)


def mean_matching_accuracy(errors_per_pair: Sequence[np.ndarray],
                           thresholds: Iterable[float] = MMA_THRESHOLDS) -> np.ndarray:
    """MMA curve (``T``): per-pair :func:`match_accuracy` averaged over pairs."""
    th = list(thresholds)
    if len(errors_per_pair) == 0:
        return np.full(len(th), np.nan)
    return np.mean([match_accuracy(e, th) for e in errors_per_pair], axis=0)


def image_corners(size: Tuple[int, int]) -> np.ndarray:
    """The four corner pixel centres of an image of size (W, H): ``4 x 2``."""
    w, h = size
    return np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float64)


def corner_error(H_est: Optional[np.ndarray], H_gt: np.ndarray, size: Tuple[int, int]) -> float:
    """Mean distance (px) between the image-0 corners mapped by ``H_est`` and by ``H_gt``;
    ``inf`` when ``H_est`` is None or degenerate."""
    if H_est is None or not np.isfinite(H_est).all():
        return float("inf")
    c = image_corners(size)
    with np.errstate(invalid="ignore"):  # a corner sent to infinity gives inf - inf
        err = np.linalg.norm(warp_points(H_est, c) - warp_points(H_gt, c), axis=1).mean()
    return float(err) if np.isfinite(err) else float("inf")


def threshold_accuracy(errors: Sequence[float], thresholds: Iterable[float]) -> Dict[float, float]:
    """``{t: fraction of errors <= t}`` (NaN when there is no error value)."""
    e = np.asarray(list(errors), np.float64)
    return {t: (float((e <= t).mean()) if e.size else float("nan")) for t in thresholds}


def shared_region(kpts0: np.ndarray, kpts1: np.ndarray, H: np.ndarray, size0: Tuple[int, int],
                  size1: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Keypoints visible in both images.

    Returns ``(in0, in1, proj0, proj1)``: boolean masks (N0, N1) of keypoints whose projection
    lies inside the other image (pixel centres within ``[0, W-1] x [0, H-1]``), and the
    projections ``proj0 = H(kpts0)`` (N0 x 2, image-1 pixels), ``proj1 = H^-1(kpts1)``.
    """
    def inside(p, size):
        return (np.isfinite(p).all(1) & (p[:, 0] >= 0) & (p[:, 0] <= size[0] - 1)
                & (p[:, 1] >= 0) & (p[:, 1] <= size[1] - 1))

    proj0 = warp_points(H, kpts0)
    proj1 = warp_points(np.linalg.inv(H), kpts1)
    return inside(proj0, size1), inside(proj1, size0), proj0, proj1


def _min_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For each row of ``a`` the distance to the nearest row of ``b`` (inf when ``b`` is empty)."""
    if len(b) == 0:
        return np.full(len(a), np.inf)
    from scipy.spatial import cKDTree

    return cKDTree(b).query(a, k=1)[0]


def repeatability(kpts0: np.ndarray, kpts1: np.ndarray, H: np.ndarray, size0: Tuple[int, int],
                  size1: Tuple[int, int], eps: float = 3.0) -> Dict[str, float]:
    """Repeatability of two keypoint sets under ``H`` (see the module docstring).

    Returns ``{"repeatability", "shared0", "shared1", "repeated0", "repeated1"}``;
    repeatability is NaN when the shared region holds no keypoint.
    """
    kpts0 = np.asarray(kpts0, np.float64).reshape(-1, 2)
    kpts1 = np.asarray(kpts1, np.float64).reshape(-1, 2)
    in0, in1, proj0, proj1 = shared_region(kpts0, kpts1, H, size0, size1)
    rep0 = int((_min_distances(proj0[in0], kpts1[in1]) <= eps).sum())
    rep1 = int((_min_distances(proj1[in1], kpts0[in0]) <= eps).sum())
    n0, n1 = int(in0.sum()), int(in1.sum())
    rep = (rep0 + rep1) / (n0 + n1) if n0 + n1 else float("nan")
    return {"repeatability": rep, "shared0": n0, "shared1": n1, "repeated0": rep0, "repeated1": rep1}


def matching_score(kpts0: np.ndarray, kpts1: np.ndarray, matches: np.ndarray, H: np.ndarray,
                   size0: Tuple[int, int], size1: Tuple[int, int], eps: float = 3.0) -> float:
    """Correct matches in the shared region / min(shared keypoints in 0, in 1); NaN if none shared."""
    kpts0 = np.asarray(kpts0, np.float64).reshape(-1, 2)
    kpts1 = np.asarray(kpts1, np.float64).reshape(-1, 2)
    matches = np.asarray(matches, np.int64).reshape(-1, 2)
    in0, in1, _, _ = shared_region(kpts0, kpts1, H, size0, size1)
    denom = min(int(in0.sum()), int(in1.sum()))
    if denom == 0:
        return float("nan")
    ok = in0[matches[:, 0]] & in1[matches[:, 1]]
    err = reprojection_errors(kpts0, kpts1, matches, H)
    return float((ok & (err <= eps)).sum() / denom)


# ---------------------------------------------------------------------------- relative pose
def rotation_error(R_est: np.ndarray, R_gt: np.ndarray) -> float:
    """Angle (degrees) of ``R_est R_gt^T``."""
    cos = (np.trace(R_est @ R_gt.T) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def translation_angle_error(t_est: np.ndarray, t_gt: np.ndarray) -> float:
    """Angle (degrees, folded to [0, 90]) between two translation directions (sign-free, as E
    determines t only up to sign). ``inf`` for a zero vector."""
    t_est, t_gt = np.asarray(t_est, np.float64), np.asarray(t_gt, np.float64)
    if np.linalg.norm(t_est) * np.linalg.norm(t_gt) < 1e-12:
        return float("inf")
    ang = float(np.degrees(np.arctan2(np.linalg.norm(np.cross(t_est, t_gt)), np.dot(t_est, t_gt))))
    return min(ang, 180.0 - ang)


def pose_error(R_est: Optional[np.ndarray], t_est: Optional[np.ndarray], R_gt: np.ndarray,
               t_gt: np.ndarray) -> Tuple[float, float, float]:
    """``(max(err_R, err_t), err_R, err_t)`` in degrees; all inf when the estimate is None."""
    if R_est is None or t_est is None:
        return float("inf"), float("inf"), float("inf")
    er = rotation_error(R_est, R_gt)
    et = translation_angle_error(np.ravel(t_est), np.ravel(t_gt))
    return max(er, et), er, et


def pose_auc(errors: Sequence[float], thresholds: Iterable[float] = (5.0, 10.0, 20.0)) -> Dict[float, float]:
    """Area under the cumulative error curve up to each threshold, normalised to [0, 1].

    The recall curve is ``r(e) = #{errors <= e} / n`` drawn piecewise-linearly through the sorted
    errors starting at (0, 0), as in SuperGlue's evaluation; inf/NaN errors count as failures.
    All-zero errors give 1; all failures give 0.
    """
    e = np.asarray(list(errors), np.float64)
    e = np.where(np.isfinite(e), e, np.inf)
    n = len(e)
    out = {}
    for t in thresholds:
        if n == 0:
            out[t] = float("nan")
            continue
        se = np.sort(e)
        x = np.concatenate([[0.0], se])
        y = np.concatenate([[0.0], np.arange(1, n + 1) / n])
        keep = x < t
        xs = np.concatenate([x[keep], [t]])
        ys = np.concatenate([y[keep], [y[keep][-1]]])
        out[t] = float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2.0) / t)
    return out


def fundamental_from_pose(K0: np.ndarray, K1: np.ndarray, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``F = K1^-T [t]_x R K0^-1`` for ``X1 = R X0 + t`` (so that ``x1^T F x0 = 0``)."""
    tx = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]], np.float64)
    return np.linalg.inv(K1).T @ tx @ R @ np.linalg.inv(K0)


def sampson_errors(F: np.ndarray, pts0: np.ndarray, pts1: np.ndarray) -> np.ndarray:
    """Sampson distances (px, first-order geometric error) of ``N`` correspondences under ``F``."""
    p0 = np.concatenate([np.asarray(pts0, np.float64).reshape(-1, 2), np.ones((len(pts0), 1))], 1)
    p1 = np.concatenate([np.asarray(pts1, np.float64).reshape(-1, 2), np.ones((len(pts1), 1))], 1)
    Fx0 = p0 @ F.T
    Ftx1 = p1 @ F
    num = np.sum(p1 * Fx0, 1) ** 2
    den = Fx0[:, 0] ** 2 + Fx0[:, 1] ** 2 + Ftx1[:, 0] ** 2 + Ftx1[:, 1] ** 2
    return np.sqrt(num / np.maximum(den, 1e-30))
