"""RANSAC-Flow dense alignment (Shen et al., ECCV 2020): coarse multi-homography stage on dense
LIFT descriptors, fine flow + matchability network, composition and fusion.

Modules: :mod:`.features` (dense coarse features), :mod:`.coarse` (mutual NN + RANSAC,
multi-homography), :mod:`.fine` (the network), :mod:`.variational` (the final variational
refinement), :mod:`.align` (the public API).
"""
from .align import Alignment, RansacFlow, align, dense_to_sparse
from .coarse import CoarseResult, coarse_alignment, dense_matches, multi_homography
from .features import DenseDescriptor
from .fine import FineFlowNet, FlowWeightsError, load_fine_net, local_correlation
from .variational import refine_flow

__all__ = ["Alignment", "RansacFlow", "align", "dense_to_sparse", "CoarseResult",
           "coarse_alignment", "multi_homography", "dense_matches", "DenseDescriptor",
           "FineFlowNet", "FlowWeightsError", "load_fine_net", "local_correlation", "refine_flow"]
