"""Coarse stage of RANSAC-Flow: dense feature matching and (multiple) RANSAC homographies.

Pipeline (methods notes 6.1):

1. Dense descriptors (:mod:`.features`) of the target at one scale and of the source at several
   scales (the paper's multi-scale source), pooled into one set.
2. **Mutual nearest neighbours** on cosine similarity over the whole grids.
3. Robust homography by :func:`correspondence.find_homography` (batched hypotheses, LO, IRLS
   refit), inlier tolerance ``tolerance x`` the target's long side (the paper's 0.05 in [-1, 1]
   units is 0.025 of the side).
4. **Multi-homography**: the target area explained by the homography (the cells of its inlier
   matches, closed morphologically, plus what ``explain`` adds: :func:`correspondence.align`
   passes the fine network's matchability, as the paper) is masked, matches landing there are
   dropped and RANSAC runs again, until a new homography's inliers cover at most
   ``min_new_area`` of new target area or have fewer than ``min_inlier_ratio`` of the first
   one's inliers (the first homography is always kept), or ``max_homographies`` are found.

Homographies map source pixels to target pixels (library convention, top-left pixel centre at
(0, 0)).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..matching import match_descriptors
from ..ransac import find_homography
from .features import DenseDescriptor, describe_scales, resize_image

__all__ = ["CoarseResult", "dense_matches", "multi_homography",
           "coarse_alignment", "inlier_area_mask", "plausible_homography", "DEFAULT_SCALES"]

#: source scales relative to the working size: the paper's 5-scale set for scaleR = 2
DEFAULT_SCALES = (0.5, 0.707, 1.0, 1.414, 2.0)


@dataclass
class CoarseResult:
    """Output of the coarse stage.

    Attributes:
        homographies: ``K x 3 x 3`` float64, source pixels -> target pixels (``K >= 0``).
        masks: ``K x H_t x W_t`` bool, target area newly explained by each homography.
        inliers: ``K`` inlier counts.
        src_pts, dst_pts: ``N x 2`` float32 mutual matches (source / target pixels).
    """

    homographies: np.ndarray
    masks: np.ndarray
    inliers: List[int] = field(default_factory=list)
    src_pts: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))
    dst_pts: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))

    def __len__(self) -> int:
        return len(self.homographies)


def _subcell_offsets(sim: torch.Tensor, idx: torch.Tensor, gh: int, gw: int) -> torch.Tensor:
    """Sub-cell refinement of matches on a grid: a parabola through the similarities of the
    matched cell and its two neighbours along each axis.

    Args:
        sim: ``M x (gh gw)`` similarities of each matched query to every grid cell.
        idx: ``M`` matched cell (flat index).

    Returns:
        ``M x 2`` offsets (dx, dy) in cells, in [-0.5, 0.5] (0 at the grid border)."""
    i, j = idx // gw, idx % gw
    rows = torch.arange(len(idx), device=sim.device)

    def axis(prev_ok, next_ok, prev, nxt):
        s0 = sim[rows, idx]
        sm = torch.where(prev_ok, sim[rows, prev.clamp(0, sim.shape[1] - 1)], s0)
        sp = torch.where(next_ok, sim[rows, nxt.clamp(0, sim.shape[1] - 1)], s0)
        den = sm - 2 * s0 + sp
        off = torch.where(den < -1e-6, 0.5 * (sm - sp) / den.clamp(max=-1e-6), torch.zeros_like(s0))
        return torch.where(prev_ok & next_ok, off.clamp(-0.5, 0.5), torch.zeros_like(off))

    dx = axis(j > 0, j < gw - 1, idx - 1, idx + 1)
    dy = axis(i > 0, i < gh - 1, idx - gw, idx + gw)
    return torch.stack([dx, dy], 1)


def dense_matches(source: torch.Tensor, target: torch.Tensor, describer: DenseDescriptor,
                  size: int = 256, scales: Sequence[float] = DEFAULT_SCALES,
                  target_stride: int = 4):
    """Mutual matches between the grids of ``source`` and ``target`` (``1 x H x W`` grey).

    The target is described at the scale that brings its long side to ``size`` on a grid of
    step ``target_stride``; the source at ``scales`` times the scale that brings its own long
    side to ``size`` (describer's grid step). Target positions are refined to sub-cell precision
    (:func:`_subcell_offsets`), so the matches are not quantised to the grid.

    Returns:
        ``(src_pts, dst_pts)``: ``M x 2`` float tensors in original pixels.
    """
    bt = min(1.0, size / max(target.shape[-2:]))
    bs = min(1.0, size / max(source.shape[-2:]))
    timg, (fx, fy) = resize_image(target, bt)
    tmap, st = describer.grid(timg, target_stride)
    gh, gw = tmap.shape[-2:]
    dt = tmap.reshape(tmap.shape[0], -1).T
    ds, ps = describe_scales(describer, source, scales, bs)
    if len(ds) == 0 or len(dt) == 0:
        return ps[:0], ps[:0]
    pairs, _ = match_descriptors(ds, dt, "mnn")  # mutual nearest neighbours (cosine)
    i0, i1 = pairs[:, 0], pairs[:, 1]
    sim = ds[i0] @ dt.T
    cell = torch.stack([i1 % gw, i1 // gw], 1).float() + _subcell_offsets(sim, i1, gh, gw)
    xy = cell * st + (describer.size - 1) / 2.0  # pixels of the resized target
    dst = torch.stack([(xy[:, 0] + 0.5) / fx - 0.5, (xy[:, 1] + 0.5) / fy - 0.5], 1)
    return ps[i0], dst


def plausible_homography(H: np.ndarray, src_size: Tuple[int, int], max_scale: float = 8.0) -> bool:
    """The homography maps the source corners (``src_size`` = (W, H)) to a convex,
    non-flipped quadrilateral whose area ratio is within ``[1 / max_scale^2, max_scale^2]``."""
    if not np.isfinite(H).all():
        return False
    w, h = src_size
    c = np.array([[0, 0, 1], [w - 1, 0, 1], [w - 1, h - 1, 1], [0, h - 1, 1]], float)
    q = c @ H.T
    if (q[:, 2] <= 1e-9).any():
        return False
    q = q[:, :2] / q[:, 2:]
    e = np.roll(q, -1, 0) - q
    cross = e[:, 0] * np.roll(e, -1, 0)[:, 1] - e[:, 1] * np.roll(e, -1, 0)[:, 0]
    if not (cross > 0).all():
        return False
    area = 0.5 * np.sum(q[:, 0] * np.roll(q[:, 1], -1) - np.roll(q[:, 0], -1) * q[:, 1])
    ratio = area / max(float((w - 1) * (h - 1)), 1.0)
    return 1 / max_scale ** 2 <= ratio <= max_scale ** 2


def inlier_area_mask(dst_pts: np.ndarray, size: Tuple[int, int], cell: float) -> np.ndarray:
    """Target area covered by matched points: ``H x W`` bool mask of the ``cell``-sized grid
    cells that hold a point, closed (dilate 2 cells, erode 1 cell) to fill gaps between them."""
    w, h = size
    gw, gh = max(1, int(np.ceil(w / cell))), max(1, int(np.ceil(h / cell)))
    grid = torch.zeros(1, 1, gh, gw)
    if len(dst_pts):
        ij = np.clip(np.floor(np.asarray(dst_pts) / cell).astype(int), 0, [gw - 1, gh - 1])
        grid[0, 0, ij[:, 1], ij[:, 0]] = 1
    grid = F.max_pool2d(grid, 5, 1, 2)
    grid = -F.max_pool2d(-grid, 3, 1, 1)
    up = F.interpolate(grid, size=(h, w), mode="nearest")
    return up[0, 0].numpy() > 0.5


ExplainFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def multi_homography(src_pts: np.ndarray, dst_pts: np.ndarray, src_size: Tuple[int, int],
                     dst_size: Tuple[int, int], explain: Optional[ExplainFn] = None,
                     max_homographies: int = 4, min_new_area: float = 0.01,
                     tolerance: float = 0.025, min_inliers: int = 12,
                     min_inlier_ratio: float = 0.1, seed: Optional[int] = 0,
                     **ransac) -> CoarseResult:
    """Fit homographies one after the other to the matches not yet explained.

    Args:
        src_pts, dst_pts: ``N x 2`` matches (source / target pixels).
        src_size, dst_size: ``(W, H)`` of the two images.
        explain: optional ``explain(H, inlier_dst_pts) -> H_t x W_t bool``: further target area
            explained by a homography (:func:`correspondence.align` passes the fine network's
            matchability >= threshold, as the paper), added to the area of its inlier matches
            (:func:`inlier_area_mask`, cells of 1/40 of the long side).
        max_homographies: most homographies (1 = the single-homography coarse stage).
        min_new_area: stop when a new homography's inliers cover at most this fraction of the
            target outside the area already explained.
        tolerance: RANSAC inlier threshold as a fraction of the target's long side.
        min_inliers: a homography needs at least this many inliers, and a later one at least
            ``min_inlier_ratio`` times the first one's.
        seed, **ransac: passed to :func:`correspondence.find_homography`.

    Returns:
        :class:`CoarseResult` (``K = 0`` when not even one homography is found).
    """
    src_pts = np.asarray(src_pts, np.float32).reshape(-1, 2)
    dst_pts = np.asarray(dst_pts, np.float32).reshape(-1, 2)
    wt, ht = dst_size
    thr = tolerance * max(wt, ht)
    cell = max(4.0, max(wt, ht) / 40.0)
    covered = np.zeros((ht, wt), bool)
    active = np.ones(len(src_pts), bool)
    Hs, masks, counts = [], [], []
    while len(Hs) < max_homographies and active.sum() >= max(4, min_inliers):
        H, inl = find_homography(src_pts[active], dst_pts[active], threshold=thr, seed=seed, **ransac)
        n_inl = int(inl.sum())
        need = max(min_inliers, min_inlier_ratio * counts[0]) if counts else min_inliers
        if n_inl < need or not plausible_homography(H, src_size):
            break
        ids = np.nonzero(active)[0]
        inl_area = inlier_area_mask(dst_pts[ids[inl]], dst_size, cell) & ~covered
        # a later homography must explain new area with its own inliers (a wrong homography
        # can look "matchable" on flat regions), then the explain() area is added
        if Hs and inl_area.mean() <= min_new_area:
            break
        area = inl_area
        if explain is not None:
            area = area | (explain(H, dst_pts[ids[inl]]) & ~covered)
        Hs.append(H.astype(np.float64))
        masks.append(area)
        counts.append(n_inl)
        covered |= area
        # drop the inliers and every match landing in the explained area
        active[ids[inl]] = False
        xy = np.clip(np.round(dst_pts).astype(int), 0, [wt - 1, ht - 1])
        active &= ~covered[xy[:, 1], xy[:, 0]]
    hom = np.stack(Hs) if Hs else np.zeros((0, 3, 3))
    msk = np.stack(masks) if masks else np.zeros((0, ht, wt), bool)
    return CoarseResult(hom, msk, counts, src_pts, dst_pts)


def coarse_alignment(source: torch.Tensor, target: torch.Tensor,
                     describer: Optional[DenseDescriptor] = None, size: int = 256,
                     scales: Sequence[float] = DEFAULT_SCALES, max_homographies: int = 4,
                     min_new_area: float = 0.01, tolerance: float = 0.025,
                     explain: Optional[ExplainFn] = None, seed: Optional[int] = 0,
                     **ransac) -> CoarseResult:
    """The whole coarse stage on ``1 x H x W`` grey tensors (see the module docstring).

    Returns:
        :class:`CoarseResult`; ``K = 0`` homographies when the images cannot be related.
    """
    describer = DenseDescriptor() if describer is None else describer
    sp, dp = dense_matches(source, target, describer, size, scales)
    return multi_homography(sp.cpu().numpy(), dp.cpu().numpy(),
                            (source.shape[-1], source.shape[-2]), (target.shape[-1], target.shape[-2]),
                            explain, max_homographies, min_new_area, tolerance, seed=seed, **ransac)
