"""Evaluation of a reconstruction against ground-truth cameras.

The reconstruction's frame is arbitrary up to a similarity, so camera centres are aligned to the
ground truth by a least-squares similarity (Umeyama 1991: scale s, rotation Q, translation u
minimising sum ||s Q c_est + u - c_gt||^2), then:

- centre error: ``|| s Q c_est + u - c_gt ||`` in ground-truth units;
- rotation error: the angle of ``R_gt R_aligned^T`` in degrees, where the aligned
  world-to-camera rotation is ``R_est Q^T``.

Conventions: ``R`` is world-to-camera (``x ~ K (R X + t)``), centres ``c = -R^T t``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Tuple, Union

import numpy as np

__all__ = ["align_similarity", "pose_errors", "read_strecha_camera"]


def align_similarity(src: np.ndarray, dst: np.ndarray) -> Tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity ``dst ~ s Q src + u`` between ``N x 3`` point sets (N >= 3, not
    collinear). Returns ``(s, Q 3 x 3 rotation, u 3)``."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 3 or len(src) < 3:
        raise ValueError(f"need two N x 3 point sets with N >= 3, got {src.shape} and {dst.shape}")
    ms, md = src.mean(0), dst.mean(0)
    a, b = src - ms, dst - md
    U, S, Vt = np.linalg.svd(b.T @ a / len(src))
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt)) or 1.0])
    Q = U @ D @ Vt
    var = (a ** 2).sum() / len(src)
    if var <= 0:
        raise ValueError("source points are all identical")
    s = float(np.trace(np.diag(S) @ D) / var)
    return s, Q, md - s * Q @ ms


def pose_errors(est: Dict[str, Dict[str, np.ndarray]], gt: Dict[str, Dict[str, np.ndarray]]
                ) -> Dict[str, np.ndarray]:
    """Errors of the estimated cameras present in both dicts (``{name: {"R": world-to-camera
    3 x 3, "center": 3}}``, as :func:`lift.colmap.camera_poses` returns).

    Returns ``{"names": (M,), "center": (M,) centre errors in GT units, "rotation": (M,)
    degrees, "scale": s}`` after similarity alignment of the centres (needs M >= 3).
    """
    names = sorted(set(est) & set(gt))
    if len(names) < 3:
        raise ValueError(f"need at least 3 cameras in common to align, got {len(names)}")
    ce = np.stack([est[n]["center"] for n in names])
    cg = np.stack([gt[n]["center"] for n in names])
    s, Q, u = align_similarity(ce, cg)
    center = np.linalg.norm((s * ce @ Q.T + u) - cg, axis=1)
    rot = []
    for n in names:
        dR = gt[n]["R"] @ (est[n]["R"] @ Q.T).T
        rot.append(np.degrees(np.arccos(np.clip((np.trace(dR) - 1) / 2, -1.0, 1.0))))
    return {"names": np.array(names), "center": center, "rotation": np.array(rot), "scale": s}


def read_strecha_camera(path: Union[str, Path], scale: float = 1.0) -> Dict[str, np.ndarray]:
    """A Strecha ``.camera`` file (K 3x3, distortion 3, R camera-to-world 3x3, C 3, W H) as
    ``{"K", "R" (world-to-camera), "center", "size" (W, H)}``, with K and size scaled by
    ``scale`` (for downscaled images; pixel centres at integers: K's principal point is scaled
    as ``(c + 0.5) * scale - 0.5``)."""
    v = np.array(Path(path).read_text().split(), dtype=np.float64)
    if v.size != 26:
        raise ValueError(f"{path}: a Strecha camera file has 26 numbers, got {v.size}")
    K = v[:9].reshape(3, 3).copy()
    R_c2w = v[12:21].reshape(3, 3)
    C = v[21:24]
    size = v[24:26]
    if scale != 1.0:
        K[0, 0] *= scale
        K[1, 1] *= scale
        K[0, 2] = (K[0, 2] + 0.5) * scale - 0.5
        K[1, 2] = (K[1, 2] + 0.5) * scale - 0.5
    return {"K": K, "R": R_c2w.T, "center": C, "size": np.round(size * scale).astype(int)}
