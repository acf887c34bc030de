"""correspondence: matching, batched robust estimation (RANSAC) in torch, learned outlier
filtering (CNe) and dense alignment (RANSAC-Flow)."""

__all__ = []
