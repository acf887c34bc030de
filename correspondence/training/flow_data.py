"""Training pairs for the RANSAC-Flow fine network: synthetic warps of photos.

A pair ``(a, b)`` is two ``S x S`` grey crops of one photo ``I``:

* ``b(q) = I(o + z q)`` (offset ``o``, zoom ``z`` image pixels per crop pixel);
* ``a(p) = b(W(p))`` with ``W(p) = H(p) + d(p)``: a random homography ``H`` (corners moved by up
  to ``max_corner`` px, plus a shift) and a smooth non-rigid field ``d`` (bicubic upsampling of a
  4 x 4 random grid, amplitude up to ``max_smooth`` px). So the ground-truth flow on ``a``'s grid
  is ``flow_ab(p) = W(p) - p`` (pixel ``p`` of ``a`` sits at ``p + flow_ab(p)`` in ``b``): the
  residual misalignment a coarse homography leaves;
* independent photometric change of both crops (gain, bias, gamma, noise, sometimes blur) and,
  with probability ``occlusion``, a rectangle of ``b`` replaced by another photo's content
  (pixels of ``a`` that land there, or outside ``b``, are marked invalid).

The pair of item ``i`` of step ``s`` is a pure function of ``(seed, s, i)``, so a resumed run sees
exactly the batches an uninterrupted one would.

Photos: ``../shared/data/photos`` (see its README). :data:`HELD_OUT` folders are never used for
training: the benchmark (``tools/bench_flow.py``) draws its synthetic pairs from them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence

import cv2
import numpy as np
import torch

from lift.image import IMAGE_EXTENSIONS, load_image

__all__ = ["HELD_OUT", "photo_paths", "load_photos", "SyntheticFlowPairs", "random_warp_pair",
           "warp_with_flow_gt", "random_benchmark_warp"]

#: photo folders held out of training (benchmark material)
HELD_OUT = ("CSet14", "CSet5")


def photo_paths(root, split: str = "train") -> List[Path]:
    """Sorted photo files under ``root`` (``../shared/data/photos``): ``split="train"`` excludes
    the :data:`HELD_OUT` folders, ``"heldout"`` returns only those, ``"all"`` everything."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no photo folder at {root}")
    if split not in ("train", "heldout", "all"):
        raise ValueError(f"split must be 'train', 'heldout' or 'all', got {split!r}")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if split != "all":
        held = [any(part in HELD_OUT for part in p.relative_to(root).parts) for p in files]
        files = [p for p, h in zip(files, held) if h == (split == "heldout")]
    if not files:
        raise FileNotFoundError(f"no {split} photos under {root}")
    return files


def load_photos(paths: Sequence[Path], max_side: int = 512) -> List[np.ndarray]:
    """Grey float32 [0, 1] photos, downscaled (area) so the long side is at most ``max_side``."""
    out = []
    for p in paths:
        img = load_image(p)
        s = max_side / max(img.shape)
        if s < 1:
            img = cv2.resize(img, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
        out.append(img.astype(np.float32) / 255.0)
    return out


def _photometric(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    img = img * rng.uniform(0.7, 1.3) + rng.uniform(-0.1, 0.1)
    img = np.clip(img, 0, 1) ** rng.uniform(0.7, 1.4)
    if rng.random() < 0.3:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 1.2))
    img = img + rng.normal(0, rng.uniform(0, 0.03), img.shape).astype(np.float32)
    return np.clip(img, 0, 1).astype(np.float32)


