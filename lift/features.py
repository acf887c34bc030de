"""The :class:`Features` container and the converters to OpenCV, kornia and COLMAP.

Convention (one per quantity, across the whole library):
    * ``keypoints``: ``N x 2`` float32, (x, y) in pixels of the input image; the centre of the
      top-left pixel is (0, 0) (OpenCV, kornia, hloc). COLMAP puts it at (0.5, 0.5):
      :meth:`Features.to_colmap` adds 0.5.
    * ``scales``: ``N`` float32, the keypoint scale sigma in pixels, in SIFT's sense: the
      detector sees a window of half-width 12 sigma, the orientation and descriptor networks a
      window of half-width ``DESCRIPTOR_SUPPORT`` = 6 sigma. OpenCV ``size`` = 2 sigma;
      COLMAP ``scale`` = sigma; kornia LAF scale = 6 sigma (``mr_size``).
    * ``oris``: ``N`` float32 radians in (-pi, pi], measured from the +x axis towards the +y axis
      of the image (y points down), i.e. **clockwise on screen**: the same sense as OpenCV's
      ``KeyPoint.angle`` and COLMAP's orientation. OpenCV angle = degrees(ori) mod 360;
      kornia angle = -degrees(ori).
    * ``scores``: ``N`` float32 detector response, larger is better; keypoints are sorted by it.
    * ``descriptors``: ``N x D`` float32, L2-normalised rows (D = 128 for the shipped model).
    * ``image_size``: (W, H) of the input image.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch

__all__ = ["Features", "DESCRIPTOR_SUPPORT", "keypoints_from_cv2", "cv2_octave_from_scale"]

#: Half-width of the orientation/descriptor support region, in units of the keypoint scale.
DESCRIPTOR_SUPPORT = 6.0


def cv2_octave_from_scale(scales: np.ndarray, n_octave_layers: int = 3,
                          sigma0: float = 1.6) -> np.ndarray:
    """Pack scales into OpenCV SIFT's ``octave`` field (``octv & 255 | layer << 8 | xi << 16``).

    sigma = sigma0 * 2 ** (octv + (layer + xi) / n_octave_layers), with layer in 1..n and
    xi in [-0.5, 0.5), as OpenCV's SIFT writes it (first octave -1 is stored as 255).
    """
    s = np.maximum(np.asarray(scales, dtype=np.float64), 1e-6)
    lev = np.log2(s / sigma0) * n_octave_layers  # = octv * n + layer + xi
    octv = np.floor((lev - 0.5) / n_octave_layers).astype(np.int64)
    rem = lev - octv * n_octave_layers  # in [0.5, n + 0.5)
    layer = np.clip(np.round(rem), 1, n_octave_layers).astype(np.int64)
    xi = np.clip(rem - layer, -0.5, 0.5 - 1e-6)
    xi_q = np.clip(np.round((xi + 0.5) * 255), 0, 255).astype(np.int64)
    return ((octv & 255) | (layer << 8) | (xi_q << 16)).astype(np.int64)


def keypoints_from_cv2(keypoints: Sequence) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read ``cv2.KeyPoint`` objects into (keypoints N x 2, scales N, oris N, scores N).

    OpenCV ``size`` (diameter) becomes sigma = size / 2; ``angle`` (degrees, clockwise on screen,
    -1 = none) becomes radians in (-pi, pi] of the same sense (-1 maps to 0).
    """
    n = len(keypoints)
    kpts = np.array([k.pt for k in keypoints], dtype=np.float32).reshape(n, 2)
    scales = np.array([k.size / 2.0 for k in keypoints], dtype=np.float32).reshape(n)
    ang = np.array([k.angle for k in keypoints], dtype=np.float64).reshape(n)
    ang = np.where(ang < 0, 0.0, ang)
    oris = np.angle(np.exp(1j * np.deg2rad(ang))).astype(np.float32)
    scores = np.array([k.response for k in keypoints], dtype=np.float32).reshape(n)
    return kpts, scales, oris, scores


