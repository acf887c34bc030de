"""Sub-pixel keypoint positions from the detector's continuous response.

The quadratic fit of :func:`lift.nms.scale_space_nms` models the score around a peak as a
paraboloid. The detector's score is a GHH (max / signed sum) of linear filter responses, so it
has kinks wherever the winning piece changes, and the paraboloid's vertex (or any arg-max) is
biased toward the grid. Here the score is evaluated where it is defined, between the pixels: the
``C`` linear filter responses of the level pixels around the peak are interpolated bicubically
(the responses of a linear filter to the bicubically interpolated image) on a grid of step
``step`` level pixels within +-``radius``, the GHH is applied there, and the keypoint is the
**soft-argmax** of that score (``softmax(beta * score)``-weighted mean position), with the
``beta`` the detector is trained with (LIFT's 10, :func:`lift.glue.soft_argmax` in
:mod:`lift.training`): the runtime reads the position the way the training loss places it.

Measured with the shipped weights by ``tools/bench_localisation.py`` (``BENCHMARKS.md``), median
distance of a keypoint to its re-detection after a known warp of held-out photos, for a (0.5,
0.25) px shift / a 2^0.5 zoom / 10 and 30 degree rotations: quadratic fit 0.18 / 0.28 / 0.21 /
0.23 px; the arg-max of this response (the previous version: grid search + quadratic vertex at
step 1/8) 0.13 / 0.20 / 0.19 / 0.20; this soft-argmax 0.09 / 0.15 / 0.16 / 0.17, with more
keypoints re-detected (OpenCV SIFT: 0.07 / 0.18 / 0.09 / 0.20). On those photos beta 5-7 gave
slightly lower medians and beta 15-30 higher ones; radius 1.5 had a shorter tail (90th
percentiles 0.29 / 0.48 against 0.33 / 0.55 px for shift / zoom, medians within 0.004 px) at
2.5x the cost (28 % of a quadratic-fit extraction against 10 %, 640 px photos, 2048
keypoints); step 1/8 instead of 1/4 changed the medians by under 0.005 px, step 1/2 aliased.

Cost: one small convolution per keypoint window (the detector's input map folded into its
weights), the bicubic interpolation in x and y as one matrix product with the Kronecker product
of the two weight matrices, and the GHH on contiguous slices: 8-10 ms for 2048 keypoints of a
640 x 480 photo (2 threads; 11.6-12.3 ms with separate x and y products, paired in-process),
about 8 % of an extraction.
"""
from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F

from .detector import Detector
from .layers import ghh_piece_major, piece_major_order

__all__ = ["refine_on_response", "cubic_weights", "REVISION"]

#: revision of the estimate, recorded with features extracted with ``subpixel="response"``
#: (``lift.sfm.extract.ExtractConf.signature``), so that features of an earlier estimate are not
#: mixed with or reused as new ones. 1: arg-max + quadratic vertex; 2: soft-argmax.
REVISION = 2

#: keypoints refined per batch of interpolated responses (bounds memory: ~20 kB each at the defaults)
_CHUNK = 4096


def cubic_weights(t: torch.Tensor, a: float = -0.75) -> torch.Tensor:
    """Keys' cubic convolution kernel at ``t`` (OpenCV's and PyTorch's bicubic, a = -0.75)."""
    t = t.abs()
    near = (a + 2) * t ** 3 - (a + 3) * t ** 2 + 1
    far = a * t ** 3 - 5 * a * t ** 2 + 8 * a * t - 4 * a
    return torch.where(t <= 1, near, torch.where(t < 2, far, torch.zeros_like(t)))


