"""Robust estimators used by the benchmark (homography, relative pose), selectable by name.

Homography: ``"cv2"`` = ``cv2.findHomography(..., cv2.USAC_MAGSAC)``; ``"lift"`` =
:func:`correspondence.find_homography` (the library's batched torch RANSAC) when it is available.
Relative pose: ``"cv2"`` = ``cv2.findEssentialMat`` (RANSAC, on K-normalised points) +
``cv2.recoverPose``; ``"lift"`` = :func:`correspondence.estimate_relative_pose`; ``"poselib"`` =
``poselib.estimate_relative_pose`` when installed (a benchmark-only baseline, never a library
dependency).
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

__all__ = ["EstimatorUnavailable", "HOMOGRAPHY_ESTIMATORS", "POSE_ESTIMATORS",
           "check_estimator", "estimate_homography", "estimate_relative_pose"]

HOMOGRAPHY_ESTIMATORS = ("cv2", "lift")
POSE_ESTIMATORS = ("cv2", "lift", "poselib")


class EstimatorUnavailable(RuntimeError):
    """The requested estimator cannot be used in this environment (the message says why)."""


def _lift_estimator(name: str):
    """``correspondence.<name>`` or :class:`EstimatorUnavailable` saying it is missing."""
    import correspondence

    fn = getattr(correspondence, name, None)
    if fn is None:
        raise EstimatorUnavailable(f"estimator 'lift' needs correspondence.{name}, which this "
                                   "build does not provide; use --estimator cv2")
    return fn


def check_estimator(kind: str, name: str) -> None:
    """Raise :class:`EstimatorUnavailable` (or ValueError for an unknown name) before a run starts."""
    names = HOMOGRAPHY_ESTIMATORS if kind == "homography" else POSE_ESTIMATORS
    if name not in names:
        raise ValueError(f"unknown {kind} estimator {name!r}; choose one of {names}")
    if name == "lift":
        _lift_estimator("find_homography" if kind == "homography" else "estimate_relative_pose")
    if kind == "pose" and name == "poselib":
        try:
            import poselib  # noqa: F401
        except ImportError:
            raise EstimatorUnavailable("estimator 'poselib' needs `pip install poselib`") from None


def estimate_homography(pts0: np.ndarray, pts1: np.ndarray, estimator: str = "cv2",
                        threshold: float = 3.0) -> Tuple[Optional[np.ndarray], np.ndarray]:
    """Robust homography from ``N x 2`` correspondences (pixels).

    Returns ``(H, inliers)``: 3 x 3 float64 mapping ``pts0`` to ``pts1`` (None when fewer than 4
    points or estimation fails) and an ``N`` bool inlier mask.
    """
    pts0 = np.asarray(pts0, np.float64).reshape(-1, 2)
    pts1 = np.asarray(pts1, np.float64).reshape(-1, 2)
    none = (None, np.zeros(len(pts0), bool))
    if len(pts0) < 4:
        return none
    if estimator == "cv2":
        import cv2

        H, mask = cv2.findHomography(pts0, pts1, cv2.USAC_MAGSAC, threshold,
                                     maxIters=10000, confidence=0.9999)
    elif estimator == "lift":
        H, mask = _lift_estimator("find_homography")(pts0, pts1, threshold=threshold)
    else:
        raise ValueError(f"unknown homography estimator {estimator!r}; choose one of {HOMOGRAPHY_ESTIMATORS}")
    if H is None or np.asarray(H).shape != (3, 3) or not np.isfinite(H).all():
        return none
    return np.asarray(H, np.float64), np.asarray(mask, bool).reshape(-1)


def estimate_relative_pose(pts0: np.ndarray, pts1: np.ndarray, K0: np.ndarray, K1: np.ndarray,
                           estimator: str = "cv2", threshold: float = 1.0, confidence: float = 0.99999
                           ) -> Tuple[Optional[np.ndarray], Optional[np.ndarray], np.ndarray]:
    """Relative pose ``X1 = R X0 + t`` (t unit norm) from ``N x 2`` pixel correspondences.

    ``threshold`` is in pixels (divided by the mean focal length for the normalised-coordinate
    RANSAC). Returns ``(R, t, inliers)``; ``R, t`` are None when fewer than 5 points or failure.
    """
    pts0 = np.asarray(pts0, np.float64).reshape(-1, 2)
    pts1 = np.asarray(pts1, np.float64).reshape(-1, 2)
    none = (None, None, np.zeros(len(pts0), bool))
    if len(pts0) < 5:
        return none
    if estimator == "lift":
        R, t, inl = _lift_estimator("estimate_relative_pose")(pts0, pts1, K0, K1, threshold=threshold,
                                                              confidence=confidence)
        if not (np.isfinite(R).all() and np.isfinite(t).all()):
            return none
        return np.asarray(R, np.float64), np.asarray(t, np.float64), np.asarray(inl, bool)
    if estimator == "poselib":
        import poselib

        cam = [{"model": "PINHOLE", "width": int(2 * K[0, 2] + 1), "height": int(2 * K[1, 2] + 1),
                "params": [K[0, 0], K[1, 1], K[0, 2], K[1, 2]]} for K in (K0, K1)]
        pose, info = poselib.estimate_relative_pose(pts0, pts1, cam[0], cam[1],
                                                    {"max_epipolar_error": threshold}, {})
        return np.asarray(pose.R), np.asarray(pose.t), np.asarray(info["inliers"], bool)
    if estimator != "cv2":
        raise ValueError(f"unknown pose estimator {estimator!r}; choose one of {POSE_ESTIMATORS}")
    import cv2

    n0 = (np.c_[pts0, np.ones(len(pts0))] @ np.linalg.inv(K0).T)[:, :2]
    n1 = (np.c_[pts1, np.ones(len(pts1))] @ np.linalg.inv(K1).T)[:, :2]
    f = np.mean([K0[0, 0], K0[1, 1], K1[0, 0], K1[1, 1]])
    E, mask = cv2.findEssentialMat(n0, n1, np.eye(3), method=cv2.RANSAC, prob=confidence,
                                   threshold=threshold / f)
    if E is None:
        return none
    best = none
    best_count = -1
    for k in range(0, E.shape[0] - E.shape[0] % 3, 3):  # several solutions may be stacked
        count, R, t, m = cv2.recoverPose(E[k:k + 3], n0, n1, np.eye(3), 1e9, mask=mask.copy())
        if count > best_count:
            best_count = count
            best = (R, t.ravel(), (m.ravel() > 0))
    return best
