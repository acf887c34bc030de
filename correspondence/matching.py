"""Descriptor matching: mutual nearest neighbour and ratio test, chunked and batched.

Distances are Euclidean (L2) between descriptor rows; for L2-normalised descriptors this is
``sqrt(2 - 2 cos)``. Matches are returned as index pairs ``(i0, i1)`` into the two sets, the
layout of kornia's ``match_mnn`` and OpenCV's ``DMatch(queryIdx, trainIdx)``.
"""
from __future__ import annotations

from typing import List, Optional, Tuple, Union

import numpy as np
import torch

from .geometry import as_points

__all__ = ["match_descriptors", "match_descriptors_batch", "matches_from_batch", "nearest_neighbours"]

ArrayLike = Union[np.ndarray, torch.Tensor]

_METHODS = ("mnn", "nn", "ratio", "mnn_ratio")


def _to_tensor(x: ArrayLike, name: str, device=None) -> torch.Tensor:
    """Descriptors as a float tensor (float64 kept, others float32; bool/complex rejected)."""
    return as_points(x, name, device)


def nearest_neighbours(desc0: torch.Tensor, desc1: torch.Tensor, k: int = 2,
                       chunk_size: int = 4096) -> Tuple[torch.Tensor, torch.Tensor]:
    """k nearest neighbours of every row of ``desc0`` among the rows of ``desc1``.

    Args:
        desc0: ``N0 x D`` tensor. desc1: ``N1 x D`` tensor (same dtype/device).
        k: number of neighbours (clipped to N1).
        chunk_size: rows of ``desc0`` processed at once; memory is O(chunk_size * N1).

    Returns:
        ``(dist N0 x k, index N0 x k)``: L2 distances (ascending) and indices into ``desc1``.
    """
    k = min(k, desc1.shape[0])
    sq1 = (desc1 * desc1).sum(1)
    dists, idxs = [], []
    for start in range(0, desc0.shape[0], chunk_size):
        d0 = desc0[start:start + chunk_size]
        d2 = (d0 * d0).sum(1, keepdim=True) + sq1[None] - 2.0 * d0 @ desc1.T
        val, ind = torch.topk(d2, k, dim=1, largest=False)
        dists.append(val.clamp_min(0).sqrt())
        idxs.append(ind)
    if not dists:
        return desc0.new_zeros((0, k)), torch.zeros((0, k), dtype=torch.long, device=desc0.device)
    return torch.cat(dists), torch.cat(idxs)


def match_descriptors(desc0: ArrayLike, desc1: ArrayLike, method: str = "mnn",
                      ratio: Optional[float] = None, max_distance: Optional[float] = None,
                      chunk_size: int = 4096, device=None):
    """Match two descriptor sets.

    Args:
        desc0: ``N0 x D`` descriptors (numpy or torch). desc1: ``N1 x D``.
        method: ``"mnn"`` mutual nearest neighbours; ``"nn"`` nearest neighbour of each row of
            ``desc0``; ``"ratio"`` Lowe's ratio test (needs ``ratio``); ``"mnn_ratio"`` both.
            Passing ``ratio`` with ``"mnn"`` or ``"nn"`` also applies the ratio test.
        ratio: keep a match when d1 / d2 < ratio (first to second neighbour distance).
        max_distance: optional upper bound on the L2 distance of a match.
        chunk_size: rows processed at once (bounds memory to chunk_size x N1 distances).
        device: where to compute (default: the input's device, CPU for numpy).

    Returns:
        ``(matches, scores)``: ``K x 2`` int64 indices ``(i0, i1)`` and ``K`` float32 scores in
        [0, 1] (``1 - d^2 / 4``, the cosine similarity mapped to [0, 1] for unit descriptors;
        larger is better), sorted by ``i0``. numpy arrays for numpy input, tensors otherwise.

    Raises:
        ValueError: unknown method, dimension mismatch, non-finite descriptors, ratio missing.
    """
    as_numpy = isinstance(desc0, np.ndarray) and isinstance(desc1, np.ndarray)
    if method not in _METHODS:
        raise ValueError(f"unknown matching method {method!r}; choose one of {_METHODS}")
    if method in ("ratio", "mnn_ratio") and ratio is None:
        raise ValueError(f"method {method!r} needs a ratio (e.g. ratio=0.8)")
    if ratio is not None and not 0 < ratio <= 1:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    d0 = _to_tensor(desc0, "desc0", device)
    d1 = _to_tensor(desc1, "desc1", d0.device)
    if d0.ndim != 2 or d1.ndim != 2:
        raise ValueError(f"descriptors must be N x D matrices, got {tuple(d0.shape)} and {tuple(d1.shape)}")
    if d0.shape[1] != d1.shape[1]:
        raise ValueError(f"descriptor dimensions differ: {d0.shape[1]} vs {d1.shape[1]}")
    if d1.dtype != d0.dtype:
        d1 = d1.to(d0.dtype)
    empty = (torch.zeros((0, 2), dtype=torch.long), torch.zeros(0))
    if d0.shape[0] == 0 or d1.shape[0] == 0:
        return (empty[0].numpy(), empty[1].numpy()) if as_numpy else empty
    if not (torch.isfinite(d0).all() and torch.isfinite(d1).all()):
        raise ValueError("descriptors contain NaN or infinite values")

    need_second = ratio is not None
    dist, idx = nearest_neighbours(d0, d1, k=2 if need_second else 1, chunk_size=chunk_size)
    i0 = torch.arange(d0.shape[0], device=d0.device)
    i1 = idx[:, 0]
    keep = torch.ones_like(i1, dtype=torch.bool)
    if method in ("mnn", "mnn_ratio"):
        _, back = nearest_neighbours(d1, d0, k=1, chunk_size=chunk_size)
        keep &= back[i1, 0] == i0
    if need_second:
        if dist.shape[1] > 1:
            keep &= dist[:, 0] < ratio * dist[:, 1]
    if max_distance is not None:
        keep &= dist[:, 0] <= max_distance
    matches = torch.stack([i0[keep], i1[keep]], 1)
    scores = (1.0 - dist[keep, 0] ** 2 / 4.0).clamp(0, 1).float()
    if as_numpy:
        return matches.cpu().numpy(), scores.cpu().numpy()
    return matches, scores


