"""Cut scale-normalised, upright square patches around keypoints (batched, anti-aliased).

Patch geometry (the LIFT training geometry, see ``data/README.md``):
    A patch of side ``S`` (128 by default) covers ``+-support * sigma`` (12 sigma by default)
    around the keypoint, axis-aligned in the source image (the keypoint orientation is *not*
    applied: the orientation network learns it). Patch pixel ``(u, v)`` (column, row, 0-based,
    centres at integers) samples the image at

        x = kx + (u - (S - 1) / 2) * step,   y = ky + (v - (S - 1) / 2) * step,
        step = 2 * support * sigma / S      (= 24 sigma / 128 = 0.1875 sigma)

    so the keypoint lies at patch coordinate ((S - 1) / 2, (S - 1) / 2) = (63.5, 63.5), and the
    central ``S / 2`` pixels are the +-6 sigma descriptor/orientation support.

Anti-aliasing: when ``step > 1`` (sigma > 5.3 px for S = 128) the image is sampled from a
half-octave Gaussian pyramid level whose pixel spacing ``f <= step`` (Gaussian pre-filter of
0.5 * sqrt(d^2 - 1) per downsampling by d), so the residual bilinear step lies in [1, sqrt 2).
Pixels outside the image are 0 (black), as with OpenCV's constant border.
"""
from __future__ import annotations

from typing import List, Tuple

import cv2
import numpy as np

__all__ = ["cut_patches", "patch_step", "PATCH_SIZE", "PATCH_SUPPORT"]

#: Default patch side in pixels (LIFT's large training patch).
PATCH_SIZE = 128
#: Default patch half-width in units of the keypoint scale sigma (LIFT's ratio_scale).
PATCH_SUPPORT = 12.0

_MAX_ROWS = 30000  # cv2.remap works on maps of at most SHRT_MAX rows


def patch_step(sigma, patch_size: int = PATCH_SIZE, support: float = PATCH_SUPPORT):
    """Image pixels per patch pixel: ``2 * support * sigma / patch_size`` (array or float)."""
    return 2.0 * support * np.asarray(sigma, dtype=np.float64) / patch_size


class _Pyramid:
    """Half-octave Gaussian pyramid of one grey image, built lazily level by level."""

    def __init__(self, image: np.ndarray):
        self.levels: List[np.ndarray] = [image]
        self.factors: List[Tuple[float, float]] = [(1.0, 1.0)]

    def level(self, k: int) -> Tuple[np.ndarray, Tuple[float, float]]:
        h0, w0 = self.levels[0].shape
        while len(self.levels) <= k:
            prev = self.levels[-1]
            if min(prev.shape) <= 2:  # nothing left to downsample
                self.levels.append(prev)
                self.factors.append(self.factors[-1])
                continue
            d = np.sqrt(2.0)
            blurred = cv2.GaussianBlur(prev, (0, 0), 0.5 * np.sqrt(d * d - 1.0),
                                       borderType=cv2.BORDER_REFLECT_101)
            h, w = prev.shape
            nw, nh = max(1, int(round(w / d))), max(1, int(round(h / d)))
            self.levels.append(cv2.resize(blurred, (nw, nh), interpolation=cv2.INTER_LINEAR))
            self.factors.append((w0 / nw, h0 / nh))
        return self.levels[k], self.factors[k]


def cut_patches(image: np.ndarray, keypoints: np.ndarray, patch_size: int = PATCH_SIZE,
                support: float = PATCH_SUPPORT, antialias: bool = True) -> np.ndarray:
    """Cut upright scale-normalised patches around keypoints.

    Args:
        image: ``H x W`` uint8 grey image.
        keypoints: ``N x 3`` or ``N x 4`` float array of (x, y, sigma[, ori]) in pixels of
            ``image`` (top-left pixel centre = (0, 0)); ``ori`` is ignored (patches are upright).
        patch_size: side ``S`` of the square patches.
        support: patch half-width in units of sigma.
        antialias: sample from a Gaussian pyramid when the patch step exceeds 1 pixel.

    Returns:
        ``N x S x S`` uint8 patches (see the module docstring for the exact sampling grid).

    Raises:
        ValueError: wrong image or keypoint shapes, non-positive or non-finite sigma.
    """
    image = np.asarray(image)
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f"cut_patches needs an H x W uint8 image, got {image.shape} {image.dtype}")
    kp = np.asarray(keypoints, dtype=np.float64)
    if kp.ndim != 2 or kp.shape[1] not in (3, 4):
        raise ValueError(f"keypoints must be N x 3 or N x 4 (x, y, sigma[, ori]), got {kp.shape}")
    n, s = len(kp), int(patch_size)
    out = np.zeros((n, s, s), np.uint8)
    if n == 0 or image.size == 0:
        return out
    if not np.all(np.isfinite(kp[:, :3])) or np.any(kp[:, 2] <= 0):
        raise ValueError("keypoints need finite coordinates and sigma > 0")
    step = patch_step(kp[:, 2], s, support)
    if antialias:
        half_octaves = np.floor(2.0 * np.log2(np.maximum(step, 1e-12)) + 1e-9)
        level = np.clip(half_octaves, 0, None).astype(int)
    else:
        level = np.zeros(n, int)
    offsets = (np.arange(s, dtype=np.float64) - (s - 1) / 2.0)
    pyramid = _Pyramid(np.ascontiguousarray(image))
    per_chunk = max(1, _MAX_ROWS // s)
    for k in np.unique(level):
        img_k, (fx, fy) = pyramid.level(int(k))
        idx = np.flatnonzero(level == k)
        for start in range(0, len(idx), per_chunk):
            sel = idx[start:start + per_chunk]
            st = step[sel][:, None, None]
            gx = kp[sel, 0][:, None, None] + offsets[None, None, :] * st
            gy = kp[sel, 1][:, None, None] + offsets[None, :, None] * st
            gx, gy = np.broadcast_arrays(gx, gy)
            mx = ((gx + 0.5) / fx - 0.5).astype(np.float32).reshape(-1, s)
            my = ((gy + 0.5) / fy - 0.5).astype(np.float32).reshape(-1, s)
            warped = cv2.remap(img_k, mx, my, interpolation=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            out[sel] = warped.reshape(len(sel), s, s)
    return out
