"""Non-maximum suppression over space and scale, edge rejection and sub-pixel/sub-scale
refinement of detector score maps (all torch ops, batched over images and candidates).

All levels are flattened into one buffer, so each step (spatial maxima, the tests against the
neighbouring scales, the 3 x 3 neighbourhood gather, the edge test and the quadratic refinement)
is one vectorised op over the candidates of *all* levels and images: the cost of the many small
per-candidate ops is paid once, not once per level.
"""
from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch

__all__ = ["scale_space_nms"]

# 3 x 3 neighbourhood offsets (dy, dx), row-major: index 4 is the centre
_NEIGHBOURS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]


def scale_space_nms(levels: Sequence[Tuple[float, float, float, torch.Tensor, torch.Tensor]],
                    conf, return_index: bool = False) -> torch.Tensor:
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
    the same image position (nearest pixel of that level), and those levels exist (with
    ``scale_nms >= 1`` keypoints come from interior levels only, as in SIFT, unless there are at
    most ``2 scale_nms`` levels), (3) is not on the level's outer pixel
    ring, (4) passes the edge test ``tr^2 / det < (t + 1)^2 / t`` of the score Hessian
    (t = edge_threshold, a peak needs det > 0), and (5) with refinement, has a quadratic-fit
    offset below 1.5 px.

    Returns:
        ``K x 5`` rows ``(batch index, x, y, sigma, score)`` with (x, y) in pixels of the
        original image (top-left pixel centre = (0, 0)), ordered by level, then batch index,
        row and column. With ``return_index``, ``K x 8``: also the level index and the integer
        peak position ``(column, row)`` in that level's pixels (before refinement).
    """
    if not levels:
        return torch.zeros((0, 8 if return_index else 5))
    dtype, device = levels[0][3].dtype, levels[0][3].device
    nlev = len(levels)
    # every level's scores and window maxima in one flat buffer; per-level geometry tables
    s_all = torch.cat([lv[3].reshape(-1) for lv in levels])
    p_all = torch.cat([lv[4].reshape(-1) for lv in levels])
    sizes = [lv[3].numel() for lv in levels]
    base_l = torch.tensor([0] + sizes[:-1], device=device).cumsum(0)
    h_l = torch.tensor([lv[3].shape[-2] for lv in levels], device=device)
    w_l = torch.tensor([lv[3].shape[-1] for lv in levels], device=device)
    geo = torch.tensor([[lv[0], lv[1], lv[2]] for lv in levels], dtype=dtype, device=device)

    # spatial maxima (finite: -inf marks undefined borders), all levels in one pass
    keep = (s_all == p_all) & (s_all > -math.inf)
    if conf.score_threshold is not None:
        keep &= s_all > conf.score_threshold
    g = torch.nonzero(keep).squeeze(1)  # flat index into s_all
    lev = torch.searchsorted(base_l, g, right=True) - 1
    hh, ww = h_l[lev], w_l[lev]
    loc = g - base_l[lev]
    xi, yi, bi = loc % ww, (loc // ww) % hh, loc // (hh * ww)
    ok = (xi > 0) & (xi < ww - 1) & (yi > 0) & (yi < hh - 1)  # off the outer pixel ring
    val = s_all[g]
    fx, fy = geo[lev, 1], geo[lev, 2]

    def at_level(k2, src):
        """``src`` (s_all or p_all) at the nearest pixel of level ``k2`` (clamped into
        range) to each candidate's position."""
        k2c = k2.clamp(0, nlev - 1)
        # via the original-image position, as (i + 0.5) / f - 0.5 then back: the same float
        # rounding as the per-level definition (a shortcut can round a half-way pixel apart)
        h2, w2 = h_l[k2c], w_l[k2c]
        y2 = (((yi.to(dtype) + 0.5) / fy - 0.5 + 0.5) * geo[k2c, 2] - 0.5).round().long()
        x2 = (((xi.to(dtype) + 0.5) / fx - 0.5 + 0.5) * geo[k2c, 1] - 0.5).round().long()
        y2 = torch.minimum(y2.clamp_min(0), h2 - 1)
        x2 = torch.minimum(x2.clamp_min(0), w2 - 1)
        return src[base_l[k2c] + (bi * h2 + y2) * w2 + x2]

    # strictly above the window maxima of the neighbouring scales, which must exist (SIFT's
    # rule: otherwise the first and last levels collect every point whose scale lies outside
    # the searched range, 27 % of the keypoints on boat at scale_nms=1); a scale space too
    # short to have an interior level keeps its boundary levels
    interior = nlev > 2 * conf.scale_nms
    for dk in range(-conf.scale_nms, conf.scale_nms + 1):
        if dk == 0:
            continue
        k2 = lev + dk
        exists = (k2 >= 0) & (k2 < nlev)
        if interior:
            ok &= exists
        ok &= ~exists | (val > at_level(k2, p_all))
    sel = torch.nonzero(ok).squeeze(1)
    g, lev, bi, yi, xi, ww, val, fx, fy = (t[sel] for t in (g, lev, bi, yi, xi, ww, val, fx, fy))
    dy = torch.tensor([d[0] for d in _NEIGHBOURS], device=device)
    dx = torch.tensor([d[1] for d in _NEIGHBOURS], device=device)
    win = s_all[g[:, None] + dy * ww[:, None] + dx]  # K x 9, row-major 3 x 3
    refine_scale = conf.refine and conf.scale_nms >= 1
    sig = geo[lev, 0]

    # spatial derivatives of the score at the candidate (3 x 3 neighbourhood)
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
        if refine_scale:  # scores at the neighbouring scales (NaN where a level is missing)
            sm, sp = (torch.where((lev + dk >= 0) & (lev + dk < nlev), at_level(lev + dk, s_all),
                                  torch.full_like(val, math.nan)) for dk in (-1, 1))
            dss = sp + sm - 2 * val
            ds = (sp - sm) / 2
            good = torch.isfinite(dss) & (dss < -1e-12)
            os_ = torch.where(good, -ds / dss.where(good, -torch.ones_like(dss)),
                              torch.zeros_like(ds)).clamp(-0.5, 0.5)
            lsig = lsig + os_ / conf.scales_per_octave
    xo = (xi.to(dtype) + ox + 0.5) / fx - 0.5  # position in the original image
    yo = (yi.to(dtype) + oy + 0.5) / fy - 0.5
    cols = [bi.to(dtype), xo, yo, 2.0 ** lsig, score]
    if return_index:
        cols += [lev.to(dtype), xi.to(dtype), yi.to(dtype)]
    return torch.stack(cols, 1)[keep]
