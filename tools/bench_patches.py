"""Patch-level benchmarks of a LIFT model against SIFT; writes ``benchmarks/patches.md``.

1. **Patch verification (FPR95)** on held-out tracks of SfM patch files (``lift.data`` schema):
   positives = two views of one track (P1, P2), negatives = P1 vs a view of another track (P3),
   the quadruplets of :class:`lift.data.QuadrupletDataset`. Every method describes the same
   keypoints of the same stored patches:

   * ``SIFT``: ``cv2.SIFT.compute`` on the stored 128 px patch at its keypoint (63.5, 63.5),
     ``size`` = 2 sigma, ``angle`` = the stored (ground-truth) orientation; L2-normalised.
   * ``RootSIFT``: the same, Hellinger-normalised.
   * ``LIFT desc (GT ori)``: the LIFT descriptor cut at the same orientation (descriptor alone).
   * ``LIFT desc + LIFT ori``: the orientation the LIFT orientation network predicts (what
     ``lift.LIFT.describe`` does for keypoints without an angle).

2. **Orientation** on ``sfm/sacre_coeur/mapping_rot`` (the photos of ``mapping`` rotated
   clockwise by A degrees, same canvas): SIFT keypoints detected on the original photo and
   re-detected in the rotated photo at the rotated position (within 1.5 px, scale within 10 %)
   are the common points. Error = ``wrap(theta_rot - theta_orig - A)``; SIFT's theta is its
   dominant orientation at each detection, LIFT's the orientation network's output at the same
   (x, y, sigma). Median |error| in degrees, plus the fraction under 10 degrees and the median
   over the points with sigma < 2 px (most of them). An extra row, ``LIFT (exact keypoint)``,
   feeds LIFT the exact rotated position and the original sigma in the rotated photo instead of
   SIFT's re-detection (which moves by a median 0.39 sigma): the network's own rotation
   consistency, without detection noise. SIFT has no API to compute an orientation at a given
   point, so it has no such row.

Usage::

    python tools/bench_patches.py --model lift/weights/lift_default.pt \\
        --data runs/data/synthetic.h5:test runs/data/colmap_sacre_coeur.h5:val \\
        --output benchmarks/patches.md
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def sift_descriptors(patches: np.ndarray, oris: np.ndarray, sigma: float, centre: float,
                     root: bool = False) -> np.ndarray:
    """SIFT descriptors of ``N x S x S`` uint8 patches at their centre keypoint (L2-normalised)."""
    sift = cv2.SIFT_create()
    out = np.zeros((len(patches), 128), np.float32)
    for i, (p, o) in enumerate(zip(patches, oris)):
        kp = [cv2.KeyPoint(float(centre), float(centre), 2.0 * sigma,
                           float(np.degrees(o) % 360.0))]
        _, d = sift.compute(p, kp)
        if d is not None and len(d):
            out[i] = d[0]
    if root:
        out = np.sqrt(out / np.maximum(out.sum(1, keepdims=True), 1e-12))
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def nearest_other_track(store, rows: np.ndarray) -> np.ndarray:
    """For each selected row, the row of the spatially nearest keypoint patch of *another*
    track in the same image (a hard negative: overlapping, similar-looking content), or -1."""
    from scipy.spatial import cKDTree

    pos = np.flatnonzero(store.track >= 0)
    big = 1e7  # images far apart in the search space
    pts = np.c_[store.keypoints[pos, 0] + big * store.image_id[pos], store.keypoints[pos, 1]]
    tree = cKDTree(pts)
    q = np.c_[store.keypoints[rows, 0] + big * store.image_id[rows], store.keypoints[rows, 1]]
    k = min(8, len(pos))
    _, nn = tree.query(q, k=k)
    nn = nn.reshape(len(rows), k)
    out = np.full(len(rows), -1, np.int64)
    for j in range(k):  # first neighbour with another track (vectorised over rows)
        cand = pos[np.minimum(nn[:, j], len(pos) - 1)]
        take = (out < 0) & (store.track[cand] != store.track[rows]) & (nn[:, j] < len(pos))
        out[take] = cand[take]
    return out


def verification(model, spec: str, max_items: int, seed: int = 777, hard: bool = False) -> dict:
    """FPR95 of each method on quadruplets of ``FILE:SPLIT``; with ``hard`` the negative of
    each P1 is the spatially nearest keypoint of another track in the same image."""
    from lift.data import QuadrupletDataset
    from lift.training.crops import PatchGeometry
    from lift.training.metrics import fpr95
    from lift.training.stages import make_stage
    from lift.training.validation import collate

    path, _, split = spec.partition(":")
    ds = QuadrupletDataset(path, split=split or "test", seed=seed, with_negative=False,
                           in_memory=True, as_float=False)
    geom = PatchGeometry(ds.patch_size, ds.support_sigma)
    stage = make_stage("desc", model, geom).eval()
    n = min(max_items, len(ds))
    hard_rows = None
    if hard:
        p1 = np.array([ds.rows(i)[0] for i in range(n)])
        hard_rows = nearest_other_track(ds.store, p1)
    dist = {k: [] for k in ("SIFT", "RootSIFT", "LIFT desc (GT ori)", "LIFT desc + LIFT ori")}
    for start in range(0, n, 512):
        items = [ds[i] for i in range(start, min(n, start + 512))]
        if hard_rows is not None:
            for it, r in zip(items, hard_rows[start:start + 512]):
                if r >= 0:
                    it["patches"][2, 0] = torch.from_numpy(ds.store.read(int(r)))
                    it["keypoints"][2] = torch.from_numpy(ds.store.keypoints[int(r)].copy())
        raw = torch.stack([it["patches"] for it in items])  # b x 3 x 1 x S x S uint8
        kp = torch.stack([it["keypoints"] for it in items])
        b = len(items)
        u8 = raw[:, :, 0].transpose(0, 1).reshape(3 * b, ds.patch_size, ds.patch_size).numpy()
        gt = kp[:, :, 3].transpose(0, 1).reshape(-1)
        for name, root in (("SIFT", False), ("RootSIFT", True)):
            d = sift_descriptors(u8, gt.numpy(), geom.sigma, geom.centre, root)
            dist[name].append(np.stack([np.linalg.norm(d[:b] - d[b:2 * b], axis=1),
                                        np.linalg.norm(d[:b] - d[2 * b:], axis=1)]))
        with torch.no_grad():
            x = collate(items)["patches"][:, :3].transpose(0, 1).reshape(3 * b, 1, ds.patch_size,
                                                                           ds.patch_size)
            pyr = stage.pyramid(x)
            for name, ori in (("LIFT desc (GT ori)", gt), ("LIFT desc + LIFT ori", None)):
                if ori is None:
                    ori = stage.orient(pyr)
                d = stage.describe(pyr, None, ori).numpy()
                dist[name].append(np.stack([np.linalg.norm(d[:b] - d[b:2 * b], axis=1),
                                            np.linalg.norm(d[:b] - d[2 * b:], axis=1)]))
    res = {"data": f"{Path(path).name}:{split or 'test'}" + (" (hard neg.)" if hard else ""),
           "pairs": 2 * n}
    for name, parts in dist.items():
        dd = np.concatenate(parts, 1)
        res[name] = fpr95(np.r_[dd[0], dd[1]], np.r_[np.ones(n), np.zeros(n)])
    return res


def rotate_points(xy: np.ndarray, angle_deg: float, size) -> np.ndarray:
    """Rotate (x, y) clockwise on screen by ``angle_deg`` about the image centre."""
    w, h = size
    c = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
    a = math.radians(angle_deg)
    r = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return (xy - c) @ r.T + c


#: the rows of the orientation benchmark
ORI_METHODS = ("SIFT", "LIFT", "LIFT (exact keypoint)")


def unoriented(xy: np.ndarray, sigma: np.ndarray) -> list:
    """``cv2.KeyPoint`` s at ``xy`` with OpenCV size 2 sigma and no angle (-1: LIFT estimates it)."""
    return [cv2.KeyPoint(float(x), float(y), float(2 * s), -1) for (x, y), s in zip(xy, sigma)]


def orientation_benchmark(model, folder: Path, max_points: int = 1000) -> dict:
    """Median orientation error of SIFT and LIFT on exactly rotated photos."""
    from lift.pipeline import LIFT
    from lift.features import keypoints_from_cv2

    sift = cv2.SIFT_create(nfeatures=max_points)
    lift_ = LIFT(model)
    errs = {k: [] for k in ORI_METHODS}
    sigmas, angles = [], []
    rot_files = sorted(folder.glob("*_rot*.jpg"))
    originals = folder.parent / "mapping"
    for rf in rot_files:
        stem, _, ang = rf.stem.rpartition("_rot")
        a = float(ang)
        img0 = cv2.imread(str(originals / f"{stem}.jpg"), cv2.IMREAD_GRAYSCALE)
        img1 = cv2.imread(str(rf), cv2.IMREAD_GRAYSCALE)
        if img0 is None or img1 is None:
            continue
        k0, k1 = sift.detect(img0, None), sift.detect(img1, None)
        if not k0 or not k1:
            continue
        xy0, s0, o0, _ = keypoints_from_cv2(k0)
        xy1, s1, o1, _ = keypoints_from_cv2(k1)
        pred = rotate_points(xy0.astype(np.float64), a, (img1.shape[1], img1.shape[0]))
        d = np.linalg.norm(pred[:, None] - xy1[None], axis=2)
        d = np.where(np.abs(np.log(s0[:, None] / s1[None])) < math.log(1.1), d, np.inf)
        j = d.argmin(1)
        ok = d[np.arange(len(j)), j] < 1.5
        i0, i1 = np.flatnonzero(ok), j[ok]
        if len(i0) == 0:
            continue
        gt = math.radians(a)
        e_sift = o1[i1] - o0[i0] - gt
        errs["SIFT"].append(np.arctan2(np.sin(e_sift), np.cos(e_sift)))
        f0 = lift_.describe(img0, unoriented(xy0[i0], s0[i0]))
        f1 = lift_.describe(img1, unoriented(xy1[i1], s1[i1]))
        f_exact = lift_.describe(img1, unoriented(pred[i0], s0[i0]))
        for name, f in (("LIFT", f1), ("LIFT (exact keypoint)", f_exact)):
            e_lift = f.oris - f0.oris - gt
            errs[name].append(np.arctan2(np.sin(e_lift), np.cos(e_lift)))
        sigmas.append(s0[i0])
        angles.append(np.full(len(i0), a))
    out = {"pairs": len(rot_files)}
    small = np.concatenate(sigmas) < 2.0 if sigmas else np.zeros(0, bool)
    ang = np.concatenate(angles) if angles else np.zeros(0)
    for k, v in errs.items():
        e = np.degrees(np.abs(np.concatenate(v))) if v else np.zeros(0)
        out[k] = {"points": int(len(e)), "median_deg": float(np.median(e)) if len(e) else None,
                  "under10": float((e < 10).mean()) if len(e) else None,
                  "median_small_deg": float(np.median(e[small])) if small.any() else None,
                  "median_by_angle": {int(a): float(np.median(e[ang == a])) for a in np.unique(ang)}}
    return out


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="default", help="weights name or path")
    ap.add_argument("--data", nargs="+", default=[], help="FILE.h5:SPLIT held-out patch sets")
    ap.add_argument("--max-items", type=int, default=5000, help="quadruplets per data set")
    ap.add_argument("--rot-folder", type=Path, default=SHARED / "sfm/sacre_coeur/mapping_rot")
    ap.add_argument("--output", type=Path, default=ROOT / "benchmarks/patches.md")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from lift.model import LIFTModel

    model = LIFTModel.load(args.model)
    t0 = time.time()
    rows = [verification(model, spec, args.max_items, hard=h) for h in (False, True)
            for spec in args.data]
    ori = orientation_benchmark(model, args.rot_folder) if args.rot_folder.is_dir() else None
    lines = ["# Patch-level benchmarks: LIFT vs SIFT", "",
             f"Model: `{args.model}`. Command: `python tools/bench_patches.py "
             f"--model {args.model} --data {' '.join(args.data)} --max-items {args.max_items}`. "
             f"Run time {time.time() - t0:.0f} s (CPU).", "",
             "## Patch verification, FPR95 (lower is better)", "",
             "Held-out tracks; positives = two views of one track, negatives = a view of a random "
             "other track, or (hard neg.) the spatially nearest keypoint of another track in the "
             "same image; all methods describe the same keypoints of the same patches "
             "(see the docstring of `tools/bench_patches.py`).", ""]
    if rows:
        names = [k for k in rows[0] if k not in ("data", "pairs")]
        lines += ["| data | pairs | " + " | ".join(names) + " |",
                  "|---|---|" + "---|" * len(names)]
        for r in rows:
            lines.append(f"| {r['data']} | {r['pairs']} | " +
                         " | ".join(f"{100 * r[k]:.2f} %" for k in names) + " |")
    if ori is not None:
        lines += ["", "## Orientation on exactly rotated photos (sacre_coeur/mapping_rot)", "",
                  f"{ori['pairs']} rotated photos; common points = SIFT keypoints re-detected at the "
                  "rotated position (1.5 px, scale within 10 %), where both methods are judged; "
                  "`LIFT (exact keypoint)`: LIFT at the exact rotated position and original sigma "
                  "instead of SIFT's re-detection there (the network without detection noise).", "",
                  "| method | points | median error | error < 10 deg | median, sigma < 2 px |",
                  "|---|---|---|---|---|"]
        by = [k for k in ORI_METHODS if ori[k]["points"]]
        for k in by:
            o = ori[k]
            small = "-" if o["median_small_deg"] is None else f"{o['median_small_deg']:.2f} deg"
            lines.append(f"| {k} | {o['points']} | {o['median_deg']:.2f} deg | "
                         f"{100 * o['under10']:.1f} % | {small} |")
        if by:
            degs = sorted({a for k in by for a in ori[k]["median_by_angle"]})
            lines += ["", "Median error (deg) by clockwise rotation A (quarter turns map the pixel grid "
                      "onto itself):", "",
                      "| method | " + " | ".join(f"A = {a}" for a in degs) + " |",
                      "|---|" + "---|" * len(degs)]
            for k in by:
                m = ori[k]["median_by_angle"]
                lines.append(f"| {k} | " + " | ".join(f"{m[a]:.2f}" if a in m else "-" for a in degs) + " |")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return args.output


if __name__ == "__main__":
    main()
