"""The pycolmap calls of lift other than the database ones (:mod:`lift.colmap.database`):
geometric verification by COLMAP, incremental mapping, reading/writing models, model
statistics, and COLMAP's own SIFT pipeline (the benchmark's reference).

Capabilities are detected (``hasattr``), not version strings parsed.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Union

import numpy as np

from .database import require_pycolmap

__all__ = ["ModelStats", "quiet_colmap", "verify_matches_colmap", "incremental_mapping",
           "write_model", "read_model", "model_stats", "camera_poses", "colmap_sift_database"]

PathLike = Union[str, Path]


@contextmanager
def quiet_colmap(verbose: bool = False) -> Iterator[None]:
    """Silence COLMAP's glog output below ERROR inside the block (unless ``verbose``)."""
    pycolmap = require_pycolmap()
    log = getattr(pycolmap, "logging", None)
    if verbose or log is None or not hasattr(log, "minloglevel"):
        yield
        return
    old = log.minloglevel
    log.minloglevel = 2
    try:
        yield
    finally:
        log.minloglevel = old


def verify_matches_colmap(database: PathLike, pairs_path: PathLike, max_error: float = 4.0,
                          min_num_inliers: int = 15, max_num_trials: int = 20000,
                          min_inlier_ratio: float = 0.1) -> None:
    """COLMAP's geometric verification (F/E/H with model selection) of the matches of the pairs
    listed in ``pairs_path`` (hloc pairs format), written as two-view geometries."""
    pycolmap = require_pycolmap()
    options = pycolmap.TwoViewGeometryOptions()
    options.min_num_inliers = int(min_num_inliers)
    options.ransac.max_error = float(max_error)
    options.ransac.max_num_trials = int(max_num_trials)
    options.ransac.min_inlier_ratio = float(min_inlier_ratio)
    with quiet_colmap():
        pycolmap.verify_matches(str(database), str(pairs_path), options=options)


def incremental_mapping(database: PathLike, image_dir: PathLike, work_dir: PathLike,
                        fix_intrinsics: bool = False, min_num_matches: int = 15,
                        num_threads: int = -1, seed: Optional[int] = 0,
                        verbose: bool = False) -> List:
    """Run COLMAP's incremental mapper. Returns the reconstructions (``pycolmap.Reconstruction``)
    sorted by number of registered images, largest first (empty list when nothing reconstructs).

    ``fix_intrinsics`` keeps the database cameras constant (known calibration).
    """
    pycolmap = require_pycolmap()
    options = pycolmap.IncrementalPipelineOptions()
    options.min_num_matches = int(min_num_matches)
    options.num_threads = int(num_threads)
    options.extract_colors = True
    if seed is not None and hasattr(options, "random_seed"):
        options.random_seed = int(seed)
        options.mapper.random_seed = int(seed)
        options.triangulation.random_seed = int(seed)
    if fix_intrinsics:
        options.ba_refine_focal_length = False
        options.ba_refine_principal_point = False
        options.ba_refine_extra_params = False
        options.mapper.abs_pose_refine_focal_length = False
        options.mapper.abs_pose_refine_extra_params = False
    Path(work_dir).mkdir(parents=True, exist_ok=True)
    with quiet_colmap(verbose):
        models = pycolmap.incremental_mapping(str(database), str(image_dir), str(work_dir),
                                              options=options)
    models = list(models.values()) if isinstance(models, dict) else list(models)
    return sorted(models, key=lambda r: r.num_reg_images(), reverse=True)


