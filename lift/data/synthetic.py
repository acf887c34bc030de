"""Synthetic SfM-like patches: random homographies and photometric change of single photos.

Recipe (per photo, per group): detect SIFT keypoints on the photo (``cv2.SIFT``), draw 2-4 random
homographies ``H_v`` (rotation, log-uniform scale, anisotropy, shear, perspective, shift), render
each view with a Gaussian pre-filter where it shrinks the photo and apply a random photometric
change (gamma, contrast, brightness, blur, noise). A source keypoint is one physical point: in
view ``v`` it sits at ``H_v(x)``, its scale is ``sigma * sqrt(|det J|)`` and its orientation is the
direction of ``J (cos t, sin t)``, with ``J`` the local affine (Jacobian) of ``H_v`` at ``x``.
Points seen in at least two views (with their +-6 sigma support inside the view) become tracks;
non-keypoint patches are drawn at random locations at least ``neg_min_dist * sigma`` from every
keypoint of the photo mapped into the view, with their +-6 sigma square on the warped photo (not
on the black canvas around it). Photos matching ``test_photos`` get split ``test``;
the other tracks are split train/val by track.
"""
from __future__ import annotations

import fnmatch
import time
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
from scipy.spatial import cKDTree

from ..image import IMAGE_EXTENSIONS, load_image
from .patches import PATCH_SIZE, PATCH_SUPPORT, cut_patches
from .schema import KIND_RANDOM, KIND_TRACK, SPLITS
from .writer import PatchWriter

__all__ = ["random_homography", "local_affine", "warp_keypoints", "photometric_change",
           "render_view", "sift_keypoints", "build_synthetic", "DEFAULT_TEST_PHOTOS",
           "list_photos"]

#: Photos of ``../shared/data/photos`` held out of training (split ``test``): Set5, Set14 and
#: Urban100 img_091..img_100. Benchmarks on synthetic warps should use these photos.
DEFAULT_TEST_PHOTOS = ("CSet5/*", "CSet14/*", "Urban100/img_09[1-9].*", "Urban100/img_100.*")


def random_homography(rng: np.random.Generator, size: Tuple[int, int],
                      max_rotation: float = np.pi, scale_range: Tuple[float, float] = (0.6, 1.6),
                      max_aniso: float = 0.15, max_shear: float = 0.1,
                      perspective: float = 0.25, max_shift: float = 0.1) -> np.ndarray:
    """A random 3 x 3 homography from an image of ``size`` (W, H) to a view of the same size.

    About the image centre: rotation uniform in [-max_rotation, max_rotation] (radians, clockwise
    on screen), isotropic scale log-uniform in ``scale_range``, anisotropy exp(U(+-max_aniso)),
    shear U(+-max_shear), perspective terms U(+-perspective) / max(W, H), then a shift of
    U(+-max_shift) * (W, H). Maps pixel centres (top-left = (0, 0)) to pixel centres.
    """
    w, h = size
    c = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
    t = rng.uniform(-max_rotation, max_rotation)
    s = np.exp(rng.uniform(np.log(scale_range[0]), np.log(scale_range[1])))
    a = np.exp(rng.uniform(-max_aniso, max_aniso))
    sh = rng.uniform(-max_shear, max_shear)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    lin = s * rot @ np.array([[a, sh], [0.0, 1.0 / a]])
    p = rng.uniform(-perspective, perspective, 2) / max(w, h)
    shift = rng.uniform(-max_shift, max_shift, 2) * np.array([w, h])
    centre_in = np.array([[1, 0, -c[0]], [0, 1, -c[1]], [0, 0, 1.0]])
    core = np.eye(3)
    core[:2, :2] = lin
    core[2, :2] = p
    centre_out = np.array([[1, 0, c[0] + shift[0]], [0, 1, c[1] + shift[1]], [0, 0, 1.0]])
    hom = centre_out @ core @ centre_in
    return hom / hom[2, 2]