def match_descriptors_batch(desc0: torch.Tensor, desc1: torch.Tensor,
                            mask0: Optional[torch.Tensor] = None,
                            mask1: Optional[torch.Tensor] = None,
                            method: str = "mnn", ratio: Optional[float] = None
                            ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Match B pairs of padded descriptor sets at once (one batched distance computation).

    Args:
        desc0: ``B x N0 x D``; desc1: ``B x N1 x D``.
        mask0: ``B x N0`` bool, True for valid rows (default all valid); mask1 likewise.
        method: ``"mnn"`` or ``"nn"``; ratio: optional Lowe ratio.

    Returns:
        ``(matches0, scores0)``: ``B x N0`` int64 index into desc1 or -1 (unmatched), and
        ``B x N0`` float scores (0 where unmatched): the hloc/LightGlue ``matches0`` layout.
    """
    if method not in ("mnn", "nn"):
        raise ValueError("match_descriptors_batch supports method 'mnn' or 'nn'")
    desc0 = _to_tensor(desc0, "desc0")
    desc1 = _to_tensor(desc1, "desc1", desc0.device)
    if desc0.ndim != 3 or desc1.ndim != 3 or desc0.shape[0] != desc1.shape[0] \
            or desc0.shape[2] != desc1.shape[2]:
        raise ValueError(f"expected B x N0 x D and B x N1 x D, got {tuple(desc0.shape)} and {tuple(desc1.shape)}")
    b, n0, _ = desc0.shape
    n1 = desc1.shape[1]
    dev = desc0.device
    m0 = torch.ones(b, n0, dtype=torch.bool, device=dev) if mask0 is None else mask0.to(dev).bool()
    m1 = torch.ones(b, n1, dtype=torch.bool, device=dev) if mask1 is None else mask1.to(dev).bool()
    if n0 == 0 or n1 == 0:
        return (torch.full((b, n0), -1, dtype=torch.long, device=dev), torch.zeros(b, n0, device=dev))
    d2 = ((desc0 * desc0).sum(-1)[:, :, None] + (desc1 * desc1).sum(-1)[:, None]
          - 2 * desc0 @ desc1.transpose(1, 2)).clamp_min(0)
    inf = torch.finfo(d2.dtype).max
    d2 = d2.masked_fill(~m0[:, :, None] | ~m1[:, None, :], inf)
    k = 2 if (ratio is not None and n1 > 1) else 1
    val, ind = torch.topk(d2, k, dim=2, largest=False)
    nn01 = ind[..., 0]
    keep = m0 & (val[..., 0] < inf)
    if method == "mnn":
        nn10 = d2.argmin(1)  # B x N1
        keep &= torch.gather(nn10, 1, nn01) == torch.arange(n0, device=dev)[None]
    if k == 2:
        keep &= val[..., 0] < (ratio ** 2) * val[..., 1]
    matches0 = torch.where(keep, nn01, torch.full_like(nn01, -1))
    scores0 = torch.where(keep, (1 - val[..., 0] / 4).clamp(0, 1), torch.zeros_like(val[..., 0]))
    return matches0, scores0.float()


def matches_from_batch(matches0: torch.Tensor) -> List[torch.Tensor]:
    """Convert ``B x N0`` ``matches0`` (-1 = unmatched) to a list of ``K_b x 2`` index pairs."""
    out = []
    for m in matches0:
        i0 = torch.nonzero(m >= 0).squeeze(1)
        out.append(torch.stack([i0, m[i0]], 1))
    return out