def write_model(reconstruction, path: PathLike) -> Path:
    """Write a reconstruction in COLMAP's binary format (cameras.bin, images.bin, ...)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if hasattr(reconstruction, "write_binary"):
        reconstruction.write_binary(str(path))
    else:  # pragma: no cover
        reconstruction.write(str(path))
    return path


def read_model(path: PathLike):
    """Read a COLMAP model folder (binary or text) into a ``pycolmap.Reconstruction``."""
    pycolmap = require_pycolmap()
    if not Path(path).is_dir():
        raise FileNotFoundError(f"no COLMAP model folder at {path}")
    return pycolmap.Reconstruction(str(path))


@dataclass
class ModelStats:
    """Summary of a reconstruction: registered images (of ``num_images`` in the database),
    3-D points, mean track length (observations per point), mean reprojection error (px),
    observations."""

    registered: int
    num_images: int
    points3d: int
    track_length: float
    reprojection_error: float
    observations: int

    def __str__(self) -> str:
        return (f"{self.registered}/{self.num_images} images registered, {self.points3d} points, "
                f"track length {self.track_length:.2f}, reprojection error "
                f"{self.reprojection_error:.3f} px")


def model_stats(reconstruction, num_images: Optional[int] = None) -> ModelStats:
    """:class:`ModelStats` of a ``pycolmap.Reconstruction``."""
    n = reconstruction.num_points3D()
    return ModelStats(
        registered=int(reconstruction.num_reg_images()),
        num_images=int(num_images if num_images is not None else reconstruction.num_images()),
        points3d=int(n),
        track_length=float(reconstruction.compute_mean_track_length()) if n else 0.0,
        reprojection_error=float(reconstruction.compute_mean_reprojection_error()) if n else float("nan"),
        observations=int(reconstruction.compute_num_observations()))


def camera_poses(reconstruction) -> Dict[str, Dict[str, np.ndarray]]:
    """Registered cameras as ``{name: {"R": 3 x 3 world-to-camera rotation, "t": 3,
    "center": 3 camera centre in world coordinates, "K": 3 x 3}}`` (``x ~ K (R X + t)``)."""
    out = {}
    for image_id in reconstruction.reg_image_ids():
        im = reconstruction.image(image_id)
        pose = im.cam_from_world() if callable(im.cam_from_world) else im.cam_from_world
        R = np.asarray(pose.rotation.matrix())
        t = np.asarray(pose.translation)
        out[im.name] = {"R": R, "t": t, "center": -R.T @ t,
                        "K": np.asarray(reconstruction.camera(im.camera_id).calibration_matrix())}
    return out


def colmap_sift_database(database: PathLike, image_dir: PathLike, image_names: Sequence[str],
                         max_num_features: int = 2048, max_image_size: int = -1,
                         camera_model: str = "SIMPLE_RADIAL",
                         camera_params: Optional[Sequence[float]] = None,
                         single_camera: bool = False, num_threads: int = -1) -> Path:
    """COLMAP's own pipeline up to verification: SIFT extraction (``max_num_features``
    keypoints, images downscaled to ``max_image_size``) and exhaustive matching with COLMAP's
    verification, written to ``database`` (the benchmark's reference)."""
    pycolmap = require_pycolmap()
    database = Path(database)
    if database.exists():
        database.unlink()
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = camera_model
    if camera_params is not None:
        reader.camera_params = ",".join(str(float(p)) for p in camera_params)
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.max_image_size = int(max_image_size)
    extraction.num_threads = int(num_threads)
    extraction.sift.max_num_features = int(max_num_features)
    mode = pycolmap.CameraMode.SINGLE if single_camera else pycolmap.CameraMode.PER_IMAGE
    with quiet_colmap():
        pycolmap.extract_features(str(database), str(image_dir), image_names=list(image_names),
                                  camera_mode=mode, reader_options=reader,
                                  extraction_options=extraction, device=pycolmap.Device.cpu)
        matching = pycolmap.FeatureMatchingOptions()
        matching.num_threads = int(num_threads)
        pycolmap.match_exhaustive(str(database), matching_options=matching,
                                  device=pycolmap.Device.cpu)
    return database


def num_threads_default() -> int:
    """Threads for COLMAP calls: ``OMP_NUM_THREADS`` when set, else -1 (all cores)."""
    return int(os.environ.get("OMP_NUM_THREADS", -1))
