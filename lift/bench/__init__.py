"""Matching benchmark: readers, method registry, metrics, reports and the ``lift-bench`` CLI.

Typical use from Python (the CLI does the same)::

    from lift.bench import read_homography_dataset, run_homography_benchmark, write_report
    pairs = read_homography_dataset("hpatches-sequences-release")
    results = run_homography_benchmark(pairs, ["lift", "sift", "orb"])
    write_report(results, "out/hpatches")
"""
from .estimators import EstimatorUnavailable, estimate_homography, estimate_relative_pose
from .methods import (METHODS, Method, MethodUnavailable, available_methods, load_method,
                      register_method)
from .metrics import (corner_error, matching_score, mean_matching_accuracy, pose_auc, pose_error,
                      repeatability)
from .readers import (FlowPair, HomographyPair, ImageRef, PosePair, read_flo, read_homography_dataset,
                      read_pose_dataset, read_sintel_pairs, stereo_motorcycle_pair,
                      synthetic_homography_pairs, synthetic_pose_pairs, write_flo)
from .report import markdown_report, plot_matches, plot_mma, plot_pose_recall, write_report
from .runner import run_homography_benchmark, run_pose_benchmark, run_speed_benchmark

__all__ = [
    "EstimatorUnavailable", "estimate_homography", "estimate_relative_pose",
    "METHODS", "Method", "MethodUnavailable", "available_methods", "load_method", "register_method",
    "corner_error", "matching_score", "mean_matching_accuracy", "pose_auc", "pose_error", "repeatability",
    "FlowPair", "HomographyPair", "ImageRef", "PosePair", "read_flo", "read_homography_dataset",
    "read_pose_dataset", "read_sintel_pairs", "stereo_motorcycle_pair", "synthetic_homography_pairs",
    "synthetic_pose_pairs", "write_flo",
    "markdown_report", "plot_matches", "plot_mma", "plot_pose_recall", "write_report",
    "run_homography_benchmark", "run_pose_benchmark", "run_speed_benchmark",
]
