"""Training and evaluation data for the CNe outlier filter.

(a) :func:`synthetic_pair`: a random two-view scene with realistic outliers. Random image size
    (480..1600 px wide, landscape or portrait), focal 0.6..1.5 x width per camera, principal
    point within 3 % of the centre, rotation up to 30 degrees, unit baseline in a random
    direction, depths with a random near/far range (1.5..30 baselines), Gaussian noise
    0.3..1.5 px on the inliers, inlier ratio 0.03..0.8 (biased towards low ratios). The
    outliers are a random mix of four kinds of descriptor confusion:

    * ``uniform``: both points uniform over their images (as the RANSAC benchmark);
    * ``local``: a true point of image 0 matched to the projection of another scene point close
      to its true match in image 1 (near-duplicates: texture that looks alike a few pixels to
      tens of pixels away);
    * ``repeated``: repeated structure: a cluster of points of image 0 matched to the images of
      their 3-D points shifted by one common repetition vector (windows, tiles), so the
      outliers of one cluster agree with each other;
    * ``half``: a true point of image 0 matched to a uniform point of image 1.

    Labels come from the squared symmetric epipolar distance to the true geometry (normalised
    camera coordinates, < 1e-4), not from the generator's bookkeeping. With probability
    ``pseudo_prob`` the network input is normalised with the pseudo-intrinsics of the image
    size (:func:`correspondence.cne.pseudo_intrinsics`) instead of K, and the regression target
    ``e_gt`` is the ground truth expressed in those coordinates.

(b) Real pairs: OpenCV SIFT (2000 keypoints, contrastThreshold 1e-5 as the reference), single
    nearest neighbour from image 0 to image 1 (no ratio test, no mutual check; the ratio is
    stored), labelled by the symmetric epipolar distance to the ground-truth cameras:

    * training: the COLMAP reconstructions ``runs/data/colmap_sacre_coeur_colmap`` and
      ``runs/data/colmap_sceaux_castle_colmap`` (all registered image pairs; keypoints undistorted
      with the reconstruction's camera model);
    * held out for the benchmark: the Strecha scenes ``entry-P10`` and ``castle-P19`` with their
      ground-truth cameras (images downscaled 3x to 1024 x 683; pairs of images at most 3 apart
      in the sequence), never used for training (nor their COLMAP reconstructions).

    :func:`build_real_cache` writes them to ``runs/cne/real_{train,test}.npz`` (atomic).
"""
from __future__ import annotations

import argparse
import itertools
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from ..cne import pseudo_intrinsics
from .cne_losses import INLIER_THRESHOLD, symmetric_epipolar_distance

__all__ = ["synthetic_pair", "real_pair_sample", "collate", "BatchSampler", "build_real_cache",
           "load_real_cache", "relative_from_world", "TRAIN_COLMAP", "TEST_STRECHA"]

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"
TRAIN_COLMAP = ("sacre_coeur", "sceaux_castle")
TEST_STRECHA = ("entry-P10", "castle-P19")
STRECHA_SCALE = 1.0 / 3.0
STRECHA_MAX_GAP = 3
OUTLIER_KINDS = ("uniform", "local", "repeated", "half")


def _skew(t: np.ndarray) -> np.ndarray:
    return np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    a = np.deg2rad(rng.uniform(0, max_deg))
    K = _skew(axis)
    return np.eye(3) + np.sin(a) * K + (1 - np.cos(a)) * K @ K


def _project(K, X):
    p = X @ K.T
    return p[:, :2] / p[:, 2:3]


def _inside(p, size):
    W, H = size
    return (p[:, 0] >= 0) & (p[:, 0] <= W - 1) & (p[:, 1] >= 0) & (p[:, 1] <= H - 1)


def _camera(rng: np.random.Generator, size) -> np.ndarray:
    W, H = size
    f = rng.uniform(0.6, 1.5) * max(W, H)
    cx = (W - 1) / 2 + rng.uniform(-0.03, 0.03) * W
    cy = (H - 1) / 2 + rng.uniform(-0.03, 0.03) * H
    return np.array([[f, 0, cx], [0, f, cy], [0, 0, 1.0]])


def _scene_points(rng, K0, K1, R, t, size0, size1, depth, m):
    """``m`` candidate 3-D points in camera 0 (uniform pixels, random depth) and their
    projections; returns (X0 m x 3, p0, p1, visible)."""
    W, H = size0
    px = rng.uniform([0, 0], [W - 1, H - 1], (m, 2))
    d = rng.uniform(depth[0], depth[1], (m, 1))
    X0 = (np.c_[px, np.ones(m)] @ np.linalg.inv(K0).T) * d
    X1 = X0 @ R.T + t
    ok = X1[:, 2] > 0.1
    p1 = _project(K1, np.where(ok[:, None], X1, 1.0))
    return X0, px, p1, ok & _inside(p1, size1)


