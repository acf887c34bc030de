"""Inference copies of the patch networks: the same function, fewer and cheaper operations.

:func:`inference_net` turns a trained :class:`~lift.orientation.Orientation` or
:class:`~lift.descriptor.Descriptor` into a frozen copy for the runtime. Every rewrite keeps the
network's output (up to float rounding):

* batch norm folded into the convolution before it;
* a ``ReLU -> max pool`` pair swapped (max pooling commutes with a monotone activation; the
  ReLU then runs on the pooled map);
* ReLU on bfloat16 tensors as a clamp of their int16 bit patterns (sign bit set = negative;
  ~3x faster than a bfloat16 ``relu_`` on CPU);
* a final ``[average pool ->] convolution`` whose output is 1 x 1 as one fully connected layer on
  the flattened map (one matrix product instead of a pool and a small convolution: ~3x faster);
* ``crop``: the smallest top-left input window that gives the same output. Floor-mode pooling
  can leave the last rows and columns of a patch unread (the first shipped orientation network,
  kernels 6, 5, 3, read 28 x 28 of its 32 x 32 input; the current one reads all of it); the
  runtime standardises the whole patch, then feeds the network only that window;
* a first convolution with stride 2 and an even kernel (``k x k`` on 1 channel) as a
  ``k/2 x k/2`` convolution with stride 1 on the space-to-depth input (``F.pixel_unshuffle(x, 2)``:
  4 channels, the 2 x 2 phases of each pixel block): the same sums, and oneDNN runs the
  4-channel form ~2x faster (2048 patches: 3.8 -> 1.9 ms in bfloat16). The runtime samples the
  patches directly in that order (``space_to_depth=2`` of
  :func:`lift.glue.extract_patches_pyramid`), so the rearrangement costs nothing;
* the orientation network's first fully connected layer with its output units permuted so that
  its GHH activation reads contiguous blocks (:class:`BlockGHH`, the same values; 2048 x 1600
  units: 1.1 ms against 2.1-5.0 ms for the strided groups of :func:`lift.layers.ghh`);
* channels-last memory layout, and the conv stages in ``dtype`` (the fully connected layers of
  the orientation network stay float32);
* weights below 1e-20 in magnitude set to zero. Weight decay drives the weights of unused
  units towards zero; once they are subnormal (< 2^-126), or make a layer's outputs subnormal,
  x86 CPUs compute 10-100x slower. The shipped orientation network has 469 subnormal weights in
  its first fully connected layer, which then took 37 ms instead of 3 ms for 2048 patches.
  The change of any output is below 1e-20 times the L1 norm of the layer's input.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import GHH, MaxPool, centre_patches, ghh_piece_major, output_shape, piece_major_order

__all__ = ["inference_net", "fold_batch_norm", "FastReLU", "FlatLinear", "SpaceToDepthConv",
           "BlockGHH", "standardized_window"]

#: weights of smaller magnitude are zero in the inference copies (see the module docstring)
NEGLIGIBLE_WEIGHT = 1e-20


class FastReLU(nn.Module):
    """In-place ReLU; on bfloat16 CPU tensors a clamp of the int16 view (same values for every
    non-NaN input)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.bfloat16 and x.device.type == "cpu":
            x.view(torch.int16).clamp_min_(0)
            return x
        return x.relu_()