def local_affine(hom: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Jacobian of the homography at points: ``N x 2`` (x, y) -> ``N x 2 x 2`` d(H(x))/dx."""
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    xh = np.concatenate([xy, np.ones((len(xy), 1))], 1) @ hom.T  # N x 3
    wgt = xh[:, 2:3]
    y = xh[:, :2] / wgt
    a = hom[:2, :2][None]
    cvec = hom[2, :2][None, None, :]  # 1 x 1 x 2
    return (a - y[:, :, None] * cvec) / wgt[:, :, None]


def warp_keypoints(hom: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
    """Map ``N x 4`` keypoints (x, y, sigma, ori) through a homography.

    The position is ``H(x)``; sigma is scaled by ``sqrt(|det J|)`` and the orientation is the
    direction of ``J (cos ori, sin ori)`` (radians, clockwise on screen), J the local affine.
    Returns ``N x 4`` float64 (points behind the horizon get NaN).
    """
    kp = np.asarray(keypoints, np.float64).reshape(-1, 4)
    xh = np.concatenate([kp[:, :2], np.ones((len(kp), 1))], 1) @ hom.T
    ok = xh[:, 2] > 1e-9
    xy = xh[:, :2] / np.where(ok, xh[:, 2], np.nan)[:, None]
    jac = local_affine(hom, kp[:, :2])
    scale = np.sqrt(np.abs(np.linalg.det(jac)))
    d = np.einsum("nij,nj->ni", jac, np.stack([np.cos(kp[:, 3]), np.sin(kp[:, 3])], 1))
    ori = np.arctan2(d[:, 1], d[:, 0])
    out = np.concatenate([xy, (kp[:, 2] * scale)[:, None], ori[:, None]], 1)
    out[~ok] = np.nan
    return out


def photometric_change(image: np.ndarray, rng: np.random.Generator,
                       gamma_range=(0.6, 1.6), contrast_range=(0.6, 1.4),
                       brightness: float = 0.15, max_blur: float = 1.2, blur_prob: float = 0.3,
                       max_noise: float = 0.03) -> np.ndarray:
    """Random gamma, contrast, brightness, optional Gaussian blur and noise on a uint8 image."""
    x = image.astype(np.float32) / 255.0
    if rng.random() < blur_prob:
        x = cv2.GaussianBlur(x, (0, 0), rng.uniform(0.3, max_blur))
    x = np.clip(x, 0, 1) ** np.exp(rng.uniform(np.log(gamma_range[0]), np.log(gamma_range[1])))
    x = (x - 0.5) * rng.uniform(*contrast_range) + 0.5 + rng.uniform(-brightness, brightness)
    x = x + rng.normal(0.0, rng.uniform(0.0, max_noise), x.shape).astype(np.float32)
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


def render_view(image: np.ndarray, hom: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """Warp a uint8 image by ``hom`` into a ``size`` (W, H) canvas (black outside).

    Where the warp shrinks the photo (local scale s < 1 at the photo centre) the photo is
    Gaussian pre-filtered with sigma = 0.5 * sqrt(1 / s^2 - 1) to limit aliasing.
    """
    h, w = image.shape
    jac = local_affine(hom, np.array([[(w - 1) / 2.0, (h - 1) / 2.0]]))[0]
    s = float(np.sqrt(abs(np.linalg.det(jac))))
    src = image
    if s < 1.0:
        src = cv2.GaussianBlur(image, (0, 0), 0.5 * np.sqrt(1.0 / (s * s) - 1.0))
    return cv2.warpPerspective(src, hom, (int(size[0]), int(size[1])), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def sift_keypoints(image: np.ndarray, max_keypoints: int = 2000, min_sigma: float = 1.6,
                   max_sigma: Optional[float] = None) -> np.ndarray:
    """SIFT keypoints of a uint8 grey image as ``N x 4`` float64 (x, y, sigma, ori).

    One keypoint per location (OpenCV repeats a location for each orientation peak; the strongest
    is kept), sigma in [min_sigma, max_sigma], sorted by decreasing response, at most
    ``max_keypoints``.
    """
    from ..features import keypoints_from_cv2

    kps = cv2.SIFT_create(nfeatures=max_keypoints * 2).detect(image, None)
    if not kps:
        return np.zeros((0, 4))
    xy, sig, ori, resp = keypoints_from_cv2(kps)
    arr = np.concatenate([xy, sig[:, None], ori[:, None]], 1).astype(np.float64)
    order = np.argsort(-resp, kind="stable")
    arr = arr[order]
    key = np.round(arr[:, :3] * 4).astype(np.int64)
    _, first = np.unique(key, axis=0, return_index=True)
    arr = arr[np.sort(first)]
    keep = arr[:, 2] >= min_sigma
    if max_sigma is not None:
        keep &= arr[:, 2] <= max_sigma
    return arr[keep][:max_keypoints]


def _inside(kp: np.ndarray, size: Tuple[int, int], margin: float) -> np.ndarray:
    """Rows whose +-margin*sigma square lies inside the image (finite rows only)."""
    w, h = size
    with np.errstate(invalid="ignore"):
        r = margin * kp[:, 2]
        return (np.isfinite(kp).all(1) & (kp[:, 0] - r >= 0) & (kp[:, 1] - r >= 0) &
                (kp[:, 0] + r <= w - 1) & (kp[:, 1] + r <= h - 1))


def random_negatives(rng: np.random.Generator, size: Tuple[int, int], count: int,
                     sigmas: np.ndarray, avoid_xy: np.ndarray, min_dist: float = 3.0,
                     margin: float = 6.0, tries: int = 8,
                     valid: Optional[np.ndarray] = None) -> np.ndarray:
    """Up to ``count`` random non-keypoint locations ``n x 4`` (x, y, sigma, 0).

    sigma is drawn from ``sigmas`` (the scales of real keypoints); a location is rejected if a
    point of ``avoid_xy`` lies closer than ``min_dist * sigma``, if its +-margin*sigma square
    leaves the image, or (with ``valid``, an ``H x W`` bool mask of pixels with content) if the
    centre or a corner of that square falls outside the mask.
    """
    if count <= 0 or len(sigmas) == 0:
        return np.zeros((0, 4))
    w, h = size
    m = count * tries
    sig = rng.choice(np.asarray(sigmas, np.float64), m)
    cand = np.stack([rng.uniform(0, w - 1, m), rng.uniform(0, h - 1, m), sig, np.zeros(m)], 1)
    ok = _inside(cand, size, margin)
    if len(avoid_xy):
        dist, _ = cKDTree(np.asarray(avoid_xy)[:, :2]).query(cand[:, :2])
        ok &= dist > min_dist * cand[:, 2]
    if valid is not None:
        r = margin * cand[:, 2]
        for dx, dy in ((0, 0), (-1, -1), (-1, 1), (1, -1), (1, 1)):
            xi = np.clip(np.round(cand[:, 0] + dx * r), 0, w - 1).astype(int)
            yi = np.clip(np.round(cand[:, 1] + dy * r), 0, h - 1).astype(int)
            ok &= valid[yi, xi]
    return cand[ok][:count]


def list_photos(folder: Union[str, Path]) -> list:
    """Image files under ``folder`` (recursive), sorted by relative path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no photo folder at {folder}")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS
                  and p.is_file())


