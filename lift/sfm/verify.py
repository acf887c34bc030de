"""SfM step 4: import features and matches into a COLMAP database and verify them geometrically.

The database (``database.db``) gets cameras (:class:`lift.colmap.CameraSpec`), trivial rigs and
frames, images, keypoints (``Features.to_colmap()``: +0.5 pixel-centre shift, sigma, clockwise
radians) and raw matches; then each pair's two-view geometry, from

- ``verifier="lift"``: our batched fundamental-matrix RANSAC
  (:func:`correspondence.find_fundamental`, Sampson threshold ``threshold`` px, all pairs of a
  batch in one call); pairs with at least ``min_inliers`` inliers are stored ``UNCALIBRATED``
  with F (in COLMAP's pixel convention), the others ``DEGENERATE`` (no inliers);
- ``verifier="colmap"``: ``pycolmap.verify_matches`` (COLMAP's F/E/H model selection,
  ``threshold`` as its RANSAC max error).

Then, unless ``conf.refine`` is None, the keypoints of every track of verified matches are
moved onto one common point by patch alignment (:mod:`correspondence.refine`; the database's keypoints are
updated in place, ``features.h5`` keeps the detected positions). Measured on Strecha entry-P10
with lift features (``tools/bench_sfm.py``): mean reprojection error 0.475 -> 0.375 px, median
camera-centre error 21.5 -> 18.8 mm.

The database is built under a temporary name and renamed when complete.

Example::

    python -m lift.sfm.verify out/features.h5 out/pairs.txt out/matches.h5 out/database.db
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import h5py
import numpy as np
import torch
from tqdm import tqdm

from correspondence.ransac import find_fundamental
from correspondence.refine import RefineConf, RefineStats, refine_keypoints

from ..colmap.compat import verify_matches_colmap
from ..colmap.database import (CameraSpec, add_cameras_and_images, open_database, read_database,
                               update_keypoint_positions, write_keypoints, write_matches,
                               write_two_view_geometry)
from ..features import Features
from ..h5io import list_feature_names
from ..image import load_image
from .match import read_matches
from .pairs import parse_pairs

__all__ = ["VerifyConf", "verify_pairs", "fundamental_to_colmap", "main"]


@dataclass
class VerifyConf:
    """Geometric verification settings.

    Attributes:
        verifier: ``lift`` (our batched F-RANSAC) or ``colmap`` (pycolmap.verify_matches) [lift].
        threshold: inlier threshold in pixels: Sampson distance for ``lift`` [1.0], COLMAP's
            RANSAC max error for ``colmap`` (pass e.g. 4.0, COLMAP's default).
        min_inliers: fewest inliers for a verified pair [15].
        max_iters: most RANSAC samples per pair (pairs that do not overlap run to it) [10000].
        batch_pairs: pairs per RANSAC call [32].
        device: torch device of the RANSAC and of the keypoint refinement.
        refine: track-consistent keypoint refinement after verification
            (:class:`correspondence.refine.RefineConf`), None to store the detected positions
            [RefineConf()].
    """

    verifier: str = "lift"
    threshold: float = 1.0
    min_inliers: int = 15
    max_iters: int = 10000
    batch_pairs: int = 32
    device: str = None
    refine: Optional[RefineConf] = field(default_factory=RefineConf)

    def __post_init__(self):
        if self.verifier not in ("lift", "colmap"):
            raise ValueError(f"verifier must be 'lift' or 'colmap', got {self.verifier!r}")


def fundamental_to_colmap(F: np.ndarray) -> np.ndarray:
    """F in lift's pixel convention (top-left centre (0, 0)) -> COLMAP's (+0.5):
    ``x_lift = x_colmap - 0.5``, so ``F_colmap = S^T F S`` with ``S = [[1,0,-.5],[0,1,-.5],[0,0,1]]``."""
    S = np.array([[1.0, 0.0, -0.5], [0.0, 1.0, -0.5], [0.0, 0.0, 1.0]])
    return S.T @ F @ S


def verify_pairs(kpts: Dict[str, np.ndarray], matches: List[np.ndarray],
                 pairs: Sequence[Tuple[str, str]], conf: VerifyConf = VerifyConf(),
                 progress: bool = True) -> List[Tuple[np.ndarray, np.ndarray]]:
    """Fundamental RANSAC on every pair, ``conf.batch_pairs`` pairs per padded batch.

    Args:
        kpts: ``{name: N x 2}`` keypoints (lift convention). matches: per pair ``K x 2``.
    Returns:
        per pair ``(inlier matches K' x 2, F 3 x 3 lift convention)``; ``K' = 0`` and NaN F when
        the pair has fewer than ``conf.min_inliers`` inliers.
    """
    out: List[Tuple[np.ndarray, np.ndarray]] = []
    nan = np.full((3, 3), np.nan)
    bar = tqdm(total=len(pairs), desc="verify", unit="pair", disable=not progress)
    for s in range(0, len(pairs), conf.batch_pairs):
        idx = list(range(s, min(len(pairs), s + conf.batch_pairs)))
        k = max(1, max(len(matches[i]) for i in idx))
        src = np.zeros((len(idx), k, 2), np.float64)
        dst = np.zeros_like(src)
        valid = np.zeros((len(idx), k), bool)
        for j, i in enumerate(idx):
            m = matches[i]
            a, b = pairs[i]
            src[j, :len(m)] = kpts[a][m[:, 0]]
            dst[j, :len(m)] = kpts[b][m[:, 1]]
            valid[j, :len(m)] = True
        F, inl = find_fundamental(torch.from_numpy(src), torch.from_numpy(dst), conf.threshold,
                                  max_iters=conf.max_iters, mask=torch.from_numpy(valid),
                                  device=conf.device)
        F, inl = F.cpu().numpy(), inl.cpu().numpy()
        for j, i in enumerate(idx):
            mask = inl[j, :len(matches[i])]
            if mask.sum() >= conf.min_inliers:
                out.append((matches[i][mask], F[j]))
            else:
                out.append((np.zeros((0, 2), np.int64), nan))
        bar.update(len(idx))
    bar.close()
    return out


def _keypoints_only(g) -> Features:
    """Keypoints, scales, oris and image size of an hloc features group (no descriptors)."""
    kp = g["keypoints"][()]
    n = len(kp)
    get = lambda k, default: g[k][()] if k in g else default  # noqa: E731
    return Features(kp, get("scales", np.ones(n)), get("oris", np.zeros(n)), np.zeros(n),
                    np.zeros((n, 0), np.float32), tuple(get("image_size", np.zeros(2, np.int64))))


class _Images(Sequence):
    """Grey images of an image folder by name, read when indexed (the refinement visits each
    image at most twice and keeps none)."""

    def __init__(self, image_dir: Path, names: Sequence[str]):
        self.image_dir, self.names = Path(image_dir), list(names)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i):
        return load_image(self.image_dir / self.names[i])


def refine_database(database: Path, image_dir: Path, names: Sequence[str],
                    feats: Dict[str, Features], conf: RefineConf, device=None) -> RefineStats:
    """Refine the keypoints of the verified tracks of ``database`` (:mod:`correspondence.refine`) and write
    the new positions into it. ``feats``: the stored keypoints (lift convention) by name."""
    contents = read_database(database)
    index = {n: i for i, n in enumerate(names)}
    edges = [(index[a], index[b], np.asarray(inl, np.int64))
             for (a, b), (inl, _) in contents.two_view.items() if len(inl) and a in index and b in index]
    new, stats = refine_keypoints(_Images(image_dir, names), [feats[n].keypoints for n in names],
                                  [feats[n].scales for n in names], [feats[n].oris for n in names],
                                  edges, conf, device=device)
    with open_database(database) as db:
        for n, kp in zip(names, new):
            if not np.array_equal(kp, feats[n].keypoints):
                update_keypoint_positions(db, contents.images[n][0], kp)
    return stats


def main(features: Path, pairs_path: Path, matches_path: Path, database: Path,
         camera: CameraSpec = CameraSpec(), conf: VerifyConf = VerifyConf(),
         overwrite: bool = False, progress: bool = True, image_dir: Optional[Path] = None) -> Path:
    """Build ``database`` from the features and matches, verify the pairs and (with
    ``conf.refine``, which needs ``image_dir``, the folder the features were extracted from)
    refine the keypoints of the verified tracks. Returns its path (an existing database is
    kept unless ``overwrite``)."""
    database = Path(database)
    if database.exists() and not overwrite:
        return database
    if conf.refine is not None and image_dir is None:
        raise ValueError("keypoint refinement (VerifyConf.refine) needs the image folder (image_dir); "
                         "pass it, or refine=None")
    pairs = parse_pairs(pairs_path)
    with h5py.File(features, "r") as f:
        names = list_feature_names(f)
        feats = {n: _keypoints_only(f[n]) for n in names}
    with h5py.File(matches_path, "r") as f:
        matches = [read_matches(f, a, b)[0] for a, b in pairs]
    tmp = database.with_name(database.name + ".tmp")
    if tmp.exists():
        tmp.unlink()
    try:
        with open_database(tmp) as db:
            ids = add_cameras_and_images(db, names, [feats[n].image_size for n in names], camera)
            for n in names:
                write_keypoints(db, ids[n], feats[n])
            for (a, b), m in zip(pairs, matches):
                write_matches(db, ids[a], ids[b], m)
            if conf.verifier == "lift":
                kpts = {n: f.keypoints.astype(np.float64) for n, f in feats.items()}
                for (a, b), (inl, F) in zip(pairs, verify_pairs(kpts, matches, pairs, conf, progress)):
                    write_two_view_geometry(db, ids[a], ids[b], inl, fundamental_to_colmap(F))
        if conf.verifier == "colmap":
            verify_matches_colmap(tmp, pairs_path, max_error=conf.threshold,
                                  min_num_inliers=conf.min_inliers)
        if conf.refine is not None:
            st = refine_database(tmp, image_dir, names, feats, conf.refine, conf.device)
            if progress:
                print(f"refine: {st.tracks} tracks, {st.accepted} of {st.aligned} keypoints moved "
                      f"(median {st.median_shift:.2f} px)", file=sys.stderr)
        os.replace(tmp, database)
    finally:
        if tmp.exists():
            tmp.unlink()
    return database


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m lift.sfm.verify", description=__doc__.split("\n")[0])
    parser.add_argument("features", type=Path)
    parser.add_argument("pairs", type=Path)
    parser.add_argument("matches", type=Path)
    parser.add_argument("database", type=Path)
    parser.add_argument("--verifier", default="lift", choices=["lift", "colmap"])
    parser.add_argument("--threshold", type=float, default=1.0)
    parser.add_argument("--image-dir", type=Path, default=None,
                        help="the images of the features: needed for the keypoint refinement")
    parser.add_argument("--no-refine", action="store_true", help="store the detected keypoint positions")
    parser.add_argument("--overwrite", action="store_true")
    a = parser.parse_args()
    print(main(a.features, a.pairs, a.matches, a.database, CameraSpec(),
               VerifyConf(a.verifier, a.threshold, refine=None if a.no_refine else RefineConf()),
               a.overwrite, image_dir=a.image_dir))