def refine_on_response(detector: Detector, level_images: Sequence[torch.Tensor], lev: torch.Tensor,
                       bidx: torch.Tensor, xi: torch.Tensor, yi: torch.Tensor, step: float = 0.25,
                       radius: float = 1.0, beta: float = 10.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Sub-pixel offsets of detector peaks, batched over all keypoints of all levels.

    Args:
        detector: the :class:`~lift.detector.Detector` that produced the scores.
        level_images: per level, the ``B x 1 x h x w`` resized image the detector ran on.
        lev, bidx, xi, yi: ``K`` long: level index, batch index and integer peak position
            (level pixels, pixel centres at integers) of each keypoint.
        step, radius: grid step and half-width of the window, in level pixels.
        beta: inverse temperature of the soft-argmax, in the detector's score units (the
            training value, 10, for the shipped weights).

    Returns:
        ``(ox, oy)``: ``K`` offsets in level pixels (within ``[-radius, radius]``), the
        soft-argmax of the continuous score being ``(xi + ox, yi + oy)``.
    """
    if not radius > 0 or not step > 0 or not beta > 0:
        raise ValueError("need radius > 0, step > 0 and beta > 0")
    k = len(lev)
    dtype, device = level_images[0].dtype, level_images[0].device
    if k == 0:
        return torch.zeros(0, dtype=dtype, device=device), torch.zeros(0, dtype=dtype, device=device)
    m = int(math.ceil(radius)) + 1  # conv responses needed on each side (bicubic support 2)
    half = detector.kernel_size // 2
    r = half + m
    # every level in one flat buffer, one gather for all windows; coordinates clamped into
    # the level (replicate padding: the peaks lie at least half a window inside)
    flat = torch.cat([im.reshape(-1) for im in level_images])
    sizes = torch.tensor([im.numel() for im in level_images], device=device)
    base = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    hl = torch.tensor([im.shape[-2] for im in level_images], device=device)[lev]
    wl = torch.tensor([im.shape[-1] for im in level_images], device=device)[lev]
    d = torch.arange(-r, r + 1, device=device)
    rows = torch.minimum((yi[:, None] + d).clamp_min(0), hl[:, None] - 1) + (bidx * hl)[:, None]
    cols = torch.minimum((xi[:, None] + d).clamp_min(0), wl[:, None] - 1)
    idx = base[lev][:, None, None] + rows[:, :, None] * wl[:, None, None] + cols[:, None, :]
    n_side = int(math.floor(radius / step + 1e-9))
    offs = torch.arange(-n_side, n_side + 1, dtype=dtype, device=device) * step  # n grid offsets
    n, taps = len(offs), 2 * m + 1
    w = cubic_weights(offs[:, None] - torch.arange(-m, m + 1, dtype=dtype, device=device))  # n x taps
    # bicubic interpolation in x and y as ONE matrix product: (row tap, column tap) -> (x, y)
    # grid point, kron[(ty, tx), (i, j)] = w[j, ty] w[i, tx] (score laid out x-major, i = x)
    kron = (w.t()[:, None, None, :] * w.t()[None, :, :, None]).reshape(taps * taps, n * n)
    # the detector's input map (x - 0.5) * 2 folded into its weights; output channels reordered
    # piece-major ((m, n) instead of (n, m)), so that the GHH maxima read contiguous blocks
    ns, nm = detector.num_sum, detector.num_max
    perm = piece_major_order(ns * nm, ns, nm).to(device)
    weight = 2.0 * detector.conv.weight[perm]
    bias = (detector.conv.bias - detector.conv.weight.sum((1, 2, 3)))[perm]
    ox, oy = [], []
    for s0 in range(0, k, _CHUNK):
        windows = flat[idx[s0:s0 + _CHUNK]][:, None]  # k' x 1 x (2r+1) x (2r+1)
        resp = F.conv2d(windows, weight, bias)  # k' x C x taps x taps
        kc, cc = resp.shape[:2]
        a = (resp.reshape(kc * cc, taps * taps) @ kron).view(kc, cc, n * n)
        score = ghh_piece_major(a, ns, nm, dim=1)[:, 0]  # k' x (n x-offsets * n y-offsets)
        z = beta * score
        p = torch.softmax(z - z.amax(1, keepdim=True), 1).view(kc, n, n)
        ox.append(p.sum(2) @ offs)
        oy.append(p.sum(1) @ offs)
    return torch.cat(ox), torch.cat(oy)