def build_synthetic(photos: Union[str, Path], output: Union[str, Path], groups_per_photo: int = 1,
                    tracks_per_group: int = 64, views: Tuple[int, int] = (2, 4),
                    negatives_per_view: int = 16, test_photos: Sequence[str] = DEFAULT_TEST_PHOTOS,
                    val_fraction: float = 0.05, seed: int = 0, max_photos: Optional[int] = None,
                    min_sigma: float = 1.6, max_rotation: float = np.pi,
                    scale_range: Tuple[float, float] = (0.6, 1.6), perspective: float = 0.25,
                    neg_min_dist: float = 3.0, patch_size: int = PATCH_SIZE,
                    support: float = PATCH_SUPPORT, progress: bool = True) -> Path:
    """Build a synthetic patch file from a folder of photos; returns the path written.

    Args:
        photos: folder searched recursively for images (any volume: each photo gives
            ``groups_per_photo`` independent groups of views).
        output: target ``.h5`` (written atomically).
        groups_per_photo: independent sets of views per photo.
        tracks_per_group: tracks kept per group (fewer if the photo has fewer keypoints).
        views: (min, max) views per group; each track has 2..max views.
        negatives_per_view: random non-keypoint patches per view.
        test_photos: glob patterns (on the path relative to ``photos``) of held-out photos
            (split ``test``).
        val_fraction: fraction of the other tracks (and negatives) put in split ``val``.
        seed: everything is drawn from ``numpy.random.default_rng((seed, photo_index))``.
        max_photos: use only the first photos (sorted by path).
        min_sigma: smallest SIFT scale used as a track (source photo pixels).
        max_rotation, scale_range, perspective: homography ranges (see random_homography).
        neg_min_dist: non-keypoints stay this many sigmas away from keypoints.
        patch_size, support: patch geometry (see :mod:`lift.data.patches`).
        progress: show a tqdm bar.
    """
    from tqdm import tqdm

    photos = Path(photos)
    files = list_photos(photos)[:max_photos]
    if not files:
        raise FileNotFoundError(f"no image files under {photos}")
    vmin, vmax = int(views[0]), int(views[1])
    if not 2 <= vmin <= vmax:
        raise ValueError(f"views must satisfy 2 <= min <= max, got {views}")
    params = dict(groups_per_photo=groups_per_photo, tracks_per_group=tracks_per_group,
                  views=[vmin, vmax], negatives_per_view=negatives_per_view,
                  test_photos=list(test_photos), val_fraction=val_fraction, seed=seed,
                  max_photos=max_photos, min_sigma=min_sigma, max_rotation=max_rotation,
                  scale_range=list(scale_range), perspective=perspective,
                  neg_min_dist=neg_min_dist, num_photos=len(files))
    t0 = time.time()
    next_track = 0
    stats: Dict[str, int] = {"tracks": 0, "test_photos": 0}
    with PatchWriter(output, "synthetic", str(photos), params, patch_size, support) as wr:
        for pi, file in enumerate(tqdm(files, desc="synthetic", disable=not progress)):
            rel = file.relative_to(photos).as_posix()
            is_test = any(fnmatch.fnmatch(rel, pat) for pat in test_photos)
            stats["test_photos"] += int(is_test)
            rng = np.random.default_rng((seed, pi))
            image = load_image(file)
            size = (image.shape[1], image.shape[0])
            src_kp = sift_keypoints(image, max_keypoints=max(4 * tracks_per_group, 500),
                                    min_sigma=min_sigma, max_sigma=min(size) / 12.0)
            if len(src_kp) == 0:
                continue
            for g in range(groups_per_photo):
                nv = int(rng.integers(vmin, vmax + 1))
                homs = [random_homography(rng, size, max_rotation, scale_range,
                                          perspective=perspective) for _ in range(nv)]
                warped = np.stack([warp_keypoints(hm, src_kp) for hm in homs])  # V x K x 4
                vis = np.stack([_inside(wk, size, 6.0) & (wk[:, 2] >= 1.0) for wk in warped])
                cand = np.flatnonzero(vis.sum(0) >= 2)
                chosen = rng.permutation(cand)[:tracks_per_group]
                track_ids = next_track + np.arange(len(chosen))
                next_track += len(chosen)
                stats["tracks"] += len(chosen)
                if is_test:
                    tsplit = np.full(len(chosen), SPLITS.index("test"))
                else:
                    tsplit = np.where(rng.random(len(chosen)) < val_fraction,
                                      SPLITS.index("val"), SPLITS.index("train"))
                for v, hm in enumerate(homs):
                    view = photometric_change(render_view(image, hm, size), rng)
                    img_id = wr.add_image(f"{rel}#g{g}v{v}", size, source=rel, homography=hm)
                    sel = vis[v, chosen]
                    kp_pos = warped[v, chosen[sel]]
                    cover = render_view(np.full_like(image, 255), hm, size) > 128
                    neg = random_negatives(rng, size, negatives_per_view,
                                           kp_pos[:, 2] if len(kp_pos) else src_kp[:, 2],
                                           warped[v][np.isfinite(warped[v]).all(1)],
                                           neg_min_dist, valid=cover)
                    if is_test:
                        nsplit = np.full(len(neg), SPLITS.index("test"))
                    else:
                        nsplit = np.where(rng.random(len(neg)) < val_fraction,
                                          SPLITS.index("val"), SPLITS.index("train"))
                    kp_all = np.concatenate([kp_pos, neg])
                    if len(kp_all) == 0:
                        continue
                    wr.add_patches(
                        cut_patches(view, kp_all, patch_size, support),
                        np.concatenate([track_ids[sel], np.full(len(neg), -1)]),
                        np.full(len(kp_all), img_id),
                        kp_all,
                        np.concatenate([tsplit[sel], nsplit]),
                        np.concatenate([np.full(len(kp_pos), KIND_TRACK),
                                        np.full(len(neg), KIND_RANDOM)]))
        wr.params.update(build_seconds=round(time.time() - t0, 1), **stats)
    return Path(output)
