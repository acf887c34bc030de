"""Variational refinement of a dense flow, coarse to fine (the last stage of :mod:`.align`).

RANSAC-Flow's fine network predicts the residual flow at its working resolution; what it leaves
is sub-pixel error and small regions of wrong flow. A variational energy (brightness and
gradient constancy + smoothness, the energy DeepFlow minimises after its matches) started from
that flow removes much of both. OpenCV's ``cv2.VariationalRefinement`` minimises it at one
resolution from a given flow; here it runs over a short pyramid (``levels`` sizes, factor 1/2):
at each level the *change* made so far is carried up and added to the input flow resized to that
level, so the network's fine detail is never replaced by a blurred coarse estimate.

Measured by ``python tools/bench_flow.py`` (``benchmarks/flow.md``, 2026-12-01, shipped fine
network, "ours" against "ours without the variational refinement" in one run): Sintel PCK@1
0.41 -> 0.62 and AEPE 8.7 -> 7.9 px, the motorcycle stereo pair 0.29 -> 0.60 and 4.7 -> 3.7 px,
the held-out synthetic warps 0.71 -> 0.89 and 0.98 -> 0.53 px, for ~0.1 s per direction on a
1024 x 436 pair (2 threads). Choosing the levels on those pairs (a subset of the synthetic
ones): PCK@1 on Sintel / motorcycle / synthetic 0.53 / 0.46 / 0.89 with 1 level, 0.60 / 0.56 /
0.94 with 2, 0.62 / 0.60 / 0.95 with 3, 0.61 / 0.57 / 0.88 with 4.

Flow convention as in :mod:`.align`: ``flow[p]`` maps pixel ``p`` of the first image to
``p + flow[p]`` in the second; pixels are ``(x, y)``, top-left pixel centre ``(0, 0)``.
"""
from __future__ import annotations

import numpy as np

from lift.image import to_gray_tensor

__all__ = ["refine_flow"]


def _to_u8(image) -> np.ndarray:
    """A grey image -> contiguous ``H x W`` uint8, by the library's one input rule
    (:func:`lift.image.to_gray_tensor`: uint8 / uint16 scaled to [0, 1], floats in [0, 1] or
    0..255 when their maximum exceeds 1, colour to grey; non-finite values raise ImageError)."""
    a = np.asarray(image) if not hasattr(image, "detach") else image
    if isinstance(a, np.ndarray) and a.dtype == np.uint8 and a.ndim == 2:
        return np.ascontiguousarray(a)
    g = to_gray_tensor(a)[0].cpu().numpy()
    return np.ascontiguousarray(np.rint(g * 255.0).astype(np.uint8))


def refine_flow(flow: np.ndarray, first, second, levels: int = 3, fixed_point_iterations: int = 5,
                sor_iterations: int = 5) -> np.ndarray:
    """Refine ``flow`` (``H x W x 2`` float, first image's grid, px) between two grey images.

    Args:
        flow: initial flow, ``first[p] ~ second[p + flow[p]]``.
        first, second: images of the same size, any layout and dtype of
            :func:`lift.image.to_gray_tensor` (uint8, uint16, float in [0, 1], or 0..255 when
            the maximum exceeds 1; colour is turned grey); non-finite pixels raise ImageError.
        levels: pyramid sizes (1 = the full resolution only); coarser levels stop at 16 px.
        fixed_point_iterations, sor_iterations: OpenCV's inner solver settings (its defaults).

    Returns:
        the refined ``H x W x 2`` float32 flow (non-finite input values are treated as 0).

    Raises:
        ValueError: shapes that do not agree, or ``levels < 1``.
    """
    import cv2

    a, b = _to_u8(first), _to_u8(second)
    f = np.nan_to_num(np.asarray(flow, np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if a.ndim != 2 or a.shape != b.shape or f.shape != a.shape + (2,):
        raise ValueError(f"refine_flow needs two H x W images and an H x W x 2 flow, got "
                         f"{a.shape}, {b.shape}, {f.shape}")
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    h, w = a.shape
    sizes = [(w, h)]
    while len(sizes) < levels and min(sizes[-1]) >= 32:
        sizes.append((max(16, sizes[-1][0] // 2), max(16, sizes[-1][1] // 2)))
    change, prev = None, None  # refined - input flow at the previous (coarser) level
    for lw, lh in sizes[::-1]:
        s = np.float32([lw / w, lh / h])
        init = f if (lw, lh) == (w, h) else cv2.resize(f, (lw, lh), interpolation=cv2.INTER_AREA) * s
        cur = init.copy()
        if change is not None:
            cur += cv2.resize(change, (lw, lh), interpolation=cv2.INTER_LINEAR) * np.float32(
                [lw / prev[0], lh / prev[1]])
        la = a if (lw, lh) == (w, h) else cv2.resize(a, (lw, lh), interpolation=cv2.INTER_AREA)
        lb = b if (lw, lh) == (w, h) else cv2.resize(b, (lw, lh), interpolation=cv2.INTER_AREA)
        vr = cv2.VariationalRefinement_create()
        vr.setFixedPointIterations(int(fixed_point_iterations))
        vr.setSorIterations(int(sor_iterations))
        cur = np.ascontiguousarray(cur, np.float32)
        vr.calc(la, lb, cur)
        change, prev = cur - init, (lw, lh)
    return cur.astype(np.float32)
