"""Labels and losses for training the CNe outlier filter (:mod:`correspondence.cne`).

* Labels: a match is an inlier when its **squared symmetric epipolar distance** to the
  ground-truth essential matrix, in normalised camera coordinates, is below ``1e-4`` (the
  reference code's ``obj_geod_th``; about 5 px at a 700 px focal length).
* Classification: binary logistic loss, classes balanced per pair
  (``0.5 mean over positives + 0.5 mean over negatives``).
* Essential regression: ``min(|e - e_gt|^2, |e + e_gt|^2)`` with ``e`` the differentiable
  weighted eight-point of the network weights and ``e_gt`` the ground truth matrix expressed in
  the network's input coordinates, both unit norm.
* Total: ``1.0 classification + 0.1 essential``, the essential term switched on after the
  warm-up (``--essential-after`` steps of ``lift-train-cne``).
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn.functional as F

from ..cne import logits_to_weights, weighted_eight_point

__all__ = ["INLIER_THRESHOLD", "symmetric_epipolar_distance", "classification_loss", "essential_loss",
           "cne_loss"]

INLIER_THRESHOLD = 1e-4
CLS_WEIGHT = 1.0
ESS_WEIGHT = 0.1


def symmetric_epipolar_distance(E: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """Squared symmetric epipolar distance ``(x1^T E x0)^2 (1/|E x0|_ab^2 + 1/|E^T x1|_ab^2)``.

    Args: E: ``B x 3 x 3``. x0, x1: ``B x N x 2`` normalised coordinates. Returns ``B x N``."""
    p0 = torch.cat([x0, torch.ones_like(x0[..., :1])], -1)
    p1 = torch.cat([x1, torch.ones_like(x1[..., :1])], -1)
    l1 = p0 @ E.transpose(1, 2)  # E x0
    l0 = p1 @ E  # E^T x1
    r = (p1 * l1).sum(-1)
    tiny = torch.finfo(E.dtype).tiny
    return r.square() * (1 / l1[..., :2].square().sum(-1).clamp_min(tiny) + 1 / l0[..., :2].square().sum(-1).clamp_min(tiny))


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Balanced logistic loss per pair, averaged over the batch.

    Args: logits, labels (bool), mask (bool, real matches): ``B x N``. A pair without positives
    (or negatives) contributes its other half only."""
    lg = torch.where(mask, logits, torch.zeros_like(logits))
    bce = F.binary_cross_entropy_with_logits(lg, labels.to(lg.dtype), reduction="none")
    pos = (labels & mask).to(lg.dtype)
    neg = (~labels & mask).to(lg.dtype)
    lp = (bce * pos).sum(1) / pos.sum(1).clamp_min(1)
    ln = (bce * neg).sum(1) / neg.sum(1).clamp_min(1)
    return (0.5 * lp + 0.5 * ln).mean()


def essential_loss(logits: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor, e_gt: torch.Tensor,
                   mask: torch.Tensor) -> torch.Tensor:
    """Sign-invariant squared distance between the weighted eight-point ``e`` of the weights
    ``relu(tanh(logits))`` and the unit ``B x 9`` ``e_gt``; pairs with fewer than 8 positive
    weights are left out (their eigenproblem is degenerate). Mean over the rest (0 if none)."""
    w = torch.where(mask, logits_to_weights(logits), torch.zeros_like(logits))
    ok = (w > 0).sum(1) >= 8
    if not bool(ok.any()):
        return logits.sum() * 0
    e = weighted_eight_point(x0[ok].double(), x1[ok].double(), w[ok].double())
    g = e_gt[ok].double()
    g = g / g.norm(dim=1, keepdim=True)
    d = torch.minimum((e - g).square().sum(1), (e + g).square().sum(1))
    return d.mean().to(logits.dtype)


def cne_loss(logits: torch.Tensor, batch: Dict[str, torch.Tensor], use_essential: bool,
             ess_weight: float = ESS_WEIGHT) -> Dict[str, torch.Tensor]:
    """Total loss of a batch (``x`` B x N x D input with the coordinates in its first 4 channels,
    ``mask``, ``label`` B x N, ``e_gt`` B x 9). Returns ``{"loss", "cls", "ess"}``."""
    mask, labels = batch["mask"], batch["label"]
    cls = classification_loss(logits, labels, mask)
    x = batch["x"]
    if use_essential:
        ess = essential_loss(logits, x[..., :2], x[..., 2:4], batch["e_gt"], mask)
    else:
        with torch.no_grad():
            ess = essential_loss(logits, x[..., :2], x[..., 2:4], batch["e_gt"], mask)
    loss = CLS_WEIGHT * cls + (ess_weight * ess if use_essential else 0.0)
    return {"loss": loss, "cls": cls.detach(), "ess": ess.detach()}


def precision_recall(logits: torch.Tensor, labels: torch.Tensor, mask: Optional[torch.Tensor] = None):
    """Precision and recall of ``logit > 0`` against the labels (floats)."""
    m = mask if mask is not None else torch.ones_like(labels)
    pred = (logits > 0) & m
    tp = (pred & labels).sum().item()
    return tp / max(pred.sum().item(), 1), tp / max((labels & m).sum().item(), 1)
