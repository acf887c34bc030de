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

from .layers import MaxPool, centre_patches, output_shape

__all__ = ["inference_net", "fold_batch_norm", "FastReLU", "FlatLinear", "standardized_window"]

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
    ``forward_standardized`` takes ``N x 1 x crop x crop`` (or larger) standardised patches."""
    out = copy.deepcopy(net).eval()
    size = int(net.input_size)
    out.crop = _receptive_crop(out.features, size)
    out.features = _rewrite(out.features, size).to(dtype=dtype, memory_format=torch.channels_last)
    for p in out.parameters():
        p.requires_grad_(False)
        if p.is_floating_point():
            p.masked_fill_(p.abs() < NEGLIGIBLE_WEIGHT, 0.0)
    return out