@dataclass
class Features:
    """Local features of one image (numpy arrays; see the module docstring for conventions).

    Attributes:
        keypoints: ``N x 2`` float32 pixel coordinates (x, y), top-left pixel centre = (0, 0).
        scales: ``N`` float32 keypoint scale sigma in pixels.
        oris: ``N`` float32 orientation in radians, clockwise on screen (OpenCV's sense).
        scores: ``N`` float32 detector scores, sorted in decreasing order.
        descriptors: ``N x D`` float32, L2-normalised rows.
        image_size: (W, H) of the image the features were computed on.
    """

    keypoints: np.ndarray
    scales: np.ndarray
    oris: np.ndarray
    scores: np.ndarray
    descriptors: np.ndarray
    image_size: Tuple[int, int]
    extra: Dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        n = len(self.keypoints)
        self.keypoints = np.asarray(self.keypoints, dtype=np.float32).reshape(n, 2)
        for name in ("scales", "oris", "scores"):
            arr = np.asarray(getattr(self, name), dtype=np.float32).reshape(-1)
            if len(arr) != n:
                raise ValueError(f"Features.{name} has {len(arr)} entries for {n} keypoints")
            setattr(self, name, arr)
        d = np.asarray(self.descriptors, dtype=np.float32)
        if d.ndim != 2 or d.shape[0] != n:
            raise ValueError(f"Features.descriptors must be N x D with N={n}, got {d.shape}")
        self.descriptors = d
        self.image_size = (int(self.image_size[0]), int(self.image_size[1]))

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return len(self.keypoints)

    @classmethod
    def empty(cls, image_size: Tuple[int, int], descriptor_dim: int = 128) -> "Features":
        """Features with 0 keypoints (what bad-but-valid images such as 1x1 or blank give)."""
        z = np.zeros(0, np.float32)
        return cls(np.zeros((0, 2), np.float32), z, z, z,
                   np.zeros((0, descriptor_dim), np.float32), image_size)

    def __getitem__(self, index) -> "Features":
        """Subset of the keypoints (index: slice, integer array or boolean mask)."""
        idx = np.arange(len(self))[index]
        idx = np.atleast_1d(idx)
        return Features(self.keypoints[idx], self.scales[idx], self.oris[idx], self.scores[idx],
                        self.descriptors[idx], self.image_size,
                        {k: v[idx] for k, v in self.extra.items()})

    def to_dict(self) -> Dict[str, np.ndarray]:
        """The hloc/LightGlue vocabulary: keypoints, keypoint_scores, descriptors (N x D),
        scales, oris (radians, clockwise on screen), image_size (W, H)."""
        return {"keypoints": self.keypoints, "keypoint_scores": self.scores,
                "descriptors": self.descriptors, "scales": self.scales, "oris": self.oris,
                "image_size": np.array(self.image_size, dtype=np.int64)}

    def to_torch(self, device=None) -> Dict[str, torch.Tensor]:
        """Same as :meth:`to_dict` with torch tensors on ``device``."""
        return {k: torch.as_tensor(v, device=device) for k, v in self.to_dict().items()}

    # ------------------------------------------------------------------ OpenCV
    def to_cv2(self):
        """Return ``(keypoints, descriptors)`` as OpenCV's ``detectAndCompute`` does.

        ``keypoints`` is a tuple of ``cv2.KeyPoint`` with ``pt`` = (x, y), ``size`` = 2 sigma
        (OpenCV's diameter), ``angle`` in degrees in [0, 360) clockwise on screen, ``response``
        = score, ``octave`` packed as OpenCV SIFT packs it, ``class_id`` = -1.
        ``descriptors`` is ``N x D`` float32, or ``None`` when there are no keypoints.
        """
        import cv2

        angles = np.mod(np.rad2deg(self.oris.astype(np.float64)), 360.0)
        angles = np.where(angles >= 360.0, 0.0, angles)
        octaves = cv2_octave_from_scale(self.scales)
        kps = tuple(
            cv2.KeyPoint(float(x), float(y), float(2.0 * s), float(a), float(r), int(o), -1)
            for (x, y), s, a, r, o in zip(self.keypoints, self.scales, angles, self.scores, octaves))
        return kps, (self.descriptors.copy() if len(self) else None)

    @classmethod
    def from_cv2(cls, keypoints, descriptors, image_size: Tuple[int, int]) -> "Features":
        """Build Features from OpenCV keypoints and descriptors (the inverse of :meth:`to_cv2`).

        Descriptors are converted to float32 and L2-normalised.
        """
        kpts, scales, oris, scores = keypoints_from_cv2(keypoints)
        n = len(kpts)
        if descriptors is None or n == 0:
            d = np.zeros((n, 0 if descriptors is None else np.asarray(descriptors).shape[-1]),
                         np.float32)
        else:
            d = np.asarray(descriptors, dtype=np.float32).reshape(n, -1)
            d = d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
        return cls(kpts, scales, oris, scores, d, image_size)

    # ------------------------------------------------------------------ kornia
    def to_kornia_laf(self, mr_size: float = DESCRIPTOR_SUPPORT, device=None) -> torch.Tensor:
        """Local affine frames in kornia's layout: ``1 x N x 2 x 3`` float32 tensor ``[A | c]``.

        ``A = mr_size * sigma * [[cos t, -sin t], [sin t, cos t]]`` with t = ori (clockwise on
        screen), which is kornia's ``laf_from_center_scale_ori`` with angle ``-degrees(ori)``.
        The LAF scale sqrt(det A) is ``mr_size * sigma``, the support half-width (6 sigma).
        """
        c = np.cos(self.oris).astype(np.float32)
        s = np.sin(self.oris).astype(np.float32)
        r = (mr_size * self.scales).astype(np.float32)
        laf = np.zeros((1, len(self), 2, 3), np.float32)
        laf[0, :, 0, 0] = r * c
        laf[0, :, 0, 1] = -r * s
        laf[0, :, 1, 0] = r * s
        laf[0, :, 1, 1] = r * c
        laf[0, :, :, 2] = self.keypoints
        return torch.from_numpy(laf).to(device) if device is not None else torch.from_numpy(laf)

    @classmethod
    def from_kornia_laf(cls, laf, descriptors, image_size, scores=None,
                        mr_size: float = DESCRIPTOR_SUPPORT) -> "Features":
        """Inverse of :meth:`to_kornia_laf` for similarity frames (``1 x N x 2 x 3`` or
        ``N x 2 x 3``)."""
        laf = torch.as_tensor(laf).detach().cpu().double().reshape(-1, 2, 3).numpy()
        a = laf[:, :, :2]
        scale = np.sqrt(np.abs(np.linalg.det(a))) / mr_size
        oris = np.arctan2(a[:, 1, 0], a[:, 0, 0])
        n = len(laf)
        scores = np.zeros(n, np.float32) if scores is None else scores
        return cls(laf[:, :, 2], scale, oris, scores,
                   torch.as_tensor(descriptors).detach().cpu().numpy().reshape(n, -1), image_size)

    # ------------------------------------------------------------------ COLMAP
    def to_colmap(self, affine: bool = False) -> np.ndarray:
        """Keypoints for a COLMAP database (``Database.write_keypoints``), float32.

        COLMAP puts the top-left pixel centre at (0.5, 0.5), so 0.5 is added to x and y.
        ``affine=False``: ``N x 4`` rows (x, y, scale = sigma, orientation = ori radians, same
        sense). ``affine=True``: ``N x 6`` rows (x, y, a11, a12, a21, a22) with
        ``A = sigma * [[cos t, -sin t], [sin t, cos t]]``.
        """
        xy = self.keypoints + 0.5
        if not affine:
            return np.concatenate([xy, self.scales[:, None], self.oris[:, None]], 1).astype(np.float32)
        c, s = np.cos(self.oris), np.sin(self.oris)
        a = np.stack([self.scales * c, -self.scales * s, self.scales * s, self.scales * c], 1)
        return np.concatenate([xy, a], 1).astype(np.float32)

    @classmethod
    def from_colmap(cls, keypoints: np.ndarray, descriptors: Optional[np.ndarray],
                    image_size: Tuple[int, int]) -> "Features":
        """Inverse of :meth:`to_colmap` (N x 2, 4 or 6 rows in COLMAP's convention)."""
        k = np.asarray(keypoints, dtype=np.float64)
        n = len(k)
        xy = k[:, :2] - 0.5
        if k.shape[1] == 2:
            scales, oris = np.ones(n), np.zeros(n)
        elif k.shape[1] == 4:
            scales, oris = k[:, 2], k[:, 3]
        elif k.shape[1] == 6:
            scales = np.sqrt(np.abs(k[:, 2] * k[:, 5] - k[:, 3] * k[:, 4]))
            oris = np.arctan2(k[:, 4], k[:, 2])
        else:
            raise ValueError(f"COLMAP keypoints have 2, 4 or 6 columns, got {k.shape[1]}")
        d = np.zeros((n, 0), np.float32) if descriptors is None else descriptors
        return cls(xy, scales, oris, np.zeros(n, np.float32), d, image_size)

