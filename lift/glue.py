"""Differentiable glue between the three networks: soft-argmax and spatial-transformer crops.

Patch geometry convention (used by training and inference alike):
    A keypoint (x, y, sigma, theta) owns the square window of half-width ``support * sigma``
    (``support`` = 6 for orientation/descriptor patches, see :data:`lift.DESCRIPTOR_SUPPORT`),
    centred at (x, y), whose x axis points along ``(cos theta, sin theta)`` in the image (y down,
    so positive theta turns clockwise on screen). A patch of side S samples that window at the
    centres of an S x S grid: patch pixel (i, j) (row i, column j) shows the image point
    ``c + support * sigma * R(theta) @ (u_j, u_i)`` with ``u_k = (2k + 1) / S - 1`` and
    ``R(theta) = [[cos, -sin], [sin, cos]]``. Pixel centres are at integer image coordinates
    (top-left pixel centre = (0, 0)); ``grid_sample`` runs with ``align_corners=False``.

    The scale of the crop comes from sigma alone. (tf-lift's ``make_theta`` reads the scale
    exponent from the y coordinate instead of z; this implementation does not.)
"""
from __future__ import annotations

import math

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

__all__ = ["soft_argmax", "soft_max_score", "patch_affine", "patch_grid", "extract_patches",
           "extract_patches_pyramid", "pyramid_atlas", "build_pyramid", "blur_downsample", "pyramid_depth",
           "pyramid_level"]


def soft_argmax(scores: torch.Tensor, beta: float = 10.0) -> torch.Tensor:
    """Differentiable arg-max of score maps.

    ``x = sum_p softmax(beta * S)_p * x_p`` (and y), computed stably by subtracting the max.

    Args:
        scores: ``B x H x W`` (or ``B x 1 x H x W``) score maps.
        beta: inverse temperature (LIFT: 10). Larger is closer to the hard arg-max.

    Returns:
        ``B x 2`` expected (x, y) in pixel coordinates of the map (column, row; the centre of
        the top-left cell is (0, 0)).
    """
    if scores.ndim == 4:
        if scores.shape[1] != 1:
            raise ValueError("soft_argmax expects single-channel maps")
        scores = scores[:, 0]
    if scores.ndim != 3:
        raise ValueError(f"soft_argmax expects B x H x W maps, got {tuple(scores.shape)}")
    b, h, w = scores.shape
    flat = scores.reshape(b, -1) * beta
    prob = torch.softmax(flat - flat.amax(1, keepdim=True).detach(), dim=1).reshape(b, h, w)
    xs = torch.arange(w, dtype=scores.dtype, device=scores.device)
    ys = torch.arange(h, dtype=scores.dtype, device=scores.device)
    x = (prob.sum(1) * xs).sum(1)
    y = (prob.sum(2) * ys).sum(1)
    return torch.stack([x, y], 1)


def soft_max_score(scores: torch.Tensor, beta: float = 10.0) -> torch.Tensor:
    """LIFT's patch score: log-mean-exp soft maximum, ``(1/beta) log mean exp(beta (S - max)) + max``.

    Args:
        scores: ``B x H x W`` or ``B x 1 x H x W``. Returns ``B``.
    """
    flat = scores.reshape(scores.shape[0], -1)
    m = flat.amax(1, keepdim=True)
    return (torch.log(torch.exp(beta * (flat - m)).mean(1)) / beta + m[:, 0])


def patch_affine(keypoints: torch.Tensor, scales: torch.Tensor, oris: Optional[torch.Tensor],
                 image_size: Tuple[int, int], support: float) -> torch.Tensor:
    """Affine ``theta`` (``N x 2 x 3``) for ``F.affine_grid`` (``align_corners=False``) that maps
    normalised patch coordinates to normalised image coordinates.

    Args:
        keypoints: ``N x 2`` (x, y) pixels. scales: ``N`` sigma in pixels.
        oris: ``N`` radians (clockwise on screen) or None for upright patches.
        image_size: (W, H) of the image that will be sampled.
        support: window half-width in units of sigma.
    """
    w, h = image_size
    r = support * scales
    if oris is None:
        c, s = torch.ones_like(r), torch.zeros_like(r)
    else:
        c, s = torch.cos(oris), torch.sin(oris)
    sx, sy = 2.0 / w, 2.0 / h
    theta = torch.stack([
        torch.stack([sx * r * c, -sx * r * s, sx * (2 * keypoints[:, 0] + 1) / 2 - 1], 1),
        torch.stack([sy * r * s, sy * r * c, sy * (2 * keypoints[:, 1] + 1) / 2 - 1], 1),
    ], 1)
    return theta


