"""Non-maximum suppression over space and scale, edge rejection and sub-pixel/sub-scale
refinement of detector score maps (all torch ops, batched over images and candidates)."""
from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch

__all__ = ["scale_space_nms"]


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
    the same image position, (3) is not on the level's outer pixel ring, (4) passes the edge
    test ``tr^2 / det < (t + 1)^2 / t`` of the score Hessian (t = edge_threshold, a peak needs
    det > 0), and (5) with refinement, has a quadratic-fit offset below 1.5 px.

    Returns:
        ``K x 5`` rows ``(batch index, x, y, sigma, score)`` with (x, y) in pixels of the
        original image (top-left pixel centre = (0, 0)).
    """
    dtype = levels[0][3].dtype if levels else torch.float32
    cand = []  # rows: b, x_orig, y_orig, sigma, score
    for k, (sigma, fx, fy, s, pooled) in enumerate(levels):
        is_max = (s == pooled) & torch.isfinite(s)
        if conf.score_threshold is not None:
            is_max &= s > conf.score_threshold
        bi, yi, xi = torch.nonzero(is_max, as_tuple=True)
        if len(bi) == 0:
            continue
        val = s[bi, yi, xi]
        keep = torch.ones_like(val, dtype=torch.bool)
        xo = (xi.to(dtype) + 0.5) / fx - 0.5  # position in the original image
        yo = (yi.to(dtype) + 0.5) / fy - 0.5
        nb_vals = {}
        for dk in range(-conf.scale_nms, conf.scale_nms + 1):
            if dk == 0 or not 0 <= k + dk < len(levels):
                continue
            _, fx2, fy2, s2, pooled2 = levels[k + dk]
            x2 = ((xo + 0.5) * fx2 - 0.5).round().long().clamp(0, s2.shape[-1] - 1)
            y2 = ((yo + 0.5) * fy2 - 0.5).round().long().clamp(0, s2.shape[-2] - 1)
            keep &= val > pooled2[bi, y2, x2]
            nb_vals[dk] = s2[bi, y2, x2]
        # spatial derivatives of the score at the candidate (3 x 3 neighbourhood)
        hh, ww = s.shape[-2:]
        inside = (xi > 0) & (xi < ww - 1) & (yi > 0) & (yi < hh - 1)
        keep &= inside
        xc, yc = xi.clamp(1, ww - 2), yi.clamp(1, hh - 2)

        def at(dy, dx):
            return s[bi, yc + dy, xc + dx]

        dxx = at(0, 1) + at(0, -1) - 2 * val
        dyy = at(1, 0) + at(-1, 0) - 2 * val
        dxy = (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1)) / 4
        gx = (at(0, 1) - at(0, -1)) / 2
        gy = (at(1, 0) - at(-1, 0)) / 2
        finite = torch.isfinite(dxx) & torch.isfinite(dyy) & torch.isfinite(dxy)
        keep &= finite
        tr, detm = dxx + dyy, dxx * dyy - dxy * dxy
        # a peak must be curved beyond float noise (flat or blank regions give none)
        keep &= -tr > 1e-4 * (val.abs() + 1)
        if conf.edge_threshold > 0:
            r = conf.edge_threshold
            keep &= (detm > 0) & (tr * tr * r < (r + 1) ** 2 * detm)
        score = val
        lsig = torch.full_like(val, math.log2(sigma))
        if conf.refine:
            safe = detm.abs() > 1e-12
            ox = torch.where(safe, -(dyy * gx - dxy * gy) / detm.where(safe, torch.ones_like(detm)), torch.zeros_like(gx))
            oy = torch.where(safe, -(dxx * gy - dxy * gx) / detm.where(safe, torch.ones_like(detm)), torch.zeros_like(gy))
            ok = (ox.abs() < 1.5) & (oy.abs() < 1.5)
            keep &= ok
            ox, oy = ox.clamp(-1, 1), oy.clamp(-1, 1)
            xo = (xi.to(dtype) + ox + 0.5) / fx - 0.5
            yo = (yi.to(dtype) + oy + 0.5) / fy - 0.5
            score = val + 0.5 * (gx * ox + gy * oy)
            if -1 in nb_vals and 1 in nb_vals:
                sm, sp = nb_vals[-1], nb_vals[1]
                dss = sp + sm - 2 * val
                ds = (sp - sm) / 2
                good = torch.isfinite(dss) & (dss < -1e-12)
                os_ = torch.where(good, -ds / dss.where(good, -torch.ones_like(dss)),
                                  torch.zeros_like(ds)).clamp(-0.5, 0.5)
                lsig = lsig + os_ / conf.scales_per_octave
        cand.append(torch.stack([bi.to(dtype), xo, yo, 2.0 ** lsig, score], 1)[keep])
    return torch.cat(cand) if cand else torch.zeros((0, 5), dtype=dtype)
