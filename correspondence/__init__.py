"""correspondence: matching, batched robust estimation (RANSAC) in torch, learned outlier
filtering (CNe) and dense alignment (RANSAC-Flow).

The dense-alignment names (``align``, ``Alignment``, ``RansacFlow``, ``dense_to_sparse``) and the
match refinement (``refine_matches``, ``refine_keypoints``, ``RefineConf``) load on first use:
RANSAC-Flow's coarse features are lift's descriptor network and the refinement samples lift's
image pyramid, so importing them eagerly would make ``import correspondence`` import ``lift``.
"""
from .cne import CNeNet, filter_matches, load_cne, relative_pose_cne
from .consistency import consistency_prior, neighbour_consistency
from .matching import match_descriptors, match_descriptors_batch, matches_from_batch, nearest_neighbours
from .ransac import RobustEstimator, estimate_relative_pose, find_essential, find_fundamental, find_homography

_LAZY = {"align", "Alignment", "RansacFlow", "dense_to_sparse"}
_LAZY_REFINE = {"refine_matches", "refine_keypoints", "RefineConf"}

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
    "refine_matches",
    "refine_keypoints",
    "RefineConf",
]


def __getattr__(name):
    if name in _LAZY:
        from . import ransac_flow

        return getattr(ransac_flow, name)
    if name in _LAZY_REFINE:
        from . import refine

        return getattr(refine, name)
    raise AttributeError(f"module 'correspondence' has no attribute {name!r}")