def random_warp_pair(photo: np.ndarray, other: np.ndarray, rng: np.random.Generator,
                     size: int = 128, max_corner: float = 16.0, max_shift: float = 8.0,
                     max_smooth: float = 4.0, occlusion: float = 0.3,
                     photometric: bool = True) -> Dict[str, np.ndarray]:
    """One synthetic pair (see the module docstring).

    Args:
        photo: ``h x w`` float32 photo; other: a second photo for the occluder.
        rng: numpy generator (the pair is a function of its state).
        size: crop side ``S``.

    Returns:
        dict ``a``, ``b`` (``S x S`` float32 [0, 1]), ``flow`` (``S x S x 2`` px, on ``a``'s
        grid), ``valid`` (``S x S`` bool: ``a``'s pixel lands inside ``b``, not occluded).
    """
    h, w = photo.shape
    zmax = min(h, w) / (size + 2 * max_corner + 2 * max_shift + 8)
    z = float(np.exp(rng.uniform(np.log(min(0.7, zmax)), np.log(max(min(2.0, zmax), 0.7)))))
    span = z * (size - 1)
    o = np.array([rng.uniform(0, max(w - 1 - span, 0)), rng.uniform(0, max(h - 1 - span, 0))])
    # homography from corner displacements + shift
    c = np.array([[0, 0], [size - 1, 0], [size - 1, size - 1], [0, size - 1]], np.float32)
    m = rng.uniform(0, max_corner)
    d = c + rng.uniform(-m, m, (4, 2)) + rng.uniform(-max_shift, max_shift, 2)
    H = cv2.getPerspectiveTransform(c, d.astype(np.float32))
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    den = H[2, 0] * xs + H[2, 1] * ys + H[2, 2]
    wx = (H[0, 0] * xs + H[0, 1] * ys + H[0, 2]) / den
    wy = (H[1, 0] * xs + H[1, 1] * ys + H[1, 2]) / den
    amp = rng.uniform(0, max_smooth)
    smooth = rng.normal(0, amp, (4, 4, 2)).astype(np.float32)
    smooth = cv2.resize(smooth, (size, size), interpolation=cv2.INTER_CUBIC)
    wx, wy = wx + smooth[..., 0], wy + smooth[..., 1]
    # b = I(o + z q); a = b(W(p)) = I(o + z W(p))
    bx, by = o[0] + z * xs, o[1] + z * ys
    b = cv2.remap(photo, bx.astype(np.float32), by.astype(np.float32), cv2.INTER_LINEAR,
                  borderMode=cv2.BORDER_REFLECT)
    a = cv2.remap(photo, (o[0] + z * wx).astype(np.float32), (o[1] + z * wy).astype(np.float32),
                  cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    valid = (wx >= 0) & (wx <= size - 1) & (wy >= 0) & (wy <= size - 1)
    if rng.random() < occlusion:
        rw, rh = (rng.uniform(0.15, 0.5, 2) * size).astype(int)
        x0, y0 = rng.integers(0, size - rw), rng.integers(0, size - rh)
        oh, ow = other.shape
        sx, sy = rng.integers(0, max(ow - rw, 1)), rng.integers(0, max(oh - rh, 1))
        patch = other[sy:sy + rh, sx:sx + rw]
        b[y0:y0 + patch.shape[0], x0:x0 + patch.shape[1]] = patch
        inside = (wx >= x0 - 1) & (wx <= x0 + patch.shape[1]) & (wy >= y0 - 1) & (
            wy <= y0 + patch.shape[0])
        valid &= ~inside
    if photometric:
        a, b = _photometric(a, rng), _photometric(b, rng)
    flow = np.stack([wx - xs, wy - ys], -1).astype(np.float32)
    return {"a": a.astype(np.float32), "b": b.astype(np.float32), "flow": flow, "valid": valid}


class SyntheticFlowPairs:
    """Deterministic batches of synthetic pairs.

    Args:
        photos: grey float32 photos (:func:`load_photos`).
        size: crop side. seed: run seed. **warp: :func:`random_warp_pair` settings.
    """

    def __init__(self, photos: Sequence[np.ndarray], size: int = 128, seed: int = 0, **warp):
        if len(photos) < 2:
            raise ValueError(f"need at least 2 photos, got {len(photos)}")
        self.photos, self.size, self.seed, self.warp = list(photos), int(size), int(seed), warp

    def pair(self, step: int, item: int) -> Dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, step, item])
        i, j = rng.choice(len(self.photos), 2, replace=False)
        return random_warp_pair(self.photos[i], self.photos[j], rng, self.size, **self.warp)

    def batch(self, step: int, batch_size: int) -> Dict[str, torch.Tensor]:
        """``a``, ``b``: ``B x 1 x S x S``; ``flow``: ``B x 2 x S x S``; ``valid``: ``B x 1 x S x S``."""
        items = [self.pair(step, k) for k in range(batch_size)]
        return {"a": torch.from_numpy(np.stack([it["a"] for it in items]))[:, None],
                "b": torch.from_numpy(np.stack([it["b"] for it in items]))[:, None],
                "flow": torch.from_numpy(np.stack([it["flow"] for it in items])).permute(0, 3, 1, 2),
                "valid": torch.from_numpy(np.stack([it["valid"] for it in items]))[:, None]}