class FlatLinear(nn.Module):
    """A convolution with 1 x 1 output (optionally after a ``p x p`` average pool) as a linear
    layer on the flattened ``N x C x H x W`` map. Channels-last input flattens without a copy
    (weights in (h, w, c) order). Output ``N x out x 1 x 1``."""

    def __init__(self, conv: nn.Conv2d, pool: int = 1):
        super().__init__()
        w = conv.weight.detach()
        if pool > 1:  # avg pool then conv == conv with the kernel spread over the pool cells
            w = w.repeat_interleave(pool, 2).repeat_interleave(pool, 3) / (pool * pool)
        self.size = w.shape[-1]
        self.weight = nn.Parameter(w.permute(0, 2, 3, 1).reshape(w.shape[0], -1).contiguous(),
                                   requires_grad=False)
        b = conv.bias.detach() if conv.bias is not None else torch.zeros(w.shape[0])
        self.bias = nn.Parameter(b.clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.size
        x = x[..., :k, :k].permute(0, 2, 3, 1).reshape(x.shape[0], -1)
        return F.linear(x, self.weight, self.bias)[:, :, None, None]


class SpaceToDepthConv(nn.Module):
    """A ``k x k`` convolution with stride ``r`` on 1-channel input (``k`` a multiple of ``r``)
    computed on the space-to-depth input: weights ``(C, r^2, k/r, k/r)`` with
    ``w2[o, r qy + qx, a, b] = w[o, 0, r a + qy, r b + qx]``, stride 1.

    ``forward`` takes ``N x r^2 x H/r x W/r`` (``F.pixel_unshuffle(x, r)``, best channels-last)
    or the plain ``N x 1 x H x W`` input (unshuffled here) and returns what the original
    convolution returns on ``x``."""

    def __init__(self, conv: nn.Conv2d, r: int = 2):
        super().__init__()
        w = conv.weight.detach()
        c, _, k, _ = w.shape
        q = k // r
        w2 = w.reshape(c, 1, q, r, q, r).permute(0, 1, 3, 5, 2, 4).reshape(c, r * r, q, q)
        self.r = int(r)
        self.weight = nn.Parameter(w2.contiguous(), requires_grad=False)
        b = conv.bias.detach() if conv.bias is not None else torch.zeros(c)
        self.bias = nn.Parameter(b.clone(), requires_grad=False)

    @staticmethod
    def applies(conv: nn.Module, r: int = 2) -> bool:
        return (isinstance(conv, nn.Conv2d) and conv.in_channels == 1 and conv.stride == (r, r)
                and conv.kernel_size[0] == conv.kernel_size[1] and conv.kernel_size[0] % r == 0
                and conv.padding == (0, 0) and conv.dilation == (1, 1) and conv.groups == 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = F.pixel_unshuffle(x, self.r).contiguous(memory_format=torch.channels_last)
        return F.conv2d(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"space_to_depth={self.r}, weight={tuple(self.weight.shape)}"


class BlockGHH(nn.Module):
    """:func:`lift.layers.ghh` (last dimension) for a linear layer whose output units were
    permuted by :meth:`permutation` (:func:`lift.layers.piece_major_order`), computed by
    :func:`lift.layers.ghh_piece_major` on contiguous slices."""

    def __init__(self, num_sum: int, num_max: int):
        super().__init__()
        self.num_sum, self.num_max = int(num_sum), int(num_max)

    def permutation(self, units: int) -> torch.Tensor:
        """``perm`` with ``new_layer.weight = old.weight[perm]`` for ``units`` outputs."""
        return piece_major_order(units, self.num_sum, self.num_max)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ghh_piece_major(x, self.num_sum, self.num_max)


def standardized_window(patches: torch.Tensor, crop: int, dtype: torch.dtype) -> torch.Tensor:
    """``normalize_patches(patches)[..., :crop, :crop].to(dtype)`` with fewer passes over memory.

    ``B x C x S x S`` float patches -> ``B x C x crop x crop`` in ``dtype``: each patch minus its
    mean, divided by its standard deviation (+ 1e-6), statistics over the whole ``S x S`` patch
    (:func:`lift.layers.centre_patches`: two-pass, exact also for faint texture on a bright
    patch); the last multiply writes only the window, straight in ``dtype`` (computed in
    float32), instead of a standardised float32 copy of the whole patch and then a cast.
    """
    centred, sd = centre_patches(patches)
    inv = 1.0 / sd.add_(1e-6)
    out = torch.empty(patches.shape[:-2] + (crop, crop), dtype=dtype, device=patches.device)
    return torch.mul(centred[..., :crop, :crop], inv[..., None, None], out=out)


def fold_batch_norm(seq: nn.Sequential) -> nn.Sequential:
    """Fold every eval-mode BatchNorm2d into the Conv2d right before it."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    layers, out, i = list(seq), [], 0
    while i < len(layers):
        if (isinstance(layers[i], nn.Conv2d) and i + 1 < len(layers)
                and isinstance(layers[i + 1], nn.BatchNorm2d)):
            out.append(fuse_conv_bn_eval(layers[i], layers[i + 1]))
            i += 2
        else:
            out.append(layers[i])
            i += 1
    return nn.Sequential(*out)


def _rewrite(seq: nn.Sequential, size: int) -> nn.Sequential:
    layers = list(fold_batch_norm(seq))
    for i in range(len(layers) - 1):  # ReLU -> max pool  ==  max pool -> ReLU
        if isinstance(layers[i], nn.ReLU) and isinstance(layers[i + 1], (MaxPool, nn.MaxPool2d)):
            layers[i], layers[i + 1] = layers[i + 1], layers[i]
    layers = [FastReLU() if isinstance(m, nn.ReLU) else m for m in layers]
    # a last [avg pool ->] conv with 1 x 1 output -> one linear layer
    last = layers[-1]
    if isinstance(last, nn.Conv2d) and last.stride == (1, 1) and last.padding == (0, 0) \
            and last.dilation == (1, 1) and last.groups == 1:
        head = nn.Sequential(*layers[:-1])
        pool = layers[-2] if len(layers) > 1 else None
        if isinstance(pool, nn.AvgPool2d) and pool.kernel_size == pool.stride \
                and isinstance(pool.kernel_size, int) and pool.padding == 0 and not pool.ceil_mode:
            head, p = nn.Sequential(*layers[:-2]), pool.kernel_size
        else:
            p = 1
        in_shape = output_shape(head, size) if len(head) else torch.Size((1, 1, size, size))
        if tuple(output_shape(nn.Sequential(*layers), size)[-2:]) == (1, 1) \
                and min(in_shape[-2:]) >= last.kernel_size[0] * p:
            layers = list(head) + [FlatLinear(last, p)]
    return nn.Sequential(*layers)


def _receptive_crop(seq: nn.Sequential, size: int) -> int:
    """Smallest ``c`` such that the top-left ``c x c`` input window gives the same output shape
    (hence, for unpadded convolutions and floor pooling, the same output values)."""
    full = output_shape(seq, size)
    c = size
    while c > 1:
        try:
            if output_shape(seq, c - 1) != full:
                break
        except RuntimeError:  # too small for a kernel
            break
        c -= 1
    return c


def inference_net(net: nn.Module, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A frozen inference copy of an orientation or descriptor network (see the module
    docstring). The copy has a ``crop`` attribute: the input window it reads, and
    ``forward_standardized`` takes ``N x 1 x crop x crop`` (or larger) standardised patches;
    and a ``space_to_depth`` attribute ``r`` (1 or 2): with 2 it also takes them as
    ``N x 4 x crop/2 x crop/2`` (``F.pixel_unshuffle(patches, 2)``, channels-last), the form the
    runtime samples."""
    out = copy.deepcopy(net).eval()
    size = int(net.input_size)
    out.crop = _receptive_crop(out.features, size)
    layers = list(_rewrite(out.features, size))
    # space-to-depth first convolution, when the network reads the whole (even) patch
    out.space_to_depth = 1
    if out.crop == size and size % 2 == 0 and SpaceToDepthConv.applies(layers[0]):
        layers[0], out.space_to_depth = SpaceToDepthConv(layers[0]), 2
    out.features = nn.Sequential(*layers).to(dtype=dtype, memory_format=torch.channels_last)
    for fc, act in (("fc1", "act1"), ("fc2", "act2")):  # GHH on contiguous blocks
        lin = getattr(out, fc, None)
        if isinstance(lin, nn.Linear) and isinstance(getattr(out, act, None), GHH):
            block = BlockGHH(getattr(out, act).num_sum, getattr(out, act).num_max)
            perm = block.permutation(lin.out_features)
            with torch.no_grad():
                lin.weight.copy_(lin.weight[perm])
                lin.bias.copy_(lin.bias[perm])
            setattr(out, act, block)
    for p in out.parameters():
        p.requires_grad_(False)
        if p.is_floating_point():
            p.masked_fill_(p.abs() < NEGLIGIBLE_WEIGHT, 0.0)
    return out
