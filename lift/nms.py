"""Non-maximum suppression over space and scale, edge rejection and sub-pixel/sub-scale
refinement of detector score maps (all torch ops, batched over images and candidates).

The work is split in two: per scale level, a handful of dense tensor ops find the pixels that
survive the spatial and scale maxima tests and gather their 3 x 3 neighbourhood and their values
at the neighbouring scales; then one vectorised pass over the candidates of *all* levels does the
edge test and the quadratic refinement (so the cost of the small per-candidate ops is paid once,
not once per level).
"""
from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch

__all__ = ["scale_space_nms"]

# 3 x 3 neighbourhood offsets (dy, dx), row-major: index 4 is the centre
_NEIGHBOURS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]


def _nearest_index(n_here: int, f_here: float, f_there: float, n_there: int, dtype, device):
    """Index of the nearest pixel centre of a level resized by ``f_there`` for each of the
    ``n_here`` pixel centres of a level resized by ``f_here`` (same image, one axis)."""
    i = torch.arange(n_here, device=device, dtype=dtype)
    orig = (i + 0.5) / f_here - 0.5  # position in the original image
    return ((orig + 0.5) * f_there - 0.5).round().long().clamp(0, n_there - 1)


def scale_space_nms(levels: Sequence[Tuple[float, float, float, torch.Tensor, torch.Tensor]],
                    conf) -> torch.Tensor:
    """Keypoint candidates from a scale space of score maps.

    Args:
        levels: per scale, ``(sigma, fx, fy, scores, pooled)``: the scale sigma (pixels), the
            resize factors of the level (level width / image width, level height / image
            height), the ``B x h x w`` score map (-inf where undefined) and its
            ``(2r+1) x (2r+1)`` max-pooled version (r = ``conf.nms_radius``). Levels are
            ordered by increasing sigma.
        conf: a :class:`lift.LIFTConfig` (uses score_threshold, scale_nms, edge_threshold,
            refine, scales_per_octave).

    A candidate is a pixel that (1) equals the max of its (2r+1)^2 window and is finite,
    (2) is strictly larger than the window maxima of the ``+-scale_nms`` neighbouring levels at
    the same image position (nearest pixel of that level), (3) is not on the level's outer pixel
    ring, (4) passes the edge test ``tr^2 / det < (t + 1)^2 / t`` of the score Hessian
    (t = edge_threshold, a peak needs det > 0), and (5) with refinement, has a quadratic-fit
    offset below 1.5 px.

    Returns:
        ``K x 5`` rows ``(batch index, x, y, sigma, score)`` with (x, y) in pixels of the
        original image (top-left pixel centre = (0, 0)), ordered by level, then batch index,
        row and column.
    """
    if not levels:
        return torch.zeros((0, 5))
    dtype, device = levels[0][3].dtype, levels[0][3].device
    refine_scale = conf.refine and conf.scale_nms >= 1
    nb_idx = {}  # (k, k2) -> (row index, column index) of level k2 at the pixels of level k

    def neighbour_index(k, k2):
        if (k, k2) not in nb_idx:
            _, fx, fy, s, _ = levels[k]
            _, fx2, fy2, s2, _ = levels[k2]
            nb_idx[(k, k2)] = (_nearest_index(s.shape[-2], fy, fy2, s2.shape[-2], dtype, device),
                               _nearest_index(s.shape[-1], fx, fx2, s2.shape[-1], dtype, device))
        return nb_idx[(k, k2)]

    parts = []  # per level: (bi, yi, xi, 3x3 values K x 9, value at scale -1, at scale +1, level)
    for k, (sigma, fx, fy, s, pooled) in enumerate(levels):
        bsz, hh, ww = s.shape
        if hh < 3 or ww < 3:
            continue
        # spatial maxima (finite: -inf marks undefined borders), off the outer pixel ring
        keep = (s == pooled) & (s > -math.inf)
        if conf.score_threshold is not None:
            keep &= s > conf.score_threshold
        centre = torch.nonzero(keep.view(-1)).squeeze(1)  # flat index (b, y, x)
        xi, yi, bi = centre % ww, (centre // ww) % hh, centre // (hh * ww)
        ok = (xi > 0) & (xi < ww - 1) & (yi > 0) & (yi < hh - 1)
        val = s.view(-1)[centre]
        # strictly above the window maxima of the neighbouring scales (sparse gathers)
        for dk in range(-conf.scale_nms, conf.scale_nms + 1):
            if dk == 0 or not 0 <= k + dk < len(levels):
                continue
            ry, rx = neighbour_index(k, k + dk)
            p2 = levels[k + dk][4]
            ok &= val > p2.view(-1)[(bi * p2.shape[-2] + ry[yi]) * p2.shape[-1] + rx[xi]]
        sel = torch.nonzero(ok).squeeze(1)
        if len(sel) == 0:
            continue
        centre, bi, yi, xi = centre[sel], bi[sel], yi[sel], xi[sel]
        offs = torch.tensor([dy * ww + dx for dy, dx in _NEIGHBOURS], device=device)
        win = s.view(-1)[centre[:, None] + offs]  # K x 9
        sides = []
        for dk in (-1, 1):
            if refine_scale and 0 <= k + dk < len(levels):
                ry, rx = neighbour_index(k, k + dk)
                s2 = levels[k + dk][3]
                sides.append(s2.view(-1)[(bi * s2.shape[-2] + ry[yi]) * s2.shape[-1] + rx[xi]])
            else:
                sides.append(torch.full_like(win[:, 4], math.nan))
        parts.append((bi, yi, xi, win, sides[0], sides[1], torch.full_like(bi, k)))
    if not parts:
        return torch.zeros((0, 5), dtype=dtype, device=device)
    bi, yi, xi, win, sm, sp, lev = (torch.cat(p) for p in zip(*parts))

    # per-candidate level geometry
    sig = torch.tensor([l[0] for l in levels], dtype=dtype, device=device)[lev]
    fx = torch.tensor([l[1] for l in levels], dtype=dtype, device=device)[lev]
    fy = torch.tensor([l[2] for l in levels], dtype=dtype, device=device)[lev]

    # spatial derivatives of the score at the candidate (3 x 3 neighbourhood)
    val = win[:, 4]
    dxx = win[:, 5] + win[:, 3] - 2 * val
    dyy = win[:, 7] + win[:, 1] - 2 * val
    dxy = (win[:, 8] - win[:, 6] - win[:, 2] + win[:, 0]) / 4
    gx = (win[:, 5] - win[:, 3]) / 2
    gy = (win[:, 7] - win[:, 1]) / 2
    keep = torch.isfinite(dxx) & torch.isfinite(dyy) & torch.isfinite(dxy)
    tr, detm = dxx + dyy, dxx * dyy - dxy * dxy
    # a peak must be curved beyond float noise (flat or blank regions give none)
    keep &= -tr > 1e-4 * (val.abs() + 1)
    if conf.edge_threshold > 0:
        r = conf.edge_threshold
        keep &= (detm > 0) & (tr * tr * r < (r + 1) ** 2 * detm)
    score, lsig = val, torch.log2(sig)
    ox = oy = torch.zeros_like(val)
    if conf.refine:
        safe = detm.abs() > 1e-12
        den = detm.where(safe, torch.ones_like(detm))
        ox = torch.where(safe, -(dyy * gx - dxy * gy) / den, torch.zeros_like(gx))
        oy = torch.where(safe, -(dxx * gy - dxy * gx) / den, torch.zeros_like(gy))
        keep &= (ox.abs() < 1.5) & (oy.abs() < 1.5)
        ox, oy = ox.clamp(-1, 1), oy.clamp(-1, 1)
        score = val + 0.5 * (gx * ox + gy * oy)
        if refine_scale:
            dss = sp + sm - 2 * val
            ds = (sp - sm) / 2
            good = torch.isfinite(dss) & (dss < -1e-12)
            os_ = torch.where(good, -ds / dss.where(good, -torch.ones_like(dss)),
                              torch.zeros_like(ds)).clamp(-0.5, 0.5)
            lsig = lsig + os_ / conf.scales_per_octave
    xo = (xi.to(dtype) + ox + 0.5) / fx - 0.5  # position in the original image
    yo = (yi.to(dtype) + oy + 0.5) / fy - 0.5
    return torch.stack([bi.to(dtype), xo, yo, 2.0 ** lsig, score], 1)[keep]
