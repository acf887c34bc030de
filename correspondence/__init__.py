"""correspondence: matching, batched robust estimation (RANSAC) in torch, learned outlier
filtering (CNe) and dense alignment (RANSAC-Flow).

The dense-alignment names (``align``, ``Alignment``, ``RansacFlow``, ``dense_to_sparse``) load on
first use: RANSAC-Flow's coarse features are lift's descriptor network, so importing them eagerly
would make ``import correspondence`` import ``lift``.
"""
from .cne import CNeNet, filter_matches, load_cne, relative_pose_cne
from .consistency import consistency_prior, neighbour_consistency
from .matching import match_descriptors, match_descriptors_batch, matches_from_batch, nearest_neighbours
from .ransac import RobustEstimator, estimate_relative_pose, find_essential, find_fundamental, find_homography

_LAZY = {"align", "Alignment", "RansacFlow", "dense_to_sparse"}

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
    "CNeNet",
    "filter_matches",
    "load_cne",
    "relative_pose_cne",
    "align",
    "Alignment",
    "RansacFlow",
    "dense_to_sparse",
]


def __getattr__(name):
    if name in _LAZY:
        from . import ransac_flow

        return getattr(ransac_flow, name)
    raise AttributeError(f"module 'correspondence' has no attribute {name!r}")
