"""Convert a Brown/UBC "Photo Tourism" patch set (Liberty, Notre Dame, Yosemite) to a patch file.

Input layout (one folder per set, as distributed by Brown, Hua and Winder):
    ``patchesNNNN.bmp``  1024 x 1024 grey bitmaps, each a 16 x 16 grid of 64 x 64 patches in
                         row-major order; patch ``k`` is in bitmap ``k // 256``, row
                         ``(k % 256) // 16``, column ``k % 16`` (the last bitmap may be partly
                         filled);
    ``info.txt``         one line per patch: ``3-D point id`` and a second, unused number;
    ``m50_*.txt``        match lists, one pair per line: ``patch1 point1 unused patch2 point2
                         unused unused``; a pair matches when point1 == point2.

Output: the patches at their native 64 x 64 with ``support_sigma`` = 6, i.e. each patch *is* the
+-6 sigma descriptor support (the sets have no larger context, so they train and evaluate the
descriptor only, not the detector). Each bitmap is an image of the image table; a patch's
keypoint is the tile centre (x, y) = (64 c + 31.5, 64 r + 31.5), sigma = 64 / 12, ori = 0, so
cutting that keypoint from the bitmap with :func:`lift.data.cut_patches` (S = 64, support 6)
gives the tile back exactly. Track id = the 3-D point id. All m50 lists are kept in
``/pairs`` (in file-name order; ``params["pair_files"]`` gives each list's row range).
"""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Optional, Union

import cv2
import numpy as np

from .schema import KIND_TRACK, SPLITS
from .writer import PatchWriter

__all__ = ["read_brown_info", "build_brown", "BROWN_PATCH", "BROWN_GRID"]

BROWN_PATCH = 64  #: patch side in a Brown bitmap
BROWN_GRID = 16  #: patches per bitmap row / column


def read_brown_info(root: Union[str, Path]) -> np.ndarray:
    """3-D point id of every patch (``info.txt``, first column) as int64."""
    path = Path(root) / "info.txt"
    if not path.is_file():
        raise FileNotFoundError(f"no info.txt in {root} (not a Brown patch-set folder)")
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    try:
        return np.array([int(r[0]) for r in rows], np.int64)
    except (ValueError, IndexError) as exc:
        raise ValueError(f"{path}: each line must start with an integer 3-D point id") from exc


def _bitmaps(root: Path):
    files = sorted(root.glob("patches*.bmp"), key=lambda p: int(re.sub(r"\D", "", p.stem) or 0))
    if not files:
        raise FileNotFoundError(f"no patches*.bmp in {root}")
    return files


def build_brown(root: Union[str, Path], output: Union[str, Path], split: str = "auto",
                val_fraction: float = 0.1, seed: int = 0, max_patches: Optional[int] = None,
                progress: bool = True) -> Path:
    """Convert a Brown/UBC folder to a patch file (see module docstring); returns the path.

    Args:
        root: folder with ``patches*.bmp``, ``info.txt`` and optional ``m50_*.txt``.
        output: target ``.h5`` (written atomically).
        split: ``auto`` (3-D points to train/val with ``val_fraction``) or one of train, val,
            test for the whole set (e.g. ``test`` for an evaluation set).
        seed: seed of the split.
        max_patches: convert only the first patches (pairs referring beyond are dropped).
    """
    from tqdm import tqdm

    root = Path(root)
    if split not in ("auto",) + SPLITS:
        raise ValueError(f"split must be 'auto' or one of {SPLITS}, got '{split}'")
    t0 = time.time()
    points = read_brown_info(root)
    n = len(points) if max_patches is None else min(len(points), int(max_patches))
    points = points[:n]
    bitmaps = _bitmaps(root)
    per = BROWN_GRID * BROWN_GRID
    need = (n + per - 1) // per
    if len(bitmaps) < need:
        raise ValueError(f"{root}: info.txt lists {n} patches, needing {need} bitmaps, but "
                         f"there are {len(bitmaps)}")
    uniq = np.unique(points)
    if split == "auto":
        rng = np.random.default_rng(seed)
        usplit = np.where(rng.random(len(uniq)) < val_fraction, SPLITS.index("val"),
                          SPLITS.index("train"))
    else:
        usplit = np.full(len(uniq), SPLITS.index(split))
    psplit = usplit[np.searchsorted(uniq, points)]
    p, g = BROWN_PATCH, BROWN_GRID
    sigma = p / 12.0
    params = dict(split=split, val_fraction=val_fraction, seed=seed, max_patches=max_patches,
                  num_points3D=int(len(uniq)))
    pair_files = sorted(root.glob("m50_*.txt"))
    with PatchWriter(output, "brown", str(root), params, patch_size=p, support_sigma=6.0) as wr:
        for b in tqdm(range(need), desc="brown", disable=not progress):
            img = cv2.imread(str(bitmaps[b]), cv2.IMREAD_GRAYSCALE)
            if img is None or img.shape[0] < p * g or img.shape[1] < p * g:
                raise ValueError(f"{bitmaps[b]} is not a {p * g} x {p * g} grey bitmap")
            k = np.arange(b * per, min(n, (b + 1) * per))
            r, c = (k % per) // g, k % g
            tiles = img[:p * g, :p * g].reshape(g, p, g, p).transpose(0, 2, 1, 3).reshape(per, p, p)
            img_id = wr.add_image(bitmaps[b].name, (img.shape[1], img.shape[0]))
            kp = np.stack([c * p + (p - 1) / 2.0, r * p + (p - 1) / 2.0,
                           np.full(len(k), sigma), np.zeros(len(k))], 1)
            wr.add_patches(np.ascontiguousarray(tiles[:len(k)]), points[k],
                           np.full(len(k), img_id), kp, psplit[k], np.full(len(k), KIND_TRACK))
        ranges = []
        for pf in pair_files:
            rows = np.array([line.split() for line in pf.read_text().splitlines() if line.strip()])
            if rows.size == 0:
                continue
            if rows.ndim != 2 or rows.shape[1] < 5:
                raise ValueError(f"{pf}: expected lines 'patch1 point1 x patch2 point2 ...'")
            vals = rows[:, [0, 1, 3, 4]].astype(np.int64)
            ok = (vals[:, 0] < n) & (vals[:, 2] < n)
            vals = vals[ok]
            start = sum(c for _, _, c in ranges)
            wr.add_pairs(vals[:, [0, 2]], (vals[:, 1] == vals[:, 3]).astype(np.uint8))
            ranges.append((pf.name, start, int(len(vals))))
        wr.params.update(pair_files=ranges, build_seconds=round(time.time() - t0, 1))
    return Path(output)