def patch_grid(theta: torch.Tensor, size: int) -> torch.Tensor:
    """``F.affine_grid(theta, (N, 1, size, size), align_corners=False)`` computed by
    broadcasting (no N x S x S x 3 intermediate, ~3x faster on CPU). Returns N x S x S x 2."""
    u = (2 * torch.arange(size, dtype=theta.dtype, device=theta.device) + 1) / size - 1
    ux, uy = u.view(1, 1, size), u.view(1, size, 1)
    t = theta[:, :, :, None, None]  # N x 2 x 3 x 1 x 1
    gx = t[:, 0, 0] * ux + t[:, 0, 1] * uy + t[:, 0, 2]
    gy = t[:, 1, 0] * ux + t[:, 1, 1] * uy + t[:, 1, 2]
    return torch.stack([gx, gy], -1)


def extract_patches(image: torch.Tensor, keypoints: torch.Tensor, scales: torch.Tensor,
                    oris: Optional[torch.Tensor] = None, patch_size: int = 32,
                    support: float = 6.0, padding_mode: str = "border",
                    batch_index: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Crop-and-rotate patches with a spatial transformer (differentiable in everything).

    Args:
        image: ``B x C x H x W``.
        keypoints: ``N x 2`` (x, y) pixels; scales: ``N`` sigma; oris: ``N`` radians or None.
        patch_size: output side S. support: half-width of the window in units of sigma.
        batch_index: ``N`` int64 index of each keypoint's image in the batch (required when
            B > 1; with B == 1 every keypoint belongs to image 0).

    Returns:
        ``N x C x S x S`` patches. No anti-aliasing: use :func:`extract_patches_pyramid` when
        the window is much larger than S pixels.
    """
    b, ch, h, w = image.shape
    n = keypoints.shape[0]
    if n == 0:
        return image.new_zeros((0, ch, patch_size, patch_size))
    if batch_index is None:
        if b != 1:
            raise ValueError("extract_patches needs batch_index when the image batch has B > 1")
        batch_index = torch.zeros(n, dtype=torch.long, device=image.device)
    theta = patch_affine(keypoints.to(image.dtype), scales.to(image.dtype),
                         None if oris is None else oris.to(image.dtype), (w, h), support)
    grid = patch_grid(theta, patch_size)
    # all patches of one image in a single grid_sample call
    if b == 1:
        return _sample_patches(image, grid, padding_mode)
    out = image.new_empty((n, ch, patch_size, patch_size))
    for bi in torch.unique(batch_index).tolist():
        sel = torch.nonzero(batch_index == bi).squeeze(1)
        out[sel] = _sample_patches(image[bi:bi + 1], grid[sel], padding_mode)
    return out


def _sample_patches(image: torch.Tensor, grid: torch.Tensor, padding_mode: str) -> torch.Tensor:
    """Bilinear samples of one ``1 x C x H x W`` image at the sampling grids of N patches
    (``N x S*S x 2`` or ``N x S x S x 2``, normalised, ``align_corners=False``) ->
    ``N x C x S x S``, in one ``grid_sample`` call.

    PyTorch's CPU ``grid_sample`` parallelises over the batch dimension only, so on CPU the
    patches are split over ``torch.get_num_threads()`` batch entries of the *expanded* (not
    copied) image: the same values, 2x faster on 2 threads (one batch entry ran single-threaded).
    """
    n, ch = grid.shape[0], image.shape[1]
    s = grid.shape[1] if grid.ndim == 4 else math.isqrt(grid.shape[1])
    if n == 0:
        return image.new_zeros((0, ch, s, s))
    k = max(1, min(torch.get_num_threads(), n)) if image.device.type == "cpu" else 1
    m = -(-n // k)  # patches per batch entry; the last entry is padded with copies of patch 0
    g = grid.reshape(n, s, s, 2)
    if m * k != n:
        g = torch.cat([g, g[:1].expand(m * k - n, s, s, 2)])
    out = F.grid_sample(image.expand(k, -1, -1, -1), g.reshape(k, m * s, s, 2), mode="bilinear",
                        padding_mode=padding_mode, align_corners=False)
    return out.view(k, ch, m, s, s).transpose(1, 2).reshape(k * m, ch, s, s)[:n]


def blur_downsample(image: torch.Tensor) -> torch.Tensor:
    """Halve ``B x C x H x W`` with a [1, 4, 6, 4, 1]/16 Gaussian (OpenCV ``pyrDown`` filter,
    replicate border) and 2 x 2 box decimation, so that pixel centres follow
    ``x_half = (x + 0.5) / 2 - 0.5``. Written as shifted sums: single-channel convolutions are
    ~20x slower on CPU for large batches of patches."""
    x = F.pad(image, (2, 2, 2, 2), mode="replicate")
    x = (x[..., :-4] + x[..., 4:] + 4.0 * (x[..., 1:-3] + x[..., 3:-1]) + 6.0 * x[..., 2:-2]) / 16
    x = (x[..., :-4, :] + x[..., 4:, :] + 4.0 * (x[..., 1:-3, :] + x[..., 3:-1, :])
         + 6.0 * x[..., 2:-2, :]) / 16
    return F.avg_pool2d(x, 2, ceil_mode=True)


def pyramid_depth(max_step: float) -> int:
    """Number of pyramid levels needed to sample with steps up to ``max_step`` image pixels per
    patch pixel under the rule of :func:`pyramid_level`."""
    return max(1, int(math.floor(math.log2(max(max_step, 1.0)))) + 1)


def pyramid_level(step: torch.Tensor, num_levels: int) -> torch.Tensor:
    """Pyramid level to sample from for sampling steps ``step`` (image pixels per patch pixel):
    ``floor(log2 step)`` clamped to ``[0, num_levels - 1]``, so that the step on that level is in
    [1, 2) and bilinear sampling never skips more than one level pixel."""
    return torch.floor(torch.log2(step.clamp_min(1.0))).long().clamp(0, num_levels - 1)


def build_pyramid(image: torch.Tensor, num_levels: int) -> List[torch.Tensor]:
    """Gaussian pyramid ``[image, image / 2, image / 4, ...]`` (stops before a side < 8 px)."""
    pyr = [image]
    for _ in range(num_levels - 1):
        if min(pyr[-1].shape[-2:]) < 16:
            break
        pyr.append(blur_downsample(pyr[-1]))
    return pyr


def pyramid_atlas(pyramid: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, List[Tuple[int, int]]]:
    """Pack a pyramid into one image: level 0 at the top left, levels 1, 2, ... stacked below
    each other in a column to its right. Returns ``(atlas B x C x Ha x Wa, [(x0, y0) of each
    level])``; level ``l`` occupies ``atlas[..., y0:y0 + h_l, x0:x0 + w_l]``."""
    base = pyramid[0]
    h0, w0 = base.shape[-2:]
    if len(pyramid) == 1:
        return base, [(0, 0)]
    offsets, y = [(0, 0)], 0
    for lev in pyramid[1:]:
        offsets.append((w0, y))
        y += lev.shape[-2]
    wa = w0 + max(lev.shape[-1] for lev in pyramid[1:])
    atlas = base.new_zeros(base.shape[:-2] + (max(h0, y), wa))
    for (x0, y0), lev in zip(offsets, pyramid):
        atlas[..., y0:y0 + lev.shape[-2], x0:x0 + lev.shape[-1]] = lev
    return atlas, offsets


def extract_patches_pyramid(pyramid: Sequence[torch.Tensor], keypoints: torch.Tensor,
                            scales: torch.Tensor, oris: Optional[torch.Tensor] = None,
                            patch_size: int = 32, support: float = 6.0,
                            batch_index: Optional[torch.Tensor] = None,
                            atlas: Optional[Tuple[torch.Tensor, List[Tuple[int, int]]]] = None,
                            space_to_depth: int = 1) -> torch.Tensor:
    """Anti-aliased patch extraction: each patch is sampled from the pyramid level whose pixel
    step is closest below the patch's step (``2 support sigma / S`` image pixels per patch
    pixel, :func:`pyramid_level`), so that bilinear sampling never skips more than one level
    pixel. Samples outside a level take its nearest border pixel (``padding_mode="border"``).

    All levels are sampled by one ``grid_sample`` call per image: the levels are packed into an
    atlas (:func:`pyramid_atlas`) and every sample position is clamped to its own level's
    pixel-centre range before it is moved into the atlas, which is exactly border padding for
    bilinear sampling. The sampling grid of all patches is one matrix product. Differentiable
    in the image, keypoints, scales and orientations.

    Args:
        pyramid: from :func:`build_pyramid`, level l is the image at scale 2^-l.
        Other arguments and the output as :func:`extract_patches` (keypoints in level-0
        pixels).
        atlas: ``pyramid_atlas(pyramid)``, when the caller samples the same pyramid more than
            once (the runtime's orientation and descriptor patches); built here otherwise.
        space_to_depth: ``r`` (dividing ``patch_size``): return the patches as
            ``N x (C r^2) x S/r x S/r``, the values of ``F.pixel_unshuffle(patches, r)``, in
            channels-last memory (sampled in that order: no rearrangement pass), the input of
            :class:`lift.inference.SpaceToDepthConv`. 1: ``N x C x S x S`` [1].
    """
    r2d = int(space_to_depth)
    if r2d < 1 or patch_size % r2d:
        raise ValueError(f"space_to_depth must be >= 1 and divide patch_size {patch_size}, got {space_to_depth}")
    n = keypoints.shape[0]
    base = pyramid[0]
    bsz, ch = base.shape[:2]
    if n == 0:
        q = patch_size // r2d
        return base.new_zeros((0, ch * r2d * r2d, q, q)).contiguous(
            memory_format=torch.channels_last if r2d > 1 else torch.contiguous_format)
    if batch_index is None:
        if bsz != 1:
            raise ValueError("extract_patches_pyramid needs batch_index when the batch has B > 1")
        batch_index = torch.zeros(n, dtype=torch.long, device=base.device)
    dtype, dev = base.dtype, base.device
    atlas, offsets = pyramid_atlas(pyramid) if atlas is None else atlas
    ha, wa = atlas.shape[-2:]
    level = pyramid_level(2.0 * support * scales / patch_size, len(pyramid))
    f = torch.exp2(level.to(dtype))
    geo = torch.tensor([[w, h, x0, y0] for (x0, y0), (h, w) in
                        zip(offsets, [p.shape[-2:] for p in pyramid])], dtype=dtype, device=dev)[level]
    # affine map of patch coordinates (u, v, 1) to level pixels, N x 3 x 2
    r = support * scales.to(dtype) / f
    if oris is None:
        c, s = r, torch.zeros_like(r)
    else:
        c, s = r * torch.cos(oris.to(dtype)), r * torch.sin(oris.to(dtype))
    ctr = (keypoints.to(dtype) + 0.5) / f[:, None] - 0.5
    affine = torch.stack([torch.stack([c, s], 1), torch.stack([-s, c], 1), ctr], 1)
    # the same map to normalised atlas coordinates (align_corners=False)
    norm = torch.tensor([2.0 / wa, 2.0 / ha], dtype=dtype, device=dev)
    shift = (geo[:, 2:] + 0.5) * norm - 1  # level origin in atlas coordinates, N x 2
    affine_n = torch.cat([affine[:, :2] * norm, (affine[:, 2:] * norm + shift[:, None])], 1)
    u = (2 * torch.arange(patch_size, dtype=dtype, device=dev) + 1) / patch_size - 1
    uv1 = torch.stack([u.repeat(patch_size), u.repeat_interleave(patch_size),
                       torch.ones(patch_size * patch_size, dtype=dtype, device=dev)], 1)  # row-major pixels
    # grid[n, p, c] = sum_k uv1[p, k] affine_n[n, k, c] as ONE matrix product with interleaved
    # output: (N x 6) @ (6 x 2 S^2), the right factor holding uv1[p, k] at ((k, c), (p, c))
    # (a broadcast batched matmul with K = 3 is ~5x slower on CPU)
    order = uv1
    if r2d > 1:  # sample pixel (Y r + qy, X r + qx) at position ((Y, X), (qy, qx)): NHWC of the unshuffle
        q = patch_size // r2d
        yy, xx, qy, qx = torch.meshgrid(*(torch.arange(v, device=dev) for v in (q, q, r2d, r2d)), indexing="ij")
        order = uv1[((yy * r2d + qy) * patch_size + xx * r2d + qx).reshape(-1)]
    spread = torch.zeros(3, 2, patch_size * patch_size, 2, dtype=dtype, device=dev)
    spread[:, 0, :, 0] = order.t()
    spread[:, 1, :, 1] = order.t()
    grid = torch.mm(affine_n.reshape(n, 6), spread.reshape(6, -1)).view(n, patch_size * patch_size, 2)
    # border padding, per level: clamp the samples of the patches that leave their level to its
    # pixel-centre range (the sampled window is a parallelogram: its corner samples bound it)
    corner = uv1[[0, patch_size - 1, -patch_size, -1]]
    cpix = torch.matmul(corner, affine)  # N x 4 x 2 level pixels
    size = geo[:, :2]
    out_side = ((cpix < 0) | (cpix > size[:, None] - 1)).flatten(1).any(1)
    sel = torch.nonzero(out_side).squeeze(1)
    if len(sel):
        lo = shift[sel, None]
        hi = lo + (size[sel, None] - 1) * norm
        grid.index_put_((sel,), torch.minimum(torch.maximum(grid[sel], lo), hi))
    if bsz == 1:
        out = _sample_patches(atlas, grid, "border")
    else:
        out = base.new_empty((n, ch, patch_size, patch_size))
        for bi in torch.unique(batch_index).tolist():
            sel = torch.nonzero(batch_index == bi).squeeze(1)
            out[sel] = _sample_patches(atlas[bi:bi + 1], grid[sel], "border")
    if r2d == 1:
        return out
    q = patch_size // r2d  # N x C x (q q r r) -> N x (C r r) x q x q, channels-last when C == 1
    return out.view(n, ch, q, q, r2d * r2d).permute(0, 1, 4, 2, 3).reshape(n, ch * r2d * r2d, q, q)
