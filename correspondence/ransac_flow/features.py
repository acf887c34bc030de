"""Dense features for the coarse stage: the project's LIFT descriptor network applied on a grid.

The paper uses an ImageNet/MoCo ResNet-50 truncated after layer3 (1024-D, stride 16). We ship
no ResNet weights (and torchvision is not a dependency); instead the trained LIFT descriptor
(``lift/weights/lift_default.pt``, 128-D, L2-normalised) describes every upright 32 x 32 patch
on a regular grid of the image: patch ``(i, j)`` covers pixels ``[s j, s j + 32) x [s i, s i + 32)``
and its centre is ``(s j + 15.5, s i + 15.5)`` for the grid step ``s``. Each patch is standardised
by the network itself (per-patch mean / std), as at training time, so the descriptors are exactly
those LIFT computes for a keypoint of scale ``sigma = 32 / 12 = 2.67`` px with orientation 0.

The multi-scale source of the paper is obtained by resizing the image before describing it
(:func:`describe_scales`).
"""
from __future__ import annotations

import copy
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from lift.inference import fold_batch_norm
from lift.model import LIFTModel

__all__ = ["DenseDescriptor", "resize_image", "describe_scales"]


def resize_image(image: torch.Tensor, scale: float) -> Tuple[torch.Tensor, Tuple[float, float]]:
    """Resize ``C x H x W`` by ``scale`` (anti-aliased bilinear). Returns the image and the
    per-axis factors ``(fx, fy)`` such that an original pixel ``x`` sits at
    ``(x + 0.5) * fx - 0.5`` in the resized image (exact sizes are rounded)."""
    h, w = image.shape[-2:]
    nh, nw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
    if (nh, nw) == (h, w):
        return image, (1.0, 1.0)
    out = F.interpolate(image[None], size=(nh, nw), mode="bilinear", align_corners=False,
                        antialias=scale < 1)[0]
    return out, (nw / w, nh / h)


def _box_mean(x: torch.Tensor, k: int) -> torch.Tensor:
    """Mean over the ``k x k`` window centred (for even ``k``: half a pixel up-left) at each
    pixel of ``B x C x H x W``, windows clipped at the border; separable, ~20x faster than a
    2-D ``avg_pool2d`` for large ``k``."""
    h, w = x.shape[-2:]
    x = F.avg_pool2d(x, (k, 1), 1, (k // 2, 0), count_include_pad=False)[..., :h, :]
    return F.avg_pool2d(x, (1, k), 1, (0, k // 2), count_include_pad=False)[..., :w]


class DenseDescriptor(torch.nn.Module):
    """LIFT descriptors on a grid.

    Args:
        model: a :class:`lift.LIFTModel` or the name/path of LIFT weights (default: shipped).
        stride: grid step ``s`` in pixels.
        device: where to run.

    Shapes:
        ``forward(image)`` with ``image``: ``1 x H x W`` grey in [0, 1] (``H, W >= 32``) ->
        ``(desc, xy)``: ``N x D`` L2-normalised descriptors and ``N x 2`` patch centres (x, y)
        in pixels of ``image``, ``N = h' w'`` with ``h' = (H - 32) // s + 1``.
    """

    def __init__(self, model: Union[LIFTModel, str] = "default", stride: int = 8, device=None):
        super().__init__()
        if stride % 4 or stride < 4:
            raise ValueError(f"the grid step must be a multiple of 4 (the network's stride), got {stride}")
        lift_model = model if isinstance(model, LIFTModel) else LIFTModel.load(model)
        # the descriptor with batch norm folded, applied densely (fully convolutional: not the
        # per-patch runtime copy of lift.inference, whose last layer is a flat linear layer)
        self.net = copy.deepcopy(lift_model.descriptor).eval().float()
        self.net.features = fold_batch_norm(self.net.features).to(memory_format=torch.channels_last)
        self.size = int(self.net.input_size)
        self.stride = int(stride)
        self.dim = int(self.net.dim)
        if device is not None:
            self.net.to(device)

    @torch.inference_mode()
    def grid(self, image: torch.Tensor, stride: Optional[int] = None):
        """Descriptor map of ``image`` (``1 x H x W``): ``(D x h' x w' map, s)``; cell
        ``(i, j)`` is the patch centred at ``(s j + 15.5, s i + 15.5)``. ``stride``: grid step
        ``s`` (a multiple of 4; default: the describer's)."""
        if image.ndim != 3 or image.shape[0] != 1:
            raise ValueError(f"DenseDescriptor expects a 1 x H x W image, got {tuple(image.shape)}")
        s = self.stride if stride is None else int(stride)
        if s % 4 or s < 4:
            raise ValueError(f"the grid step must be a multiple of 4 (the network's stride), got {s}")
        h, w = image.shape[-2:]
        k = self.size
        dev = next(self.net.parameters()).device
        if h < k or w < k:
            return image.new_zeros((self.dim, 0, 0), device=dev), s
        x = image[None].to(dev)
        # local standardisation over the k x k support (the network standardises each patch)
        stats = _box_mean(torch.cat([x, x * x], 1), k)
        mean, var = stats[:, :1], stats[:, 1:] - stats[:, :1] ** 2
        x = (x - mean) / (var.clamp_min(0).sqrt() + 1e-2)
        # all layers but the last at the network's own stride 4, the last (a plain linear
        # convolution) directly on the coarser grid: cell i <-> patch [s i, s i + k)
        trunk, last = self.net.features[:-1], self.net.features[-1]
        fmap = F.conv2d(trunk(x), last.weight, last.bias, stride=s // 4)
        return F.normalize(fmap, dim=1)[0], s

    def forward(self, image: torch.Tensor, stride: Optional[int] = None):
        fmap, s = self.grid(image, stride)
        gh, gw = fmap.shape[-2:]
        ys, xs = torch.meshgrid(torch.arange(gh, device=fmap.device),
                                torch.arange(gw, device=fmap.device), indexing="ij")
        xy = torch.stack([xs.reshape(-1), ys.reshape(-1)], 1).float() * s + (self.size - 1) / 2.0
        return fmap.reshape(self.dim, -1).T.contiguous(), xy


def describe_scales(describer: DenseDescriptor, image: torch.Tensor,
                    scales: Sequence[float], base: float = 1.0):
    """Describe ``image`` (``1 x H x W``) resized by ``base * scale`` for each scale and pool
    the features: ``(N x D descriptors, N x 2 positions in pixels of image)``."""
    descs, pts = [], []
    for sc in scales:
        img, (fx, fy) = resize_image(image, base * sc)
        d, xy = describer(img)
        if len(d):
            descs.append(d)
            pts.append(torch.stack([(xy[:, 0] + 0.5) / fx - 0.5, (xy[:, 1] + 0.5) / fy - 0.5], 1))
    if not descs:
        return image.new_zeros((0, describer.dim)), image.new_zeros((0, 2))
    return torch.cat(descs), torch.cat(pts)
