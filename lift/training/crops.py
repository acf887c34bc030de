"""Cutting network inputs out of the stored training patches, exactly as inference cuts them.

A stored patch (``lift.data``, LIFT's large patch) is ``S x S`` (S = 128) and covers
``+-support_sigma * sigma`` (12 sigma) around its keypoint, upright in its source image. In
patch pixels the keypoint sits at ``((S - 1) / 2, (S - 1) / 2)`` = (63.5, 63.5) and sigma is
``S / (2 * support_sigma)`` = 128 / 24 px.

* Orientation / descriptor inputs are cut with :func:`lift.glue.patch_affine` (the inference
  spatial transformer) from a :func:`lift.glue.build_pyramid` of the stored patch, on the pyramid
  level chosen by the inference rule of :func:`lift.glue.extract_patches_pyramid` (level
  ``floor(log2(step))``, ``step = 2 * 6 sigma / size`` patch pixels per input pixel). Unlike
  ``extract_patches_pyramid`` every patch is its own image here, so one batched
  ``grid_sample`` call per level cuts the whole batch; the geometry is the same.
* The detector sees the stored patch resized by ``px_per_sigma / sigma`` with
  ``F.interpolate(bilinear, antialias)``, as the runtime resizes whole images for the scale
  sigma (:meth:`lift.LIFT._detect`): 128 -> 23 px for the shipped model.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F

from ..features import DESCRIPTOR_SUPPORT
from ..glue import blur_downsample, build_pyramid, patch_affine, pyramid_depth, pyramid_level

__all__ = ["PatchGeometry", "crop_patches", "detector_input", "score_offsets", "half_image"]


def half_image(image: torch.Tensor) -> torch.Tensor:
    """The runtime's pyramid step, :func:`lift.glue.blur_downsample` (kept under this name for
    the training code)."""
    return blur_downsample(image)


class PatchGeometry:
    """Geometry of the stored patches of one data set.

    Args:
        patch_size: stored side S (pixels). support_sigma: stored half-width in sigma.
    """

    def __init__(self, patch_size: int = 128, support_sigma: float = 12.0):
        self.size = int(patch_size)
        self.support_sigma = float(support_sigma)
        #: sigma of the keypoint in stored-patch pixels
        self.sigma = self.size / (2.0 * self.support_sigma)
        #: keypoint position (x = y) in stored-patch pixels
        self.centre = (self.size - 1) / 2.0

    def pyramid(self, patches: torch.Tensor, min_size: int = 32,
                max_scale: float = 1.25) -> List[torch.Tensor]:
        """Gaussian pyramid (as :func:`lift.glue.build_pyramid`) of a ``B x 1 x S x S`` batch,
        deep enough for crops of at least ``min_size`` pixels at up to ``max_scale`` times the
        stored sigma (see :func:`crop_patches`)."""
        step = 2.0 * DESCRIPTOR_SUPPORT * self.sigma * max_scale / min_size
        return build_pyramid(patches, pyramid_depth(step))


def crop_patches(pyramid: List[torch.Tensor], geom: PatchGeometry, out_size: int,
                 offsets: Optional[torch.Tensor] = None, oris: Optional[torch.Tensor] = None,
                 scales: Optional[torch.Tensor] = None,
                 support: float = DESCRIPTOR_SUPPORT) -> torch.Tensor:
    """Cut one ``out_size`` input per stored patch (differentiable in offsets/oris/scales).

    Args:
        pyramid: :meth:`PatchGeometry.pyramid` of the ``B x 1 x S x S`` stored patches.
        geom: their geometry.
        out_size: side of the network input (e.g. 32).
        offsets: ``B x 2`` keypoint shift (x, y) from the patch centre, stored-patch pixels.
        oris: ``B`` radians, clockwise on screen (None: upright).
        scales: ``B`` multipliers of sigma (None: 1).
        support: half-width of the cut window in units of sigma (6, as at inference).

    Returns:
        ``B x 1 x out_size x out_size``.
    """
    base = pyramid[0]
    b = base.shape[0]
    dev, dt = base.device, base.dtype
    kp = torch.full((b, 2), geom.centre, device=dev, dtype=dt)
    if offsets is not None:
        kp = kp + offsets
    sig = torch.full((b,), geom.sigma, device=dev, dtype=dt)
    if scales is not None:
        sig = sig * scales
    level = pyramid_level(2.0 * support * sig.detach() / out_size, len(pyramid))
    crops, order = [], []
    for lev in torch.unique(level).tolist():
        sel = torch.nonzero(level == lev).squeeze(1)
        f = 2.0 ** lev
        img = pyramid[lev][sel]
        h, w = img.shape[-2:]
        theta = patch_affine((kp[sel] + 0.5) / f - 0.5, sig[sel] / f,
                             None if oris is None else oris[sel], (w, h), support)
        grid = F.affine_grid(theta, (len(sel), 1, out_size, out_size), align_corners=False)
        crop = F.grid_sample(img, grid, mode="bilinear", padding_mode="border",
                             align_corners=False)
        crops.append(crop)
        order.append(sel)
    inverse = torch.argsort(torch.cat(order))
    return torch.cat(crops)[inverse]


def detector_input(patches: torch.Tensor, geom: PatchGeometry, px_per_sigma: float) -> torch.Tensor:
    """Resize ``B x 1 x S x S`` stored patches to the detector's pixel scale
    (``px_per_sigma`` pixels per sigma), as the runtime resizes images."""
    f = px_per_sigma / geom.sigma
    side = int(round(geom.size * f))
    return F.interpolate(patches, size=(side, side), mode="bilinear", align_corners=False,
                         antialias=f < 1)


def score_offsets(map_side: int, input_side: int, border: int, geom: PatchGeometry,
                  crop: int) -> Tuple[slice, float, float]:
    """Where the central ``(2 crop + 1)^2`` cells of a valid detector map lie in the stored patch.

    Args:
        map_side: side of the valid score map. input_side: side of the detector input.
        border: pixels lost per side by the valid convolution. crop: half-width kept (cells).

    Returns:
        ``(sl, origin, cell)``: the slice of the map to keep (both axes), and the stored-patch
        coordinate of cell 0 of the kept window and the size of one cell, so that kept cell
        ``k`` lies at ``origin + k * cell`` stored-patch pixels (x or y).
    """
    c = map_side // 2
    if map_side % 2 != 1 or crop > c:
        raise ValueError(f"score map of side {map_side} cannot keep +-{crop} cells around its centre")
    cell = geom.size / input_side
    first = c - crop
    origin = (first + border + 0.5) * cell - 0.5
    return slice(first, c + crop + 1), origin, cell
