"""SfM patches from COLMAP reconstructions. Every pycolmap call of the library lives here.

Recipe (LIFT's, see ``../shared/reference/methods.md`` 1.9): SIFT keypoints that survive SfM
(they observe a 3-D point) are positives, with the 3-D point id as track id; SIFT keypoints that
did not survive (away from positives) and random locations (away from every keypoint) are
non-keypoint patches. Patches are cut from the images at the resolution SfM ran on, at most
``max_side`` pixels on the long side.

Two entry points:
    * from a folder of photos: downscale copies into ``work_dir/images``, then pycolmap feature
      extraction, exhaustive matching and incremental mapping (:func:`run_sfm`);
    * from an existing COLMAP model folder (``cameras``, ``images``, ``points3D``) and its
      photos; with its ``database.db`` the SIFT scale and orientation of every keypoint are read
      from it, otherwise they are recovered by running OpenCV SIFT and taking the detection
      nearest to each 2-D observation (within 1.5 px).

Coordinates: COLMAP's pixel centre is (0.5, 0.5); keypoints are converted to the library
convention (top-left pixel centre (0, 0)) with :meth:`lift.Features.from_colmap`.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import cv2
import numpy as np
from scipy.spatial import cKDTree

from ..features import Features
from ..image import IMAGE_EXTENSIONS, load_image
from .patches import PATCH_SIZE, PATCH_SUPPORT, cut_patches
from .schema import KIND_OTHER_KEYPOINT, KIND_RANDOM, KIND_TRACK, SPLITS
from .synthetic import _inside, random_negatives, sift_keypoints
from .writer import PatchWriter

__all__ = ["SfmImage", "prepare_images", "run_sfm", "read_sfm", "build_colmap"]

PathLike = Union[str, Path]


def _pycolmap():
    try:
        import pycolmap
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("the colmap builder needs pycolmap: pip install 'lift-features[sfm]'"
                          ) from exc
    return pycolmap


@dataclass
class SfmImage:
    """One registered image of a reconstruction, at the resolution SfM ran on.

    Attributes:
        name: image name in the model (relative path).
        path: file to read the pixels from.
        keypoints: ``K x 4`` float64 (x, y, sigma, ori) of all its SIFT keypoints (library
            convention: top-left pixel centre (0, 0), ori radians clockwise on screen).
        point3D_id: ``K`` int64, the 3-D point each keypoint observes, -1 if none.
        scale: the image used by SfM = the original file resized by this factor.
    """

    name: str
    path: Path
    keypoints: np.ndarray
    point3D_id: np.ndarray
    scale: float = 1.0


def prepare_images(image_dir: PathLike, out_dir: PathLike, max_side: int = 1600
                   ) -> Dict[str, float]:
    """Write grey copies of the photos of ``image_dir`` into ``out_dir``, at most ``max_side``
    pixels on the long side (``cv2.INTER_AREA``). Returns ``{name: scale}`` (scale <= 1).

    Existing copies of the right size are kept (re-runs are cheap).
    """
    image_dir, out_dir = Path(image_dir), Path(out_dir)
    files = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise FileNotFoundError(f"no images in {image_dir}")
    out_dir.mkdir(parents=True, exist_ok=True)
    scales = {}
    for p in files:
        img = load_image(p)
        h, w = img.shape
        s = min(1.0, max_side / max(h, w))
        size = (max(1, int(round(w * s))), max(1, int(round(h * s))))
        target = out_dir / p.name
        if target.exists():
            old = cv2.imread(str(target), cv2.IMREAD_GRAYSCALE)
            if old is not None and old.shape == (size[1], size[0]):
                scales[p.name] = s
                continue
        small = img if s == 1.0 else cv2.resize(img, size, interpolation=cv2.INTER_AREA)
        params = [cv2.IMWRITE_JPEG_QUALITY, 95] if p.suffix.lower() in (".jpg", ".jpeg") else []
        if not cv2.imwrite(str(target), small, params):
            raise OSError(f"cannot write {target}")
        scales[p.name] = s
    return scales


def run_sfm(image_dir: PathLike, work_dir: PathLike, num_threads: int = 2,
            camera_mode: str = "auto", max_num_features: int = 8192,
            verbose: bool = False) -> Tuple[Path, Path]:
    """Feature extraction, exhaustive matching and incremental mapping with pycolmap (CPU).

    Writes ``work_dir/database.db`` and ``work_dir/sparse/<k>``; returns (database path, folder
    of the reconstruction with the most registered images). An existing database and model in
    ``work_dir`` are reused.

    Raises:
        RuntimeError: mapping registered no model.
    """
    pycolmap = _pycolmap()
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    db, sparse = work_dir / "database.db", work_dir / "sparse"
    existing = sorted(sparse.glob("*/points3D.bin")) if sparse.exists() else []
    if db.exists() and existing:
        return db, _largest_model(pycolmap, [p.parent for p in existing])
    for stale in (db, sparse):
        if stale.is_dir():
            shutil.rmtree(stale)
        elif stale.exists():
            stale.unlink()
    if not verbose and hasattr(pycolmap, "logging"):
        pycolmap.logging.minloglevel = 2  # warnings and errors only
    mode = {"auto": pycolmap.CameraMode.AUTO, "single": pycolmap.CameraMode.SINGLE,
            "per_image": pycolmap.CameraMode.PER_IMAGE}[camera_mode]
    ext = pycolmap.FeatureExtractionOptions()
    ext.num_threads = num_threads
    ext.sift.max_num_features = max_num_features
    pycolmap.extract_features(db, image_dir, camera_mode=mode, extraction_options=ext,
                              device=pycolmap.Device.cpu)
    match = pycolmap.FeatureMatchingOptions()
    match.num_threads = num_threads
    pycolmap.match_exhaustive(db, matching_options=match, device=pycolmap.Device.cpu)
    opts = pycolmap.IncrementalPipelineOptions()
    opts.num_threads = num_threads
    sparse.mkdir(parents=True, exist_ok=True)
    recs = pycolmap.incremental_mapping(db, image_dir, sparse, options=opts)
    if not recs:
        raise RuntimeError(f"COLMAP registered no model from {image_dir} (too few matches?)")
    folders = [sparse / str(k) for k in recs]
    for k, rec in recs.items():
        (sparse / str(k)).mkdir(parents=True, exist_ok=True)
        rec.write(sparse / str(k))
    return db, _largest_model(pycolmap, folders)


def _largest_model(pycolmap, folders: List[Path]) -> Path:
    sizes = [(pycolmap.Reconstruction(f).num_reg_images(), f) for f in folders]
    return max(sizes, key=lambda t: t[0])[1]


def _nearest_sift(image: np.ndarray, xy: np.ndarray, max_dist: float = 1.5):
    """SIFT (sigma, ori) of the detection nearest to each point (NaN where none within
    ``max_dist``), plus all detections ``K x 4``."""
    det = sift_keypoints(image, max_keypoints=20000, min_sigma=0.0)
    out = np.full((len(xy), 2), np.nan)
    if len(det) and len(xy):
        dist, idx = cKDTree(det[:, :2]).query(xy)
        ok = dist <= max_dist
        out[ok] = det[idx[ok], 2:4]
    return out, det


def read_sfm(model_dir: PathLike, image_dir: PathLike, database: Optional[PathLike] = None
             ) -> List[SfmImage]:
    """Registered images of a COLMAP model with their keypoints and 3-D point ids.

    Args:
        model_dir: folder with ``cameras``, ``images``, ``points3D`` (.bin or .txt).
        image_dir: folder with the images, at the resolution of the model.
        database: the COLMAP database the model was built from (gives every SIFT keypoint with
            its scale and orientation). Without it, observations get SIFT scale/orientation from
            OpenCV SIFT re-detection (observations without a detection within 1.5 px are
            dropped) and the other SIFT detections are the non-keypoint candidates.
    """
    pycolmap = _pycolmap()
    rec = pycolmap.Reconstruction(str(model_dir))
    image_dir = Path(image_dir)
    invalid = np.uint64(pycolmap.INVALID_POINT3D_ID)
    db = pycolmap.Database.open(str(database)) if database is not None else None
    db_ids = {im.name: im.image_id for im in db.read_all_images()} if db is not None else {}
    known = np.array(sorted(rec.point3D_ids()), np.int64)
    out = []
    try:
        for image_id in sorted(rec.reg_image_ids()):
            im = rec.image(image_id)
            path = image_dir / im.name
            if not path.is_file():
                raise FileNotFoundError(f"image '{im.name}' of the model is not in {image_dir}")
            pts = im.points2D
            ids = np.array([p.point3D_id for p in pts], dtype=np.uint64)
            pid = np.where(ids == invalid, -1, ids.astype(np.int64))
            pid[(pid >= 0) & ~np.isin(pid, known)] = -1  # observations of deleted points
            if db is not None:
                if im.name not in db_ids:
                    raise ValueError(f"image '{im.name}' is not in the database {database}")
                raw = db.read_keypoints(db_ids[im.name])
                if len(raw) != len(pts):
                    raise ValueError(f"database {database} has {len(raw)} keypoints for "
                                     f"'{im.name}' but the model has {len(pts)} observations")
                f = Features.from_colmap(raw, None, (0, 0))
                kps = np.concatenate([f.keypoints, f.scales[:, None], f.oris[:, None]], 1)
            else:
                xy = np.array([p.xy for p in pts], np.float64).reshape(-1, 2) - 0.5
                keep = pid >= 0
                shape, det = _nearest_sift(load_image(path), xy[keep])
                kp_obs = np.concatenate([xy[keep], shape], 1)
                ok = np.isfinite(shape).all(1)
                kps = np.concatenate([kp_obs[ok], det])
                pid = np.concatenate([pid[keep][ok], np.full(len(det), -1)])
            out.append(SfmImage(im.name, path, kps.astype(np.float64), pid.astype(np.int64)))
    finally:
        if db is not None:
            db.close()
    return out


def _resize_keypoints(kps: np.ndarray, s: float) -> np.ndarray:
    out = kps.copy()
    out[:, :2] = (kps[:, :2] + 0.5) * s - 0.5
    out[:, 2] = kps[:, 2] * s
    return out


def build_colmap(output: PathLike, images: Optional[PathLike] = None,
                 model: Optional[PathLike] = None, database: Optional[PathLike] = None,
                 work_dir: Optional[PathLike] = None, max_side: int = 1600,
                 split: str = "auto", val_fraction: float = 0.1,
                 negatives_per_image: int = 300, random_fraction: float = 0.5,
                 min_sigma: float = 1.6, neg_min_dist: float = 3.0, num_threads: int = 2,
                 camera_mode: str = "auto", seed: int = 0, patch_size: int = PATCH_SIZE,
                 support: float = PATCH_SUPPORT, progress: bool = True) -> Path:
    """Build a patch file from COLMAP SfM; returns the path written.

    Args:
        output: target ``.h5`` (written atomically).
        images: folder of photos. Alone: SfM is run on downscaled copies in ``work_dir``.
            With ``model``: the photos of that model.
        model: existing COLMAP model folder (skips SfM); ``database`` is its database.db.
        work_dir: where downscaled copies, database and model go (default: next to output,
            ``<output stem>_colmap``); kept, so a re-run reuses them.
        max_side: long side of the images SfM runs on / patches are cut from.
        split: ``auto`` (tracks to train/val by 3-D point, val_fraction), or one of
            ``train``, ``val``, ``test`` for the whole scene (e.g. ``test`` for held-out scenes).
        negatives_per_image: non-keypoint patches per image; ``random_fraction`` of them at
            random locations, the rest SIFT keypoints that did not survive SfM.
        min_sigma: smallest keypoint scale used (pixels of the cut image).
        neg_min_dist: non-keypoints are at least ``neg_min_dist * sigma`` away from positives
            (random ones from every keypoint).
        num_threads: pycolmap threads.
        camera_mode: ``auto``, ``single`` or ``per_image`` (pycolmap camera grouping).
        seed: seed of the splits and negative sampling.
    """
    from tqdm import tqdm

    if split not in ("auto",) + SPLITS:
        raise ValueError(f"split must be 'auto' or one of {SPLITS}, got '{split}'")
    if images is None:
        raise ValueError("give the folder of photos (images=...), with or without model=...")
    images, output = Path(images), Path(output)
    t0 = time.time()
    file_scale: Dict[str, float] = {}
    if model is None:
        work_dir = Path(work_dir) if work_dir else output.with_name(output.stem + "_colmap")
        file_scale = prepare_images(images, work_dir / "images", max_side)
        database, model = run_sfm(work_dir / "images", work_dir, num_threads, camera_mode)
        image_dir = work_dir / "images"
    else:
        image_dir = images
    sfm = read_sfm(model, image_dir, database)
    if not sfm:
        raise RuntimeError(f"model {model} has no registered image")
    rng = np.random.default_rng(seed)
    all_tracks = np.unique(np.concatenate([s.point3D_id[s.point3D_id >= 0] for s in sfm]))
    if split == "auto":
        tsplit = np.where(rng.random(len(all_tracks)) < val_fraction, SPLITS.index("val"),
                          SPLITS.index("train"))
    else:
        tsplit = np.full(len(all_tracks), SPLITS.index(split))
    params = dict(images=str(images), model=str(model), database=str(database),
                  max_side=max_side, split=split, val_fraction=val_fraction,
                  negatives_per_image=negatives_per_image, random_fraction=random_fraction,
                  min_sigma=min_sigma, neg_min_dist=neg_min_dist, num_threads=num_threads,
                  camera_mode=camera_mode, seed=seed, num_images=len(sfm),
                  num_points3D=int(len(all_tracks)))
    with PatchWriter(output, "colmap", str(images), params, patch_size, support) as wr:
        for si in tqdm(sfm, desc="colmap patches", disable=not progress):
            img = load_image(si.path)
            kps, pid = si.keypoints, si.point3D_id
            s_cut = min(1.0, max_side / max(img.shape))
            if s_cut < 1.0:  # existing model at full resolution: cut from a smaller copy
                size = (int(round(img.shape[1] * s_cut)), int(round(img.shape[0] * s_cut)))
                img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
                kps = _resize_keypoints(kps, s_cut)
            size = (img.shape[1], img.shape[0])
            usable = _inside(kps, size, 6.0) & (kps[:, 2] >= min_sigma)
            is_pos = pid >= 0
            pos = np.flatnonzero(is_pos & usable)
            tree_pos = cKDTree(kps[is_pos, :2]) if is_pos.any() else None
            other = np.flatnonzero(~is_pos & usable)
            if tree_pos is not None and len(other):
                d, _ = tree_pos.query(kps[other, :2])
                other = other[d > neg_min_dist * kps[other, 2]]
            n_rand = int(round(negatives_per_image * random_fraction))
            other = rng.permutation(other)[:negatives_per_image - n_rand]
            rand = random_negatives(rng, size, n_rand, kps[pos, 2] if len(pos) else kps[:, 2],
                                    kps[:, :2], neg_min_dist)
            kp_all = np.concatenate([kps[pos], kps[other], rand])
            if len(kp_all) == 0:
                continue
            n_neg = len(other) + len(rand)
            track = np.concatenate([pid[pos], np.full(n_neg, -1)])
            if split == "auto":
                nsplit = np.where(rng.random(n_neg) < val_fraction, SPLITS.index("val"),
                                  SPLITS.index("train"))
            else:
                nsplit = np.full(n_neg, SPLITS.index(split))
            psplit = tsplit[np.searchsorted(all_tracks, pid[pos])]
            total_scale = file_scale.get(si.name, 1.0) * s_cut
            img_id = wr.add_image(si.name, size, source=si.name, scale=total_scale)
            wr.add_patches(cut_patches(img, kp_all, patch_size, support), track,
                           np.full(len(kp_all), img_id), kp_all,
                           np.concatenate([psplit, nsplit]),
                           np.concatenate([np.full(len(pos), KIND_TRACK),
                                           np.full(len(other), KIND_OTHER_KEYPOINT),
                                           np.full(len(rand), KIND_RANDOM)]))
        wr.params["build_seconds"] = round(time.time() - t0, 1)
    return output