def warp_with_flow_gt(image: np.ndarray, H: np.ndarray, field: np.ndarray, iters: int = 12):
    """Full-image synthetic pair with exact ground truth (for tests and the benchmark).

    The target is ``target(q) = image(H^-1 q + field(q))`` (``field``: ``h x w x 2`` px on the
    target grid, e.g. smooth non-rigid motion; zero outside the image). The forward flow on the
    source grid is found by fixed-point inversion of ``q -> H^-1 q + field(q)``.

    Args:
        image: ``h x w`` or ``h x w x 3`` source (any dtype cv2.remap accepts).
        H: ``3 x 3`` source -> target homography (pixels). field: ``h x w x 2`` float32.

    Returns:
        ``(target, flow, valid)``: target like ``image``; ``h x w x 2`` float32 flow (source
        pixel ``p`` -> target pixel ``p + flow[p]``); ``h x w`` bool, the correspondent lies
        inside the target and the inversion converged (residual < 0.05 px).
    """
    h, w = image.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    grid = np.stack([xs, ys], -1)

    def apply(M, pts):
        den = M[2, 0] * pts[..., 0] + M[2, 1] * pts[..., 1] + M[2, 2]
        return np.stack([(M[0, 0] * pts[..., 0] + M[0, 1] * pts[..., 1] + M[0, 2]) / den,
                         (M[1, 0] * pts[..., 0] + M[1, 1] * pts[..., 1] + M[1, 2]) / den],
                        -1).astype(np.float32)

    back = apply(np.linalg.inv(H), grid) + field.astype(np.float32)
    target = cv2.remap(image, back[..., 0], back[..., 1], cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    q = apply(H, grid)
    for _ in range(iters):
        b = np.stack([cv2.remap(back[..., i], q[..., 0], q[..., 1], cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_REPLICATE) for i in range(2)], -1)
        q = q + (grid - b)
    b = np.stack([cv2.remap(back[..., i], q[..., 0], q[..., 1], cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REPLICATE) for i in range(2)], -1)
    valid = ((q[..., 0] >= 0) & (q[..., 0] <= w - 1) & (q[..., 1] >= 0) & (q[..., 1] <= h - 1)
             & (np.linalg.norm(b - grid, axis=-1) < 0.05))
    return target, (q - grid).astype(np.float32), valid


def random_benchmark_warp(image: np.ndarray, rng: np.random.Generator, corner: float = 0.12,
                          smooth: float = 4.0):
    """A seeded benchmark pair from one photo: homography with corners moved by up to
    ``corner`` x the image side, plus a smooth field (4 x 4 grid, std ``smooth`` px, bicubic),
    plus photometric change of the target. Returns :func:`warp_with_flow_gt`'s triple and H."""
    h, w = image.shape[:2]
    c = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float32)
    d = c + rng.uniform(-corner, corner, (4, 2)) * [w, h]
    H = cv2.getPerspectiveTransform(c, d.astype(np.float32)).astype(np.float64)
    field = cv2.resize(rng.normal(0, smooth, (4, 4, 2)).astype(np.float32), (w, h),
                       interpolation=cv2.INTER_CUBIC)
    target, flow, valid = warp_with_flow_gt(image, H, field)
    t = target.astype(np.float32) / 255.0 * rng.uniform(0.8, 1.2) + rng.uniform(-0.05, 0.05)
    t = np.clip(t, 0, 1) ** rng.uniform(0.8, 1.25)
    return (np.clip(t * 255 + 0.5, 0, 255)).astype(np.uint8), flow, valid, H
