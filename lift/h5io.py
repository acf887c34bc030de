"""hloc-compatible feature files (``features.h5``) with atomic writes.

Layout (hloc's ``extract_features`` layout, read by plain h5py as hloc reads it): one group per
image, keyed by the image path relative to the image root with ``/`` separators (slashes nest
groups), holding:

    keypoints        float32 N x 2   (x, y), top-left pixel centre = (0, 0)
    descriptors      float32 D x N   (hloc stores descriptors transposed)
    scores           float32 N       detector scores (also written as ``keypoint_scores``)
    scales           float32 N       sigma in pixels
    oris             float32 N       radians, clockwise on screen
    image_size       int64   2       (W, H)

``keypoints.attrs["uncertainty"]`` is 1.0 px. Root attribute ``lift_version``; files written by
``lift-extract`` and ``lift-sfm`` also carry ``extract_conf``: JSON of the settings that
determine the features (extractor, keypoint budget, resizing, weights name and sha1, ...), so
that resuming into the file with other settings is refused (:func:`check_extract_conf`).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Union

import h5py
import numpy as np

from .features import Features

__all__ = ["atomic_h5", "write_features", "read_features", "list_feature_names",
           "StaleFeaturesError", "read_extract_conf", "check_extract_conf", "EXTRACT_CONF_ATTR"]

#: root attribute holding the extraction settings (JSON)
EXTRACT_CONF_ATTR = "extract_conf"


class StaleFeaturesError(ValueError):
    """An existing features file cannot be resumed: it was extracted with other settings than
    the requested ones, or it is not a readable HDF5 file."""


def read_extract_conf(f: h5py.File) -> Optional[dict]:
    """The extraction settings recorded in a features file (None if it has none)."""
    text = f.attrs.get(EXTRACT_CONF_ATTR)
    return None if text is None else json.loads(text)


def check_extract_conf(f: h5py.File, want: dict, path: Union[str, Path]) -> None:
    """Raise :class:`StaleFeaturesError` if ``f`` holds features extracted with settings other
    than ``want``; then record ``want`` if ``f`` is writable. A file without a record (hloc,
    older versions) is accepted as it is."""
    have = read_extract_conf(f)
    if have is not None and have != want and list_feature_names(f):
        diff = ", ".join(f"{k} {have.get(k)!r} -> {want.get(k)!r}" for k in sorted(set(have) | set(want))
                         if have.get(k) != want.get(k))
        raise StaleFeaturesError(f"{path} holds features extracted with other settings ({diff}); "
                                 "pass overwrite (--overwrite) to extract afresh, or choose another output")
    if f.mode != "r":
        from . import __version__

        f.attrs[EXTRACT_CONF_ATTR] = json.dumps(want, sort_keys=True)
        f.attrs["lift_version"] = __version__


@contextmanager
def atomic_h5(path: Union[str, Path], keep_existing: bool = True) -> Iterator[h5py.File]:
    """Open a temporary copy of ``path`` for writing and rename it over ``path`` on exit.

    Whatever happens inside the block, ``path`` is never half-written: on success (and on
    KeyboardInterrupt, after the groups written so far are complete) the temporary file
    replaces it; on other exceptions the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        if keep_existing and path.exists():
            shutil.copyfile(path, tmp)
            f = h5py.File(tmp, "a")
        else:
            f = h5py.File(tmp, "w")
        try:
            yield f
        finally:
            f.close()
        os.replace(tmp, path)
    except KeyboardInterrupt:
        os.replace(tmp, path)
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_features(f: h5py.File, name: str, feats: Features) -> None:
    """Write one image's features as a complete group (replacing an existing one)."""
    if name in f:
        del f[name]
    g = f.create_group(name)
    try:
        kp = g.create_dataset("keypoints", data=feats.keypoints.astype(np.float32))
        kp.attrs["uncertainty"] = 1.0
        g.create_dataset("descriptors", data=feats.descriptors.T.astype(np.float32))
        g.create_dataset("scores", data=feats.scores.astype(np.float32))
        g.create_dataset("keypoint_scores", data=feats.scores.astype(np.float32))
        g.create_dataset("scales", data=feats.scales.astype(np.float32))
        g.create_dataset("oris", data=feats.oris.astype(np.float32))
        g.create_dataset("image_size", data=np.array(feats.image_size, dtype=np.int64))
    except BaseException:
        del f[name]
        raise


def list_feature_names(f: h5py.File) -> List[str]:
    """Names of all image groups (paths with ``/``), found as parents of ``keypoints``."""
    names = []

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset) and (name.endswith("/keypoints") or name == "keypoints"):
            names.append(name.rsplit("/", 1)[0] if "/" in name else "")

    f.visititems(visit)
    return sorted(names)


def read_features(path: Union[str, Path], name: str) -> Features:
    """Read one image's features back into :class:`lift.Features`."""
    with h5py.File(path, "r") as f:
        if name not in f:
            raise KeyError(f"{path} has no features for {name!r}")
        g: Dict = f[name]
        kp = g["keypoints"][()]
        n = len(kp)
        get = lambda k, default: g[k][()] if k in g else default  # noqa: E731
        return Features(kp, get("scales", np.ones(n)), get("oris", np.zeros(n)),
                        get("scores", np.zeros(n)), g["descriptors"][()].T,
                        tuple(get("image_size", np.zeros(2, np.int64))))
