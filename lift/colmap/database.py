"""Writing and reading COLMAP databases through pycolmap's ``Database`` API.

Every ``pycolmap.Database`` call of lift lives in this module (the rest of pycolmap is used in
:mod:`lift.colmap.compat`), so that binding changes between pycolmap releases are fixed in one
place. Capabilities are detected, not version strings parsed: counters are methods in 4.x and
properties in 3.x; rigs and frames exist from 3.12 on and are then required by the mapper.

What is written (hloc's recipe, with our own features):

- **cameras**: one shared camera or one per image, a COLMAP model name (``SIMPLE_RADIAL``,
  ``PINHOLE``, ``OPENCV``, ...) with either user-given parameters (``prior_focal_length`` set)
  or COLMAP's defaults from the image size (focal 1.2 x max(W, H), principal point at the centre,
  zero distortion).
- **rigs and frames** (pycolmap >= 3.12): one trivial rig per camera (the camera is its reference
  sensor) and one frame per image, as ``pycolmap.import_images`` creates them.
- **images**: names relative to the image root, ``/`` separators.
- **keypoints**: ``Features.to_colmap()`` rows ``(x + 0.5, y + 0.5, scale, orientation)``:
  COLMAP's pixel centres are at +0.5; ``scale`` is sigma in pixels (COLMAP's SIFT also stores
  its scale in this slot); ``orientation`` is radians, clockwise on screen (y down), the sense of
  COLMAP's SIFT. Descriptors are not written (they stay in ``features.h5``, as in hloc).
- **matches**: ``K x 2`` uint32 ``(idx0, idx1)`` per image pair.
- **two-view geometries**: the inlier matches of a geometric verification, with its
  configuration (``UNCALIBRATED`` + F for our fundamental RANSAC).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..features import Features

__all__ = ["CameraSpec", "DatabaseContents", "open_database", "add_cameras_and_images",
           "write_keypoints", "write_matches", "write_two_view_geometry", "read_database",
           "database_counts", "require_pycolmap"]

PathLike = Union[str, Path]


def require_pycolmap():
    """Import pycolmap or raise an ImportError that says how to install it."""
    try:
        import pycolmap
    except ImportError as err:  # pragma: no cover - pycolmap is installed in CI
        raise ImportError("COLMAP export needs pycolmap: pip install 'lift-features[sfm]' "
                          "(or pip install pycolmap)") from err
    return pycolmap


@dataclass
class CameraSpec:
    """How cameras are created.

    Attributes:
        model: COLMAP camera model name (``SIMPLE_PINHOLE``, ``PINHOLE``, ``SIMPLE_RADIAL``,
            ``RADIAL``, ``OPENCV``, ...).
        params: the model's parameters in COLMAP's order (e.g. ``f, cx, cy, k`` for
            ``SIMPLE_RADIAL``, ``fx, fy, cx, cy`` for ``PINHOLE``), in pixels with COLMAP's
            pixel-centre convention (the image centre is ``(W / 2, H / 2)``); ``None`` estimates
            them from the image size as COLMAP does.
        mode: ``"single"`` one camera for all images; ``"per_image"`` one camera per image;
            ``"auto"``: one shared camera when params are given and all images have the same
            size, else one per image.
    """

    model: str = "SIMPLE_RADIAL"
    params: Optional[Sequence[float]] = None
    mode: str = "auto"

    def __post_init__(self):
        if self.mode not in ("auto", "single", "per_image"):
            raise ValueError(f"camera mode must be auto, single or per_image, got {self.mode!r}")
        self.model = self.model.upper()
        if self.params is not None:
            self.params = [float(p) for p in self.params]
            if not np.isfinite(self.params).all():
                raise ValueError(f"camera params must be finite numbers, got {self.params}")

    def shared(self, sizes: Sequence[Tuple[int, int]]) -> bool:
        if self.mode == "single":
            return True
        if self.mode == "per_image":
            return False
        return self.params is not None and len(set(map(tuple, sizes))) <= 1

    def make_camera(self, width: int, height: int):
        """A ``pycolmap.Camera`` for an image of ``width x height`` pixels."""
        pycolmap = require_pycolmap()
        if self.model not in pycolmap.CameraModelId.__members__ or self.model == "INVALID":
            valid = [m for m in pycolmap.CameraModelId.__members__ if m != "INVALID"]
            raise ValueError(f"unknown COLMAP camera model {self.model!r}; choose one of {valid}")
        cam = _create_camera(pycolmap, self.model, 1.2 * max(width, height), width, height)
        if self.params is not None:
            n = len(cam.params)
            if len(self.params) != n:
                raise ValueError(f"camera model {self.model} has {n} parameters "
                                 f"({cam.params_info}), got {len(self.params)}")
            cam.params = np.asarray(self.params, dtype=np.float64)
            cam.has_prior_focal_length = True
        return cam


def _create_camera(pycolmap, model: str, focal: float, width: int, height: int):
    if hasattr(pycolmap.Camera, "create_from_model_name"):  # pycolmap >= 3.12
        return pycolmap.Camera.create_from_model_name(0, model, focal, width, height)
    return pycolmap.Camera.create(0, model, focal, width, height)


def _count(db, name: str) -> int:
    """Database counter: a method in pycolmap 4.x, a property in 3.x."""
    value = getattr(db, name)
    return int(value() if callable(value) else value)


@contextmanager
def open_database(path: PathLike) -> Iterator:
    """Open (creating if needed) a COLMAP database; closes it on exit. Writes inside the block
    are batched in one transaction where pycolmap offers ``DatabaseTransaction``."""
    pycolmap = require_pycolmap()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    db = pycolmap.Database.open(str(path)) if hasattr(pycolmap.Database, "open") \
        else pycolmap.Database(str(path))
    try:
        if hasattr(pycolmap, "DatabaseTransaction"):
            with pycolmap.DatabaseTransaction(db):
                yield db
        else:  # pragma: no cover - older bindings
            yield db
    finally:
        db.close()


def add_cameras_and_images(db, names: Sequence[str], sizes: Sequence[Tuple[int, int]],
                           camera: CameraSpec = CameraSpec()) -> Dict[str, int]:
    """Write cameras, trivial rigs and frames, and images. Returns ``{name: image_id}``.

    ``sizes`` are the (W, H) of the images, in the order of ``names``.
    """
    pycolmap = require_pycolmap()
    if len(names) != len(sizes):
        raise ValueError(f"{len(names)} names for {len(sizes)} sizes")
    has_rigs = hasattr(db, "write_rig") and hasattr(pycolmap, "Rig")
    shared = camera.shared(sizes)
    if shared and len(set(map(tuple, sizes))) > 1:
        raise ValueError("one shared camera needs images of one size; got sizes "
                         f"{sorted(set(map(tuple, sizes)))}")
    shared_id: Optional[int] = None
    rig_ids: Dict[int, int] = {}
    ids = {}
    for name, (w, h) in zip(names, sizes):
        if shared and shared_id is not None:
            cam_id = shared_id
        else:
            cam_id = shared_id = db.write_camera(camera.make_camera(int(w), int(h)))
            if has_rigs:
                rig = pycolmap.Rig()
                rig.add_ref_sensor(db.read_camera(cam_id).sensor_id)
                rig_ids[cam_id] = db.write_rig(rig)
        image_id = db.write_image(pycolmap.Image(name=name, camera_id=cam_id))
        if has_rigs:
            frame = pycolmap.Frame()
            frame.rig_id = rig_ids[cam_id]
            frame.add_data_id(db.read_image(image_id).data_id)
            db.write_frame(frame)
        ids[name] = image_id
    return ids


def write_keypoints(db, image_id: int, features: Features) -> None:
    """Write one image's keypoints as ``N x 4`` rows (x + 0.5, y + 0.5, sigma, ori)."""
    db.write_keypoints(image_id, features.to_colmap())


