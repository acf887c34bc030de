"""Benchmark loops: extract features per method, match them, score them.

Each ``run_*`` function takes records from :mod:`lift.bench.readers` and method specs, and returns a
JSON-serialisable dict::

    {"task": ..., "settings": {...}, "methods": {spec: {"status": "ok" | "unavailable",
     "reason": ..., "summary": {...}, "pairs": [per-pair records]}}}

Matching is mutual nearest neighbour on L2 descriptor distance
(:func:`correspondence.match_descriptors`), the D2-Net protocol for every method.
Features of an image are extracted once per method and dropped when no later pair needs them.
"""
from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Union

import numpy as np

from ..features import Features
from . import metrics as M
from .estimators import check_estimator, estimate_homography, estimate_relative_pose
from .methods import Method, MethodUnavailable, load_method, time_extraction
from .readers import HomographyPair, ImageRef, PosePair, _to_gray_uint8

__all__ = ["run_homography_benchmark", "run_pose_benchmark", "run_speed_benchmark",
           "match_features", "load_methods"]


def match_features(f0: Features, f1: Features) -> np.ndarray:
    """Mutual-nearest-neighbour matches ``K x 2`` (int64) between two feature sets."""
    from correspondence import match_descriptors

    if len(f0) == 0 or len(f1) == 0 or f0.descriptors.shape[1] != f1.descriptors.shape[1]:
        return np.zeros((0, 2), np.int64)
    matches, _ = match_descriptors(f0.descriptors, f1.descriptors, method="mnn")
    return np.asarray(matches, np.int64).reshape(-1, 2)


def load_methods(specs: Sequence[str], max_keypoints: int, device=None, log: Callable = print
                 ) -> Dict[str, object]:
    """``{spec: Method or "unavailable reason"}``; unknown names raise ValueError."""
    out = {}
    for spec in specs:
        try:
            out[spec] = load_method(spec, max_keypoints, device)
        except MethodUnavailable as exc:
            log(f"{spec}: unavailable ({exc})")
            out[spec] = str(exc)
    return out


class _FeatureCache:
    """Extract once per image key; forget an image after its last use; time every extraction."""

    def __init__(self, method: Method, keys: Iterable[str]):
        self.method = method
        self.uses = Counter(keys)
        self.store: Dict[str, Features] = {}
        self.times: List[float] = []
        self.counts: Dict[str, int] = {}

    def get(self, ref: ImageRef) -> Features:
        """Features of ``ref`` (the image is decoded only when they are not cached)."""
        if ref.key not in self.store:
            image = ref.load()
            t0 = time.perf_counter()
            self.store[ref.key] = self.method.extract(image)
            self.times.append(time.perf_counter() - t0)
            self.counts[ref.key] = len(self.store[ref.key])
        feats = self.store[ref.key]
        self.uses[ref.key] -= 1
        if self.uses[ref.key] <= 0:
            del self.store[ref.key]
        return feats

    def time_summary(self, warmup: int = 2) -> Dict[str, float]:
        t = self.times[warmup:] if len(self.times) > warmup else self.times
        return {"time_ms_median": 1000 * float(np.median(t)) if t else float("nan"),
                "keypoints_mean": float(np.mean(list(self.counts.values()))) if self.counts else 0.0}


def _progress(iterable, desc: str, total: int, quiet: bool):
    if quiet:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False)


