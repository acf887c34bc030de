"""Training losses of the four LIFT stages (facts: ``shared/reference/methods.md`` 1.7, 3).

Descriptor: the HardNet loss (Mishchuk et al. 2017) on L2-normalised descriptors, the modern
form of LIFT's triplet loss with hard-negative mining: for each matching pair (a_i, p_i) of the
batch the hardest in-batch negative is the closest non-matching descriptor, searched over the row
(a_i vs all p_j) and, with the *anchor swap*, the column (p_i vs all a_j); the loss is
``mean(relu(margin + d(a_i, p_i) - d_neg))`` with **margin 1.0** (descriptor distances lie in
[0, 2]). LIFT's own triplet margin (5.0) and DeepDesc's contrastive C = 4 are for unnormalised
descriptors; the contrastive variant here uses margin 1.0 on normalised ones.

Orientation: ``mean ||desc(P1 rotated by theta1) - desc(P2 rotated by theta2)||`` with the
descriptor frozen.

Detector: the classification hinge of tf-lift on the patch scores (soft maximum of the score map,
``lift.glue.soft_max_score``) — positives P1..P3 ``relu(1 - s)``, the non-keypoint P4
``relu(1 + s)``, balanced 1:1 — plus the pair loss (descriptor distance of P1 and P2 cut at the
soft-argmax locations).
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn.functional as F

__all__ = ["pairwise_distances", "hardest_negative_loss", "contrastive_loss",
           "descriptor_pair_distance", "orientation_loss", "classification_loss",
           "angle_difference"]

#: Descriptor pairs closer than this are treated as duplicates, not negatives (HardNet: 0.008).
DUPLICATE_DISTANCE = 0.008


def pairwise_distances(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Euclidean distances ``N x M`` between rows of ``a`` (``N x D``) and ``b`` (``M x D``),
    with ``eps`` inside the square root (finite gradient at 0)."""
    d2 = (a * a).sum(1, keepdim=True) + (b * b).sum(1)[None] - 2.0 * a @ b.t()
    return torch.sqrt(d2.clamp_min(0.0) + eps)


def _hardest_negatives(dist: torch.Tensor, same: Optional[torch.Tensor],
                       anchor_swap: bool) -> torch.Tensor:
    n = dist.shape[0]
    mask = torch.eye(n, dtype=torch.bool, device=dist.device)
    if same is not None:
        mask = mask | same
    masked = dist + 10.0 * (mask | (dist < DUPLICATE_DISTANCE)).to(dist.dtype)
    neg = masked.min(1).values
    if anchor_swap:
        neg = torch.minimum(neg, masked.min(0).values)
    return neg


def hardest_negative_loss(anchor: torch.Tensor, positive: torch.Tensor, margin: float = 1.0,
                          anchor_swap: bool = True, labels: Optional[torch.Tensor] = None
                          ) -> Dict[str, torch.Tensor]:
    """HardNet triplet margin loss with hardest in-batch negatives.

    Args:
        anchor, positive: ``N x D`` L2-normalised descriptors; row i of both is one track.
        margin: triplet margin (1.0 for unit descriptors).
        anchor_swap: also search the hardest negative among the anchors (column minimum).
        labels: optional ``N`` track ids; rows of equal label are never used as negatives
            (default: all rows are different tracks).

    Returns:
        dict with ``loss`` (scalar), ``pos`` (mean positive distance), ``neg`` (mean hardest
        negative distance).
    """
    if anchor.shape != positive.shape or anchor.ndim != 2 or anchor.shape[0] < 2:
        raise ValueError(f"need two N x D descriptor sets with N >= 2, got {tuple(anchor.shape)} "
                         f"and {tuple(positive.shape)}")
    dist = pairwise_distances(anchor, positive)
    same = None if labels is None else labels[:, None] == labels[None, :]
    pos = dist.diagonal()
    neg = _hardest_negatives(dist, same, anchor_swap)
    loss = F.relu(margin + pos - neg).mean()
    return {"loss": loss, "pos": pos.mean().detach(), "neg": neg.mean().detach()}


def contrastive_loss(anchor: torch.Tensor, positive: torch.Tensor, margin: float = 1.0,
                     anchor_swap: bool = True, labels: Optional[torch.Tensor] = None
                     ) -> Dict[str, torch.Tensor]:
    """DeepDesc-style contrastive loss with hardest in-batch negatives:
    ``mean(d_pos^2) + mean(relu(margin - d_neg)^2)`` (margin 1.0 on unit descriptors)."""
    dist = pairwise_distances(anchor, positive)
    same = None if labels is None else labels[:, None] == labels[None, :]
    pos = dist.diagonal()
    neg = _hardest_negatives(dist, same, anchor_swap)
    loss = (pos ** 2).mean() + (F.relu(margin - neg) ** 2).mean()
    return {"loss": loss, "pos": pos.mean().detach(), "neg": neg.mean().detach()}


def descriptor_pair_distance(d1: torch.Tensor, d2: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``N`` Euclidean distances between matching rows of two ``N x D`` descriptor sets."""
    return torch.sqrt(((d1 - d2) ** 2).sum(1) + eps)


def orientation_loss(d1: torch.Tensor, d2: torch.Tensor) -> torch.Tensor:
    """LIFT's orientation loss: mean distance of the two views' descriptors (``N x D`` each),
    each cut at its predicted orientation."""
    return descriptor_pair_distance(d1, d2).mean()


def classification_loss(scores: torch.Tensor, is_keypoint: torch.Tensor) -> torch.Tensor:
    """tf-lift's hinge on patch scores: ``relu(1 - s)`` for keypoint patches, ``relu(1 + s)``
    for non-keypoint patches, each class averaged, then the two classes weighted 1:1.

    Args:
        scores: ``N`` patch scores (soft maximum of the detector map). is_keypoint: ``N`` bool.
    """
    pos, neg = scores[is_keypoint], scores[~is_keypoint]
    terms = []
    if len(pos):
        terms.append(F.relu(1.0 - pos).mean())
    if len(neg):
        terms.append(F.relu(1.0 + neg).mean())
    if not terms:
        raise ValueError("classification_loss needs at least one score")
    return sum(terms) / len(terms)


def angle_difference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a - b`` wrapped to (-pi, pi] (radians)."""
    d = a - b
    return torch.atan2(torch.sin(d), torch.cos(d))