def update_keypoint_positions(db, image_id: int, keypoints: np.ndarray) -> None:
    """Replace the positions of an image's stored keypoints by ``N x 2`` (x, y) in lift's
    convention (top-left pixel centre (0, 0); stored + 0.5), keeping their other columns
    (scale, orientation or affine shape) and their order, so that stored matches stay valid."""
    old = np.array(db.read_keypoints(image_id), dtype=np.float32)
    xy = np.asarray(keypoints, dtype=np.float64).reshape(-1, 2)
    if len(old) != len(xy):
        raise ValueError(f"image {image_id} has {len(old)} keypoints in the database, got {len(xy)} positions")
    old[:, :2] = xy + 0.5
    db.update_keypoints(image_id, np.ascontiguousarray(old))


def _as_matches(matches: np.ndarray) -> np.ndarray:
    m = np.asarray(matches)
    if m.ndim != 2 or m.shape[1] != 2:
        raise ValueError(f"matches must be K x 2 index pairs, got shape {m.shape}")
    if m.size and m.min() < 0:
        raise ValueError("matches contain negative indices")
    return np.ascontiguousarray(m, dtype=np.uint32)


def write_matches(db, image_id0: int, image_id1: int, matches: np.ndarray) -> None:
    """Write ``K x 2`` index pairs ``(keypoint in image 0, keypoint in image 1)``."""
    db.write_matches(image_id0, image_id1, _as_matches(matches))