def _nanmean(values) -> float:
    v = np.asarray(list(values), np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


def _evaluate_pairs(pairs, methods: Sequence[str], max_keypoints: int, device, quiet: bool,
                    log: Callable, score_pair: Callable, summarise: Callable) -> Dict[str, dict]:
    """The loop shared by the pair benchmarks: for each method, extract (cached), match (MNN),
    ``score_pair(spec, pair, f0, f1, matches) -> record``, then
    ``summarise(records) -> summary`` (extraction time and keypoint counts added)."""
    keys = [k for p in pairs for k in (p.image0.key, p.image1.key)]
    out = {}
    for spec, method in load_methods(methods, max_keypoints, device, log).items():
        if not isinstance(method, Method):
            out[spec] = {"status": "unavailable", "reason": method}
            continue
        cache = _FeatureCache(method, keys)
        records = []
        for pair in _progress(pairs, spec, len(pairs), quiet):
            f0, f1 = cache.get(pair.image0), cache.get(pair.image1)
            record = {"pair": pair.name, "group": pair.group, "keypoints0": len(f0),
                      "keypoints1": len(f1)}
            record.update(score_pair(spec, pair, f0, f1, match_features(f0, f1)))
            records.append(record)
        summary = summarise(records)
        summary["matches_mean"] = float(np.mean([r["matches"] for r in records]))
        summary.update(cache.time_summary())
        out[spec] = {"status": "ok", "description": method.description, "summary": summary,
                     "pairs": records}
    return out


def run_homography_benchmark(pairs: Sequence[HomographyPair], methods: Sequence[str],
                             max_keypoints: int = 2048, estimator: str = "cv2",
                             ransac_threshold: float = 3.0, eps: float = 3.0,
                             figure_dir: Optional[Path] = None, figure_pairs: Sequence[str] = (),
                             device=None, quiet: bool = False, log: Callable = print,
                             refine: Union[bool, Sequence[str]] = False) -> dict:
    """MMA@1..10, homography accuracy @1/3/5 px, repeatability and matching score @``eps`` px,
    keypoint/match counts and extraction time for each method on homography pairs.

    Args:
        pairs: :class:`HomographyPair` records.
        methods: method specs (:func:`lift.bench.methods.load_method`).
        estimator: robust homography estimator (``"cv2"`` or ``"lift"``).
        ransac_threshold: inlier threshold (px) of the estimator.
        figure_dir, figure_pairs: write match pictures for these pair names.
        refine: also score every method (True) or the listed method specs with their matched
            keypoints refined before the fit (:func:`correspondence.refine_matches` on all
            mutual-NN matches), as ``<spec>+refine`` rows from the same features; their ms/img
            adds the refinement's time per image.
    """
    check_estimator("homography", estimator)
    if not pairs:
        raise ValueError("no homography pair to evaluate")
    results = {"task": "homography", "settings": {
        "max_keypoints": max_keypoints, "estimator": estimator, "ransac_threshold": ransac_threshold,
        "eps": eps, "matcher": "mutual nearest neighbour (L2)", "n_pairs": len(pairs),
        "mma_thresholds": list(M.MMA_THRESHOLDS),
        "refine": refine if isinstance(refine, bool) else ",".join(refine)}, "methods": {}}
    refined: Dict[str, List[dict]] = {}  # spec -> records with refined keypoints
    refine_times: Dict[str, List[float]] = {}

    def score(pair, k0, k1, size0, size1, matches):
        err = M.reprojection_errors(k0, k1, matches, pair.H)
        H_est, inl = estimate_homography(k0[matches[:, 0]], k1[matches[:, 1]], estimator, ransac_threshold)
        rep = M.repeatability(k0, k1, pair.H, size0, size1, eps)
        return err, {"sequence": pair.sequence, "matches": len(matches), "mma": M.match_accuracy(err).tolist(),
                     "corner_error": M.corner_error(H_est, pair.H, size0),
                     "inliers": int(inl.sum()),
                     # trust check of the ground truth: small when GT and the robust fit agree
                     "inlier_gt_error_median": float(np.median(err[inl])) if inl.any() else float("nan"),
                     "repeatability": rep["repeatability"],
                     "matching_score": M.matching_score(k0, k1, matches, pair.H, size0, size1, eps)}

    def score_pair(spec, pair, f0, f1, matches):
        err, record = score(pair, f0.keypoints, f1.keypoints, f0.image_size, f1.image_size, matches)
        if figure_dir is not None and pair.name in figure_pairs:
            _match_figure(figure_dir, spec, pair, f0, f1, matches, err <= eps,
                          f"correct at {eps:g} px")
        if refine is True or (not isinstance(refine, bool) and spec in refine):
            from correspondence.refine import refine_matches

            t0 = time.perf_counter()
            k0, k1, _ = refine_matches(_to_gray_uint8(pair.image0.load()), _to_gray_uint8(pair.image1.load()),
                                       f0.keypoints, f1.keypoints, matches, f0.scales, f1.scales,
                                       f0.oris, f1.oris)
            refine_times.setdefault(spec, []).append((time.perf_counter() - t0) / 2)
            r = score(pair, k0, k1, f0.image_size, f1.image_size, matches)[1]
            refined.setdefault(spec, []).append({"pair": pair.name, "group": pair.group,
                                                 "keypoints0": len(f0), "keypoints1": len(f1), **r})
        return record

    out = _evaluate_pairs(pairs, methods, max_keypoints, device, quiet, log, score_pair,
                          _homography_summary)
    results["methods"] = {}
    for spec, entry in out.items():
        results["methods"][spec] = entry
        if spec in refined:
            summary = _homography_summary(refined[spec])
            summary["matches_mean"] = float(np.mean([r["matches"] for r in refined[spec]]))
            summary["keypoints_mean"] = entry["summary"]["keypoints_mean"]
            summary["time_ms_median"] = entry["summary"]["time_ms_median"] + 1000 * float(np.median(refine_times[spec]))
            results["methods"][f"{spec}+refine"] = {
                "status": "ok", "description": entry["description"] + ", matches refined "
                "(correspondence.refine_matches)", "summary": summary, "pairs": refined[spec]}
    return results



def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)


def _match_figure(figure_dir, spec, pair, f0, f1, matches, correct, what) -> Path:
    from .report import plot_matches

    return plot_matches(pair.image0.load(), pair.image1.load(), f0.keypoints, f1.keypoints, matches,
                        correct, Path(figure_dir) / f"matches_{_slug(spec)}_{_slug(pair.name)}.png",
                        title=f"{spec} on {pair.name}: {int(correct.sum())}/{len(matches)} {what}")


