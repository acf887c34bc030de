"""Validation metrics: FPR95 for patch verification, angular errors for orientation."""
from __future__ import annotations

import numpy as np

__all__ = ["fpr_at_recall", "fpr95", "roc_auc"]


def fpr_at_recall(distances, labels, recall: float = 0.95) -> float:
    """False-positive rate at the distance threshold that accepts ``recall`` of the positives.

    Args:
        distances: ``N`` pair distances (smaller = more similar).
        labels: ``N`` 1 for matching pairs, 0 for non-matching ones.
        recall: fraction of positives that must be accepted (0.95 for FPR95).

    Returns:
        The fraction of negatives with distance <= the threshold (ties count as accepted), in
        [0, 1]. Raises ValueError without positives or negatives.
    """
    d = np.asarray(distances, np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1).astype(bool)
    if d.shape != y.shape:
        raise ValueError(f"{len(d)} distances for {len(y)} labels")
    if not y.any() or y.all():
        raise ValueError("FPR at recall needs both matching and non-matching pairs")
    if not np.isfinite(d).all():
        raise ValueError("distances contain NaN or infinite values")
    pos = np.sort(d[y])
    k = int(np.ceil(recall * len(pos))) - 1
    threshold = pos[max(k, 0)]
    return float((d[~y] <= threshold).mean())


def fpr95(distances, labels) -> float:
    """FPR at 95 % recall (the Brown / HardNet patch verification metric)."""
    return fpr_at_recall(distances, labels, 0.95)


def roc_auc(scores, labels) -> float:
    """Area under the ROC curve of ``scores`` (higher = more positive) for 0/1 ``labels``
    (Mann-Whitney statistic, ties counted half)."""
    s = np.asarray(scores, np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1).astype(bool)
    if not y.any() or y.all():
        raise ValueError("AUC needs both classes")
    from scipy.stats import rankdata

    r = rankdata(s)
    n_pos, n_neg = y.sum(), (~y).sum()
    return float((r[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
