"""Validation of a model on held-out quadruplets (tracks of the ``val`` or ``test`` split).

Metrics (all on the same quadruplets; positives = P1-P2 pairs, negatives = P1-P3 pairs):

* ``fpr95_gt``: descriptor FPR95 with patches cut at the stored position and orientation.
* ``fpr95_ori``: FPR95 with patches cut at the orientation the orientation network predicts.
* ``ori_err_deg``: median |error| of the predicted relative rotation between P1 and P2
  (ground truth: the difference of the stored orientations), degrees.
* ``fpr95_chain``: FPR95 through detector location -> orientation -> descriptor.
* ``det_auc``: ROC AUC of the detector patch score, keypoint (P1..P3) vs non-keypoint (P4).
* ``pair_dist``: mean descriptor distance of P1/P2 through the chain.
"""
from __future__ import annotations

import math
from typing import Dict

import numpy as np
import torch

from .losses import angle_difference, descriptor_pair_distance
from .metrics import fpr95, roc_auc
from .stages import Stage

__all__ = ["evaluate", "collate"]


def collate(items) -> Dict[str, torch.Tensor]:
    """Stack a list of dataset items (dicts of tensors) into one batch; uint8 patches (datasets
    built with ``as_float=False``, faster) become float32 in [0, 1]."""
    out = {k: torch.stack([it[k] for it in items]) for k in items[0]}
    if out["patches"].dtype == torch.uint8:
        out["patches"] = out["patches"].float().div_(255.0)
    return out


@torch.no_grad()
def evaluate(stage: Stage, dataset, max_items: int = 2000, batch_size: int = 256) -> Dict[str, float]:
    """Metrics of ``stage.model`` on the first ``max_items`` quadruplets of ``dataset``
    (epoch 0, so the set is the same at every call)."""
    was = stage.training
    stage.eval()
    dataset.set_epoch(0)
    n = min(max_items, len(dataset))
    acc = {k: [] for k in ("pos_gt", "neg_gt", "pos_ori", "neg_ori", "err", "pos_ch", "neg_ch",
                           "score", "is_kp")}
    for start in range(0, n, batch_size):
        batch = collate([dataset[i] for i in range(start, min(n, start + batch_size))])
        p, kp = batch["patches"], batch["keypoints"]
        b, k = p.shape[:2]
        x = p[:, :3].transpose(0, 1).reshape(3 * b, *p.shape[2:])
        gt = kp[:, :3, 3].transpose(0, 1).reshape(-1)
        pyr = stage.pyramid(x)
        d = stage.describe(pyr, None, gt)
        acc["pos_gt"].append(descriptor_pair_distance(d[:b], d[b:2 * b]))
        acc["neg_gt"].append(descriptor_pair_distance(d[:b], d[2 * b:]))
        theta = stage.orient(pyr)
        d = stage.describe(pyr, None, theta)
        acc["pos_ori"].append(descriptor_pair_distance(d[:b], d[b:2 * b]))
        acc["neg_ori"].append(descriptor_pair_distance(d[:b], d[2 * b:]))
        acc["err"].append(angle_difference(theta[b:2 * b] - theta[:b], gt[b:2 * b] - gt[:b]).abs())
        ch = stage.chain(x)
        d = ch["desc"]
        acc["pos_ch"].append(descriptor_pair_distance(d[:b], d[b:2 * b]))
        acc["neg_ch"].append(descriptor_pair_distance(d[:b], d[2 * b:]))
        acc["score"].append(ch["score"])
        acc["is_kp"].append(torch.ones(3 * b, dtype=torch.bool))
        if k > 3:
            s4 = stage.detect(p[:, 3])[0]
            acc["score"].append(s4)
            acc["is_kp"].append(torch.zeros(b, dtype=torch.bool))
    stage.train(was)
    cat = {k: torch.cat(v).numpy() for k, v in acc.items()}

    def fpr(pos, neg):
        return fpr95(np.concatenate([cat[pos], cat[neg]]),
                     np.r_[np.ones(len(cat[pos])), np.zeros(len(cat[neg]))])

    out = {"fpr95_gt": fpr("pos_gt", "neg_gt"), "fpr95_ori": fpr("pos_ori", "neg_ori"),
           "ori_err_deg": float(np.median(cat["err"]) * 180.0 / math.pi),
           "fpr95_chain": fpr("pos_ch", "neg_ch"),
           "pair_dist": float(cat["pos_ch"].mean()), "items": int(n)}
    if (~cat["is_kp"]).any():
        out["det_auc"] = roc_auc(cat["score"], cat["is_kp"])
    return out
