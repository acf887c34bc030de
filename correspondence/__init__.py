"""correspondence: matching, batched robust estimation (RANSAC) in torch, learned outlier
filtering (CNe) and dense alignment (RANSAC-Flow)."""
from .consistency import consistency_prior, neighbour_consistency
from .matching import match_descriptors, match_descriptors_batch, matches_from_batch, nearest_neighbours
from .ransac import RobustEstimator, estimate_relative_pose, find_essential, find_fundamental, find_homography

__all__ = [
    "consistency_prior",
    "neighbour_consistency",
    "match_descriptors",
    "match_descriptors_batch",
    "matches_from_batch",
    "nearest_neighbours",
    "RobustEstimator",
    "estimate_relative_pose",
    "find_essential",
    "find_fundamental",
    "find_homography",
]