def _target(record: dict) -> str:
    return record["pair"].rsplit("/", 1)[-1]


def _homography_summary(records: List[dict]) -> dict:
    mma = np.array([r["mma"] for r in records])
    groups = sorted({r["group"] for r in records})
    acc = M.threshold_accuracy([r["corner_error"] for r in records], (1, 3, 5))
    summary = {
        "mma": mma.mean(0).tolist(),
        "mma_by_group": {g: mma[[r["group"] == g for r in records]].mean(0).tolist() for g in groups},
        # HPatches-style target index ("1-k": k-th image of each sequence, harder as k grows)
        "mma_by_target": {t: mma[[_target(r) == t for r in records]].mean(0).tolist()
                          for t in sorted({_target(r) for r in records})},
        "homography_accuracy": {str(k): v for k, v in acc.items()},
        "repeatability": _nanmean(r["repeatability"] for r in records),
        "matching_score": _nanmean(r["matching_score"] for r in records),
    }
    return summary


def run_pose_benchmark(pairs: Sequence[PosePair], methods: Sequence[str], max_keypoints: int = 2048,
                       estimator: str = "cv2", ransac_threshold: float = 1.0,
                       epipolar_threshold: float = 2.0, figure_dir: Optional[Path] = None,
                       figure_pairs: Sequence[str] = (), device=None, quiet: bool = False,
                       log: Callable = print) -> dict:
    """Relative-pose AUC@5/10/20 deg, epipolar precision (fraction of matches with Sampson error
    under ``epipolar_threshold`` px w.r.t. the ground-truth F), counts and extraction time."""
    check_estimator("pose", estimator)
    if not pairs:
        raise ValueError("no pose pair to evaluate")
    results = {"task": "pose", "settings": {
        "max_keypoints": max_keypoints, "estimator": estimator, "ransac_threshold": ransac_threshold,
        "epipolar_threshold": epipolar_threshold, "matcher": "mutual nearest neighbour (L2)",
        "n_pairs": len(pairs), "auc_thresholds": [5, 10, 20]}, "methods": {}}

    def score_pair(spec, pair, f0, f1, matches):
        p0, p1 = f0.keypoints[matches[:, 0]], f1.keypoints[matches[:, 1]]
        R, t, inl = estimate_relative_pose(p0, p1, pair.K0, pair.K1, estimator, ransac_threshold)
        err, err_R, err_t = M.pose_error(R, t, pair.R, pair.t)
        F = M.fundamental_from_pose(pair.K0, pair.K1, pair.R, pair.t)
        correct = M.sampson_errors(F, p0, p1) <= epipolar_threshold
        if figure_dir is not None and pair.name in figure_pairs:
            _match_figure(figure_dir, spec, pair, f0, f1, matches, correct,
                          f"within {epipolar_threshold:g} px of the GT epipolar line")
        return {"matches": len(matches), "inliers": int(inl.sum()),
                "epipolar_precision": float(correct.mean()) if len(correct) else 0.0,
                "pose_error": err, "rotation_error": err_R, "translation_error": err_t}

    def summarise(records):
        auc = M.pose_auc([r["pose_error"] for r in records], (5, 10, 20))
        return {"pose_auc": {str(k): v for k, v in auc.items()},
                "epipolar_precision": _nanmean(r["epipolar_precision"] for r in records)}

    results["methods"] = _evaluate_pairs(pairs, methods, max_keypoints, device, quiet, log,
                                         score_pair, summarise)
    return results


def run_speed_benchmark(images: Sequence[ImageRef], methods: Sequence[str], max_keypoints: int = 2048,
                        repeats: int = 5, warmup: int = 2, device=None, quiet: bool = False,
                        log: Callable = print) -> dict:
    """Median extraction time per image (after ``warmup`` calls on that image) and keypoint
    counts; the summary is the median over images."""
    if not images:
        raise ValueError("no image to time")
    results = {"task": "speed", "settings": {"max_keypoints": max_keypoints, "repeats": repeats,
                                             "warmup": warmup, "n_images": len(images)},
               "methods": {}}
    for spec, method in load_methods(methods, max_keypoints, device, log).items():
        if not isinstance(method, Method):
            results["methods"][spec] = {"status": "unavailable", "reason": method}
            continue
        records = []
        for ref in _progress(images, spec, len(images), quiet):
            image = ref.load()
            t, feats = time_extraction(method.extract, image, repeats, warmup)
            records.append({"image": ref.key, "size": [image.shape[1], image.shape[0]],
                            "time_ms": 1000 * t, "keypoints": len(feats)})
        summary = {"time_ms_median": float(np.median([r["time_ms"] for r in records])),
                   "keypoints_mean": float(np.mean([r["keypoints"] for r in records]))}
        results["methods"][spec] = {"status": "ok", "description": method.description,
                                    "summary": summary, "pairs": records}
    return results