def write_two_view_geometry(db, image_id0: int, image_id1: int, inlier_matches: np.ndarray,
                            F: Optional[np.ndarray] = None, config: str = "UNCALIBRATED") -> None:
    """Write verified inlier matches (``K x 2``) of a pair, with their fundamental matrix ``F``
    (maps image-0 points to image-1 epipolar lines, COLMAP pixel convention) when given.
    ``config``: a ``pycolmap.TwoViewGeometryConfiguration`` name; pairs with no inliers are
    written as ``DEGENERATE``."""
    pycolmap = require_pycolmap()
    inliers = _as_matches(inlier_matches)
    geometry = pycolmap.TwoViewGeometry()
    geometry.inlier_matches = inliers
    cfg = config if len(inliers) else "DEGENERATE"
    geometry.config = getattr(pycolmap.TwoViewGeometryConfiguration, cfg)
    if F is not None and len(inliers) and np.isfinite(F).all():
        geometry.F = np.asarray(F, dtype=np.float64)
    db.write_two_view_geometry(image_id0, image_id1, geometry)


def database_counts(path: PathLike) -> Dict[str, int]:
    """Row counts of a database: cameras, images, frames, rigs, keypoints, matched and
    verified pairs (frames/rigs are 0 with bindings that have none)."""
    names = {"cameras": "num_cameras", "images": "num_images", "frames": "num_frames",
             "rigs": "num_rigs", "keypoints": "num_keypoints",
             "matched_pairs": "num_matched_image_pairs", "verified_pairs": "num_verified_image_pairs"}
    with open_database(path) as db:
        return {k: _count(db, v) if hasattr(db, v) else 0 for k, v in names.items()}


@dataclass
class DatabaseContents:
    """What :func:`read_database` reads back.

    Attributes:
        cameras: ``{camera_id: (model name, width, height, params array)}``.
        images: ``{name: (image_id, camera_id)}``.
        keypoints: ``{name: N x 2|4|6 float32}`` in COLMAP's convention (see the module doc).
        matches: ``{(name0, name1): K x 2 uint32}`` with name0's image id < name1's.
        two_view: ``{(name0, name1): (inliers K x 2 uint32, configuration name)}``.
        frames: number of frames.
    """

    cameras: Dict[int, Tuple[str, int, int, np.ndarray]] = field(default_factory=dict)
    images: Dict[str, Tuple[int, int]] = field(default_factory=dict)
    keypoints: Dict[str, np.ndarray] = field(default_factory=dict)
    matches: Dict[Tuple[str, str], np.ndarray] = field(default_factory=dict)
    two_view: Dict[Tuple[str, str], Tuple[np.ndarray, str]] = field(default_factory=dict)
    frames: int = 0

    def features(self, name: str) -> Features:
        """An image's keypoints as :class:`lift.Features` (back in lift's pixel convention)."""
        _, cam_id = self.images[name]
        _, w, h, _ = self.cameras[cam_id]
        return Features.from_colmap(self.keypoints[name], None, (w, h))


def read_database(path: PathLike) -> DatabaseContents:
    """Read a COLMAP database back (cameras, images, keypoints, matches, two-view geometries)."""
    pycolmap = require_pycolmap()
    if not Path(path).exists():
        raise FileNotFoundError(f"no COLMAP database at {path}")
    out = DatabaseContents()
    with open_database(path) as db:
        for cam in db.read_all_cameras():
            out.cameras[cam.camera_id] = (cam.model_name, cam.width, cam.height, np.array(cam.params))
        id_to_name = {}
        for im in db.read_all_images():
            out.images[im.name] = (im.image_id, im.camera_id)
            id_to_name[im.image_id] = im.name
            if db.exists_keypoints(im.image_id):
                out.keypoints[im.name] = np.asarray(db.read_keypoints(im.image_id))
        pair_ids, matches = db.read_all_matches()
        matched_ids = []
        for pid, m in zip(pair_ids, matches):
            i0, i1 = pycolmap.pair_id_to_image_pair(pid)
            matched_ids.append((i0, i1))
            out.matches[(id_to_name[i0], id_to_name[i1])] = np.asarray(m)
        pair_ids, geoms = db.read_two_view_geometries()  # the pairs with inliers
        geoms = dict(zip(pair_ids, geoms))
        for i0, i1 in [tuple(k) for k in matched_ids]:  # plus degenerate matched pairs
            pid = pycolmap.image_pair_to_pair_id(i0, i1)
            if pid not in geoms and db.exists_two_view_geometry(i0, i1):
                geoms[pid] = db.read_two_view_geometry(i0, i1)
        for pid, g in geoms.items():
            i0, i1 = pycolmap.pair_id_to_image_pair(pid)
            out.two_view[(id_to_name[i0], id_to_name[i1])] = (np.asarray(g.inlier_matches),
                                                              _config_name(pycolmap, g.config))
        out.frames = _count(db, "num_frames") if hasattr(db, "num_frames") else 0
    return out


def _config_name(pycolmap, config) -> str:
    for name, value in pycolmap.TwoViewGeometryConfiguration.__members__.items():
        if int(value) == int(config):
            return name
    return str(config)
