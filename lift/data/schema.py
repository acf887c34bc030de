"""The versioned SfM patch HDF5 schema (``lift-sfm-patches``, version 1) and its validation.

One file holds N patches cut from M source images. Layout (documented in ``data/README.md``):

    /patches            uint8   N x S x S   upright patches, +-support*sigma around the keypoint
    /track_id           int64   N           track / 3-D point id, -1 for non-keypoint patches
    /image_id           int32   N           row of /images/* the patch was cut from
    /keypoints          float32 N x 4       (x, y, sigma, ori) in pixels of that image
    /split              uint8   N           0 train, 1 val, 2 test (assigned by track)
    /kind               uint8   N           0 track keypoint, 1 other (non-track) keypoint,
                                            2 random location
    /images/name        str     M           unique name of the image (view) patches come from
    /images/source      str     M           the file the image was made from (relative path)
    /images/size        int32   M x 2       (W, H) of the image the keypoints refer to
    /images/scale       float32 M           that image = file resized by this factor
    /images/homography  float64 M x 3 x 3   optional: source-file pixels -> image pixels
    /pairs/index        int64   P x 2       optional: patch row pairs (Brown m50 lists)
    /pairs/match        uint8   P           optional: 1 same 3-D point, 0 different

Root attributes: ``schema`` ("lift-sfm-patches"), ``schema_version`` (1), ``patch_size`` (S),
``support_sigma`` (patch half-width in sigma), ``builder``, ``source``, ``created`` (ISO 8601
UTC), ``params`` (JSON), ``library_version``, ``num_patches``, ``split_names``, ``kind_names``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Union

import numpy as np

__all__ = [
    "SCHEMA_NAME", "SCHEMA_VERSION", "SPLITS", "KINDS", "KIND_TRACK", "KIND_OTHER_KEYPOINT",
    "KIND_RANDOM", "SchemaError", "PatchFileInfo", "validate_patch_file", "open_patch_file",
    "split_codes",
]

SCHEMA_NAME = "lift-sfm-patches"
SCHEMA_VERSION = 1
#: Split names, indexed by the /split code.
SPLITS = ("train", "val", "test")
#: Patch kinds, indexed by the /kind code.
KINDS = ("track", "other_keypoint", "random")
KIND_TRACK, KIND_OTHER_KEYPOINT, KIND_RANDOM = 0, 1, 2

REQUIRED_ATTRS = ("schema", "schema_version", "patch_size", "support_sigma", "builder", "source",
                  "created", "params", "library_version")


class SchemaError(ValueError):
    """A file does not follow the lift SfM patch schema (or cannot be read at all)."""


@dataclass(frozen=True)
class PatchFileInfo:
    """Summary of a validated patch file."""

    path: Path
    num_patches: int
    num_images: int
    patch_size: int
    support_sigma: float
    num_tracks: int
    split_counts: Dict[str, int]
    kind_counts: Dict[str, int]
    attrs: Dict[str, object]


def split_codes(split) -> np.ndarray:
    """Turn ``"train"``, ``["train", "val"]`` or ``None`` (all) into an array of split codes."""
    if split is None:
        return np.arange(len(SPLITS), dtype=np.uint8)
    names = [split] if isinstance(split, str) else list(split)
    bad = [s for s in names if s not in SPLITS]
    if bad:
        raise ValueError(f"unknown split(s) {bad}; expected some of {SPLITS}")
    return np.array([SPLITS.index(s) for s in names], dtype=np.uint8)


def _expect(cond: bool, path, message: str):
    if not cond:
        raise SchemaError(f"{path}: {message}")


def _check_dataset(f, name: str, dtype, shape_tail, n, path):
    _expect(name in f, path, f"missing dataset '/{name}'")
    ds = f[name]
    _expect(hasattr(ds, "dtype"), path, f"'/{name}' is a group, expected a dataset")
    if dtype is str:
        _expect(ds.dtype.kind in ("O", "S", "U"), path,
                f"'/{name}' must hold strings, has dtype {ds.dtype}")
    else:
        _expect(ds.dtype == np.dtype(dtype), path,
                f"'/{name}' must have dtype {np.dtype(dtype)}, has {ds.dtype}")
    want = (n,) + tuple(shape_tail)
    _expect(ds.shape == want, path, f"'/{name}' must have shape {want}, has {ds.shape}")
    return ds


def _open_h5(path: Path, mode: str = "r", **kwargs):
    import h5py

    if not path.exists():
        raise FileNotFoundError(f"no patch file at {path}")
    try:
        return h5py.File(path, mode, **kwargs)
    except OSError as exc:
        raise SchemaError(f"{path}: cannot be opened as HDF5 (corrupt, truncated or not an "
                          f"HDF5 file): {exc}") from exc


def validate_patch_file(file, check_values: bool = True) -> PatchFileInfo:
    """Check that a file follows the schema; return its summary.

    Args:
        file: path or an open ``h5py.File``.
        check_values: also check the values of the small per-patch arrays (ids in range, finite
            keypoints, sigma > 0, ``kind`` consistent with ``track_id``, every track in one
            split). Patch pixels are never read.

    Raises:
        FileNotFoundError: no file at the path.
        SchemaError: not HDF5 / corrupt, wrong schema name or version, missing attributes or
            datasets, wrong dtypes or shapes, inconsistent values. The message names the problem.
    """
    if isinstance(file, (str, Path)):
        path = Path(file)
        with _open_h5(path) as f:
            return validate_patch_file(f, check_values)
    f = file
    path = Path(f.filename)
    try:
        attrs = {k: f.attrs[k] for k in f.attrs.keys()}
    except Exception as exc:  # h5py raises various errors on damaged metadata
        raise SchemaError(f"{path}: cannot read root attributes: {exc}") from exc
    _expect("schema" in attrs, path, f"not a {SCHEMA_NAME} file (no 'schema' attribute)")
    name = attrs["schema"].decode() if isinstance(attrs["schema"], bytes) else str(attrs["schema"])
    _expect(name == SCHEMA_NAME, path, f"schema is '{name}', expected '{SCHEMA_NAME}'")
    version = int(attrs.get("schema_version", -1))
    _expect(version == SCHEMA_VERSION, path,
            f"schema version {version} is not supported (this library reads version "
            f"{SCHEMA_VERSION}); rebuild the file with lift-build-patches")
    missing = [a for a in REQUIRED_ATTRS if a not in attrs]
    _expect(not missing, path, f"missing root attribute(s) {missing}")
    s = int(attrs["patch_size"])
    _expect(s > 0, path, f"patch_size must be positive, is {s}")
    support = float(attrs["support_sigma"])
    _expect(support > 0, path, f"support_sigma must be positive, is {support}")
    try:
        json.loads(attrs["params"])
    except (TypeError, ValueError) as exc:
        raise SchemaError(f"{path}: attribute 'params' is not JSON: {exc}") from exc

    _expect("patches" in f, path, "missing dataset '/patches'")
    n = f["patches"].shape[0] if hasattr(f["patches"], "shape") else -1
    patches = _check_dataset(f, "patches", np.uint8, (s, s), n, path)
    track = _check_dataset(f, "track_id", np.int64, (), n, path)
    image = _check_dataset(f, "image_id", np.int32, (), n, path)
    kps = _check_dataset(f, "keypoints", np.float32, (4,), n, path)
    split = _check_dataset(f, "split", np.uint8, (), n, path)
    kind = _check_dataset(f, "kind", np.uint8, (), n, path)
    _expect("images" in f and not hasattr(f["images"], "dtype"), path, "missing group '/images'")
    _expect("images/name" in f, path, "missing dataset '/images/name'")
    m = f["images/name"].shape[0]
    _check_dataset(f, "images/name", str, (), m, path)
    _check_dataset(f, "images/source", str, (), m, path)
    _check_dataset(f, "images/size", np.int32, (2,), m, path)
    _check_dataset(f, "images/scale", np.float32, (), m, path)
    if "images/homography" in f:
        _check_dataset(f, "images/homography", np.float64, (3, 3), m, path)
    if "pairs" in f:
        _expect("pairs/index" in f, path, "group '/pairs' needs dataset '/pairs/index'")
        p = f["pairs/index"].shape[0]
        _check_dataset(f, "pairs/index", np.int64, (2,), p, path)
        _check_dataset(f, "pairs/match", np.uint8, (), p, path)
    del patches

    track_v, split_v, kind_v = track[...], split[...], kind[...]
    if check_values and n:
        image_v, kps_v = image[...], kps[...]
        _expect(track_v.min() >= -1, path, "track_id values must be >= -1")
        _expect(image_v.min() >= 0 and image_v.max() < m, path,
                f"image_id values must index /images (0..{m - 1})")
        _expect(np.isfinite(kps_v).all(), path, "keypoints contain NaN or infinite values")
        _expect((kps_v[:, 2] > 0).all(), path, "keypoint sigma (column 2) must be > 0")
        _expect(split_v.max() < len(SPLITS), path, f"split codes must be < {len(SPLITS)}")
        _expect(kind_v.max() < len(KINDS), path, f"kind codes must be < {len(KINDS)}")
        _expect(np.array_equal(kind_v == KIND_TRACK, track_v >= 0), path,
                "kind must be 0 exactly for patches with track_id >= 0")
        pos = track_v >= 0
        if pos.any():
            t, sp = track_v[pos], split_v[pos]
            order = np.argsort(t, kind="stable")
            t, sp = t[order], sp[order]
            same = t[1:] == t[:-1]
            _expect(not np.any(same & (sp[1:] != sp[:-1])), path,
                    "a track appears in more than one split (splits must be by track)")
        if "pairs" in f and f["pairs/index"].shape[0]:
            pi = f["pairs/index"][...]
            _expect(pi.min() >= 0 and pi.max() < n, path, "pairs/index must index /patches")
    tracks = np.unique(track_v[track_v >= 0]) if n else np.zeros(0)
    return PatchFileInfo(
        path=path, num_patches=int(n), num_images=int(m), patch_size=s, support_sigma=support,
        num_tracks=int(len(tracks)),
        split_counts={nm: int((split_v == i).sum()) for i, nm in enumerate(SPLITS)},
        kind_counts={nm: int((kind_v == i).sum()) for i, nm in enumerate(KINDS)},
        attrs=attrs)


def open_patch_file(path: Union[str, Path], check_values: bool = False, **h5_kwargs):
    """Open a patch file read-only after validating its schema; returns an ``h5py.File``.

    ``h5_kwargs`` go to ``h5py.File`` (e.g. ``rdcc_nbytes`` for the chunk cache).
    Raises ``FileNotFoundError`` or :class:`SchemaError` (see :func:`validate_patch_file`).
    """
    path = Path(path)
    f = _open_h5(path, "r", **h5_kwargs)
    try:
        validate_patch_file(f, check_values=check_values)
    except Exception:
        f.close()
        raise
    return f