def synthetic_pair(rng: np.random.Generator, n: int = 1000, inlier_ratio: Optional[float] = None,
                   noise: Optional[float] = None, pseudo_prob: float = 0.3,
                   kinds: Optional[Dict[str, float]] = None) -> Dict[str, np.ndarray]:
    """One synthetic training pair (see the module docstring).

    Args:
        n: correspondences. inlier_ratio, noise (px): fixed values, or None to draw them.
        pseudo_prob: probability of normalising the input by the image-size pseudo-intrinsics.
        kinds: outlier mix ``{kind: weight}`` (default: Dirichlet(1) weights over the 4 kinds).

    Returns:
        dict: ``x`` (``n x 4`` float32 network input), ``label`` (``n`` bool),
        ``e_gt`` (``9`` unit, input coordinates), ``kpts0``, ``kpts1`` (``n x 2`` px), ``K0``,
        ``K1``, ``R``, ``t`` (``X1 = R X0 + t``), ``size0``, ``size1`` (W, H).
    """
    landscape = rng.random() < 0.8
    W = int(rng.uniform(480, 1600))
    H = int(W * rng.choice([0.5625, 0.667, 0.75]))
    size = (W, H) if landscape else (H, W)
    K0, K1 = _camera(rng, size), _camera(rng, size)
    R = _rotation(rng, 30.0)
    t = rng.normal(size=3)
    t /= np.linalg.norm(t)
    near = rng.uniform(1.5, 8.0)
    depth = (near, near * rng.uniform(1.5, 4.0))
    if inlier_ratio is None:
        inlier_ratio = float(np.clip(np.exp(rng.uniform(np.log(0.03), np.log(0.8))), 0.03, 0.8))
    if noise is None:
        noise = rng.uniform(0.3, 1.5)
    n_in = max(int(round(n * inlier_ratio)), 0)
    # one pool of visible scene points: inliers and the 3-D sources of structured outliers
    pool_X, pool0, pool1 = [], [], []
    got, tries = 0, 0
    while got < n + 64 and tries < 20:
        X0, p0, p1, ok = _scene_points(rng, K0, K1, R, t, size, size, depth, 2 * n + 64)
        pool_X.append(X0[ok]), pool0.append(p0[ok]), pool1.append(p1[ok])
        got += int(ok.sum())
        tries += 1
    X0 = np.concatenate(pool_X)
    P0 = np.concatenate(pool0)
    P1 = np.concatenate(pool1)
    if len(X0) < 16:  # degenerate draw (no overlap): try another scene
        return synthetic_pair(rng, n, inlier_ratio, noise, pseudo_prob, kinds)
    n_in = min(n_in, len(X0))
    k0 = P0[:n_in] + rng.normal(0, noise, (n_in, 2))
    k1 = P1[:n_in] + rng.normal(0, noise, (n_in, 2))
    n_out = n - n_in
    if kinds is None:
        wk = rng.dirichlet(np.ones(len(OUTLIER_KINDS)))
    else:
        wk = np.array([kinds.get(k, 0.0) for k in OUTLIER_KINDS], np.float64)
        wk = wk / wk.sum()
    counts = rng.multinomial(n_out, wk)
    o0, o1 = [], []
    src = rng.integers(0, len(X0), n_out + 1)  # true points of image 0 used by the confusions
    j = 0
    for kind, c in zip(OUTLIER_KINDS, counts):
        if c == 0:
            continue
        idx = src[j:j + c]
        j += c
        if kind == "uniform":
            o0.append(rng.uniform([0, 0], [size[0] - 1, size[1] - 1], (c, 2)))
            o1.append(rng.uniform([0, 0], [size[0] - 1, size[1] - 1], (c, 2)))
        elif kind == "half":
            o0.append(P0[idx])
            o1.append(rng.uniform([0, 0], [size[0] - 1, size[1] - 1], (c, 2)))
        elif kind == "local":
            # match to a point displaced by 3..60 px from the true match (near-duplicate texture)
            r = np.exp(rng.uniform(np.log(3), np.log(60), c))
            a = rng.uniform(0, 2 * np.pi, c)
            o0.append(P0[idx])
            o1.append(P1[idx] + np.c_[r * np.cos(a), r * np.sin(a)])
        else:  # repeated structure: clusters sharing one 3-D repetition vector
            n_cl = max(1, c // 40)
            cl = rng.integers(0, n_cl, c)
            Xs = X0[idx]
            shift = rng.normal(size=(n_cl, 3))
            shift[:, 2] *= 0.2  # repetitions mostly parallel to the image plane
            shift *= (rng.uniform(0.02, 0.15, (n_cl, 1)) * Xs[:, 2].mean()) / np.linalg.norm(shift, axis=1, keepdims=True)
            X1 = (Xs + shift[cl]) @ R.T + t
            o0.append(P0[idx])
            o1.append(_project(K1, np.where(X1[:, 2:3] > 0.1, X1, 1.0)))
    if n_out:
        o0 = np.concatenate(o0) + rng.normal(0, noise, (n_out, 2))
        o1 = np.concatenate(o1) + rng.normal(0, noise, (n_out, 2))
        k0 = np.concatenate([k0, o0])
        k1 = np.concatenate([k1, o1])
    perm = rng.permutation(len(k0))
    k0, k1 = k0[perm], k1[perm]
    E = _skew(t) @ R
    return _finish(k0, k1, K0, K1, R, t, size, size, rng.random() < pseudo_prob, E)


def _finish(k0, k1, K0, K1, R, t, size0, size1, pseudo: bool, E, ratio=None):
    c0 = (np.c_[k0, np.ones(len(k0))] @ np.linalg.inv(K0).T)[:, :2]
    c1 = (np.c_[k1, np.ones(len(k1))] @ np.linalg.inv(K1).T)[:, :2]
    d = symmetric_epipolar_distance(torch.from_numpy(E)[None], torch.from_numpy(c0)[None], torch.from_numpy(c1)[None])[0]
    label = (d < INLIER_THRESHOLD).numpy()
    if pseudo:
        N0 = pseudo_intrinsics(size0).numpy()
        N1 = pseudo_intrinsics(size1).numpy()
        x0 = (np.c_[k0, np.ones(len(k0))] @ np.linalg.inv(N0).T)[:, :2]
        x1 = (np.c_[k1, np.ones(len(k1))] @ np.linalg.inv(N1).T)[:, :2]
        G = N1.T @ np.linalg.inv(K1).T @ E @ np.linalg.inv(K0) @ N0
    else:
        x0, x1, G = c0, c1, E
    g = G.ravel() / np.linalg.norm(G)
    out = {"x": np.c_[x0, x1].astype(np.float32), "label": label, "e_gt": g.astype(np.float32),
           "kpts0": k0, "kpts1": k1, "K0": K0, "K1": K1, "R": R, "t": t,
           "size0": np.asarray(size0), "size1": np.asarray(size1)}
    if ratio is not None:
        out["ratio"] = np.asarray(ratio, np.float32)
    return out


# ------------------------------------------------------------------ real data
def relative_from_world(R0, t0, R1, t1):
    """Relative pose ``X1 = R X0 + t`` (unit ``t``) of two world-to-camera poses ``x ~ K (R X + t)``."""
    R = R1 @ R0.T
    t = t1 - R @ t0
    return R, t / max(np.linalg.norm(t), 1e-300)


def _sift(image: np.ndarray, n: int = 2000):
    import cv2

    sift = cv2.SIFT_create(nfeatures=n, contrastThreshold=1e-5)
    kp, desc = sift.detectAndCompute(image, None)
    if desc is None:
        return np.zeros((0, 2)), np.zeros((0, 128), np.float32)
    return np.array([k.pt for k in kp], np.float64), desc.astype(np.float32)


def _nn_ratio(d0: np.ndarray, d1: np.ndarray):
    """Nearest neighbour of each row of ``d0`` in ``d1`` and the distance ratio to the 2nd."""
    import cv2

    m = cv2.BFMatcher(cv2.NORM_L2).knnMatch(d0, d1, k=2)
    idx = np.array([a[0].trainIdx for a in m])
    ratio = np.array([a[0].distance / max(a[1].distance, 1e-12) for a in m])
    return idx, ratio


def _pairs_from_views(views: List[dict], pairs, scene: str, min_inliers: int = 15) -> List[dict]:
    out = []
    for i, j in pairs:
        a, b = views[i], views[j]
        if len(a["kpts"]) < 8 or len(b["kpts"]) < 8:
            continue
        idx, ratio = _nn_ratio(a["desc"], b["desc"])
        R, t = relative_from_world(a["R"], a["t"], b["R"], b["t"])
        c0, c1 = a["norm"], b["norm"][idx]
        d = symmetric_epipolar_distance(torch.from_numpy(_skew(t) @ R)[None], torch.from_numpy(c0)[None],
                                        torch.from_numpy(c1)[None])[0].numpy()
        if int((d < INLIER_THRESHOLD).sum()) < min_inliers:
            continue
        out.append({"scene": scene, "name0": a["name"], "name1": b["name"], "kpts0": a["kpts"],
                    "kpts1": b["kpts"][idx], "x0": c0, "x1": c1, "ratio": ratio, "R": R, "t": t,
                    "K0": a["K"], "K1": b["K"], "size0": a["size"], "size1": b["size"], "dist": d})
    return out


def colmap_pairs(scene: str, root: Path = ROOT / "runs" / "data") -> List[dict]:
    """All image pairs of the COLMAP reconstruction ``root/colmap_<scene>_colmap`` with SIFT
    nearest-neighbour matches; normalised coordinates through the camera model (undistorted)."""
    import cv2
    import pycolmap

    folder = root / f"colmap_{scene}_colmap"
    rec = pycolmap.Reconstruction(str(folder / "sparse" / "0"))
    views = []
    for image_id in sorted(rec.reg_image_ids()):
        im = rec.image(image_id)
        cam = rec.camera(im.camera_id)
        img = cv2.imread(str(folder / "images" / im.name), cv2.IMREAD_GRAYSCALE)
        if img is None:
            continue
        s = max(img.shape) / max(cam.width, cam.height)  # images may differ from the camera size
        kp, desc = _sift(img)
        pose = im.cam_from_world() if callable(im.cam_from_world) else im.cam_from_world
        # our pixel centres are integers, COLMAP's are at +0.5
        colmap_px = (kp + 0.5) / s
        norm = np.asarray(cam.cam_from_img(colmap_px), np.float64)[:, :2]
        K = np.asarray(cam.calibration_matrix(), np.float64)
        Kp = K.copy()  # pinhole part in our convention at the loaded resolution (no distortion)
        Kp[0, 0] *= s
        Kp[1, 1] *= s
        Kp[0, 2] = K[0, 2] * s - 0.5
        Kp[1, 2] = K[1, 2] * s - 0.5
        views.append({"name": im.name, "kpts": kp, "desc": desc, "norm": norm, "K": Kp,
                      "R": np.asarray(pose.rotation.matrix()), "t": np.asarray(pose.translation),
                      "size": np.array([img.shape[1], img.shape[0]])})
    return _pairs_from_views(views, itertools.combinations(range(len(views)), 2), scene)


def strecha_pairs(scene: str, root: Path = SHARED / "data" / "sfm" / "strecha", scale: float = STRECHA_SCALE,
                  max_gap: int = STRECHA_MAX_GAP) -> List[dict]:
    """Pairs ``(i, j)``, ``0 < j - i <= max_gap`` of a Strecha scene with ground-truth cameras,
    images downscaled by ``scale`` (K scaled with them)."""
    import cv2

    from lift.sfm.evaluate import read_strecha_camera

    folder = root / scene
    names = sorted(p.name for p in (folder / "images").iterdir() if p.suffix.lower() in (".jpg", ".png"))
    views = []
    for name in names:
        cam = read_strecha_camera(folder / "gt_dense_cameras" / f"{name}.camera", scale)
        img = cv2.imread(str(folder / "images" / name), cv2.IMREAD_GRAYSCALE)
        img = cv2.resize(img, tuple(int(v) for v in cam["size"]), interpolation=cv2.INTER_AREA)
        kp, desc = _sift(img)
        norm = (np.c_[kp, np.ones(len(kp))] @ np.linalg.inv(cam["K"]).T)[:, :2]
        views.append({"name": name, "kpts": kp, "desc": desc, "norm": norm, "K": cam["K"], "R": cam["R"],
                      "t": -cam["R"] @ cam["center"], "size": np.asarray(cam["size"])})
    pairs = [(i, j) for i in range(len(views)) for j in range(i + 1, min(i + max_gap + 1, len(views)))]
    return _pairs_from_views(views, pairs, scene)


def _save_npz(path: Path, pairs: List[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for k, p in enumerate(pairs):
        for key, v in p.items():
            arrays[f"{k:05d}/{key}"] = np.asarray(v)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)
    return path


def load_real_cache(path: Path) -> List[dict]:
    """Read a cache written by :func:`build_real_cache` into a list of pair dicts."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"no CNe real-pair cache at {path} (build it with "
                                "python -m correspondence.training.cne_data)")
    pairs: Dict[str, dict] = {}
    with np.load(path, allow_pickle=False) as z:
        for key in z.files:
            k, name = key.split("/", 1)
            pairs.setdefault(k, {})[name] = z[key]
    out = [pairs[k] for k in sorted(pairs)]
    for p in out:
        p["scene"] = str(p["scene"])
    return out


def build_real_cache(out_dir: Path = ROOT / "runs" / "cne", train_scenes: Sequence[str] = TRAIN_COLMAP,
                     test_scenes: Sequence[str] = TEST_STRECHA) -> Dict[str, Path]:
    """Match and label the real pairs; write ``real_train.npz`` / ``real_test.npz`` in ``out_dir``."""
    out = {}
    train = [p for s in train_scenes for p in colmap_pairs(s)]
    out["train"] = _save_npz(Path(out_dir) / "real_train.npz", train)
    print(f"train: {len(train)} pairs from {', '.join(train_scenes)}", flush=True)
    if (SHARED / "data" / "sfm" / "strecha").is_dir():
        test = [p for s in test_scenes for p in strecha_pairs(s)]
        out["test"] = _save_npz(Path(out_dir) / "real_test.npz", test)
        print(f"test: {len(test)} pairs from {', '.join(test_scenes)}", flush=True)
    return out


def real_pair_sample(rng: np.random.Generator, pair: dict, n: int) -> Dict[str, np.ndarray]:
    """A random subset of at most ``n`` matches of a cached real pair, as :func:`synthetic_pair`
    (input normalised by the true intrinsics; the ratio is kept in ``ratio``)."""
    m = len(pair["x0"])
    idx = rng.choice(m, size=min(n, m), replace=False)
    x = np.c_[pair["x0"][idx], pair["x1"][idx]].astype(np.float32)
    E = _skew(pair["t"]) @ pair["R"]
    return {"x": x, "label": pair["dist"][idx] < INLIER_THRESHOLD,
            "e_gt": (E.ravel() / np.linalg.norm(E)).astype(np.float32), "ratio": pair["ratio"][idx].astype(np.float32)}


def collate(samples: List[Dict[str, np.ndarray]], use_ratio: bool = False) -> Dict[str, torch.Tensor]:
    """Pad samples to the largest ``N``: ``x`` B x N x (4|5), ``label``, ``mask`` B x N, ``e_gt`` B x 9."""
    B = len(samples)
    N = max(len(s["x"]) for s in samples)
    D = 5 if use_ratio else 4
    x = torch.zeros(B, N, D)
    label = torch.zeros(B, N, dtype=torch.bool)
    mask = torch.zeros(B, N, dtype=torch.bool)
    for i, s in enumerate(samples):
        n = len(s["x"])
        x[i, :n, :4] = torch.from_numpy(s["x"])
        if use_ratio:
            x[i, :n, 4] = torch.from_numpy(s["ratio"]) if "ratio" in s else 0.8
        label[i, :n] = torch.from_numpy(np.asarray(s["label"]))
        mask[i, :n] = True
    e = torch.from_numpy(np.stack([s["e_gt"] for s in samples]))
    return {"x": x, "label": label & mask, "mask": mask, "e_gt": e}


class BatchSampler:
    """Training batches as a pure function of ``(seed, step)`` (so a resumed run replays exactly
    the batches of an uninterrupted one): each pair is real with probability ``real_prob`` (when
    real pairs are given), else synthetic; ``N`` uniform in ``[n_min, n_max]`` per batch (real
    pairs with fewer matches are padded)."""

    def __init__(self, seed: int = 0, batch_size: int = 8, n_min: int = 500, n_max: int = 1000,
                 real_pairs: Optional[List[dict]] = None, real_prob: float = 0.3, use_ratio: bool = False):
        self.seed = int(seed)
        self.batch_size, self.n_min, self.n_max = batch_size, n_min, n_max
        self.real = real_pairs or []
        self.real_prob = real_prob if self.real else 0.0
        self.use_ratio = use_ratio

    def __call__(self, step: int) -> Dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, int(step)])
        n = int(rng.integers(self.n_min, self.n_max + 1))
        samples = []
        for _ in range(self.batch_size):
            if self.real and rng.random() < self.real_prob:
                samples.append(real_pair_sample(rng, self.real[int(rng.integers(len(self.real)))], n))
            else:
                samples.append(synthetic_pair(rng, n))
        return collate(samples, self.use_ratio)


def main(argv=None) -> Dict[str, Path]:
    """``python -m correspondence.training.cne_data [--out runs/cne]``: build the real caches."""
    ap = argparse.ArgumentParser(description="Build the CNe real-pair caches (SIFT NN matches + GT labels)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "cne")
    args = ap.parse_args(argv)
    return build_real_cache(args.out)


if __name__ == "__main__":
    main()
