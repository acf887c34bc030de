"""Atomic, chunked, compressed writer for SfM patch files (schema in :mod:`lift.data.schema`).

Everything is written to a temporary file next to the target, validated, then renamed over the
target with ``os.replace``: a reader sees either the old complete file or the new complete file,
never a half-written one. An exception inside the ``with`` block deletes the temporary file.

Example::

    with PatchWriter("out.h5", builder="synthetic", source="photos/", params={...}) as w:
        img = w.add_image("a.png#v0", size=(640, 480), source="a.png")
        w.add_patches(patches, track_id, np.full(len(patches), img), keypoints, split, kind)
    # out.h5 now exists and is valid
"""
from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .schema import KINDS, SCHEMA_NAME, SCHEMA_VERSION, SPLITS, validate_patch_file

__all__ = ["PatchWriter"]


def _library_version() -> str:
    try:
        from lift import __version__
        return str(__version__)
    except Exception:  # pragma: no cover - lift always importable when this module is
        return "unknown"


class PatchWriter:
    """Write a patch file atomically (use as a context manager).

    Args:
        path: target ``.h5`` path; parent folders are created.
        builder: name of the builder (``synthetic``, ``colmap``, ``brown`` or your own).
        source: what the patches were made from (folder, model path...).
        params: builder parameters, stored as JSON (must be JSON-serialisable).
        patch_size: patch side S.
        support_sigma: patch half-width in units of sigma (12 for LIFT's 128 px patches).
        chunk_patches: patches per HDF5 chunk. 1 (default) makes a random patch read cost one
            ~10 KB decompression (about 0.5 ms; 8 per chunk: about 4 ms).
        compression: ``"gzip"`` (default, level ``compression_level``), ``"lzf"`` or ``None``.
    """

    def __init__(self, path: Union[str, Path], builder: str, source: str, params: Dict,
                 patch_size: int = 128, support_sigma: float = 12.0, chunk_patches: int = 1,
                 compression: Optional[str] = "gzip", compression_level: int = 4):
        self.path = Path(path)
        self.builder, self.source = str(builder), str(source)
        self.params = dict(params)  # may be updated until close()
        json.dumps(self.params, default=str)  # fail early if not serialisable
        self.patch_size, self.support_sigma = int(patch_size), float(support_sigma)
        self.chunk_patches = int(chunk_patches)
        self.compression = compression
        self.compression_opts = compression_level if compression == "gzip" else None
        self._file = None
        self._tmp: Optional[Path] = None
        self._n = 0
        self._images: List[Tuple[str, str, Tuple[int, int], float, Optional[np.ndarray]]] = []
        self._names = set()
        self._pairs: List[Tuple[np.ndarray, np.ndarray]] = []

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> "PatchWriter":
        import h5py

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        self._file = h5py.File(self._tmp, "w")
        s, c = self.patch_size, self.chunk_patches
        kw = dict(compression=self.compression, compression_opts=self.compression_opts)
        f = self._file
        f.create_dataset("patches", (0, s, s), np.uint8, maxshape=(None, s, s),
                         chunks=(c, s, s), **kw)
        for name, dtype, tail in (("track_id", np.int64, ()), ("image_id", np.int32, ()),
                                  ("keypoints", np.float32, (4,)), ("split", np.uint8, ()),
                                  ("kind", np.uint8, ())):
            f.create_dataset(name, (0,) + tail, dtype, maxshape=(None,) + tail,
                             chunks=(4096,) + tail, **kw)
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False

    def abort(self):
        """Drop everything written so far (the target is left untouched)."""
        if self._file is not None:
            try:
                self._file.close()
            finally:
                self._file = None
        if self._tmp is not None and self._tmp.exists():
            self._tmp.unlink()
        self._tmp = None

    def close(self) -> Path:
        """Write the image table and attributes, validate, and rename onto the target."""
        if self._file is None:
            raise RuntimeError("PatchWriter is not open (use it as a context manager)")
        import h5py

        f = self._file
        try:
            m = len(self._images)
            g = f.create_group("images")
            str_t = h5py.string_dtype("utf-8")
            g.create_dataset("name", data=np.array([i[0] for i in self._images], dtype=object),
                             dtype=str_t)
            g.create_dataset("source", data=np.array([i[1] for i in self._images], dtype=object),
                             dtype=str_t)
            g.create_dataset("size", data=np.array([i[2] for i in self._images],
                                                   np.int32).reshape(m, 2))
            g.create_dataset("scale", data=np.array([i[3] for i in self._images], np.float32))
            homs = [i[4] for i in self._images]
            if m and any(h is not None for h in homs):
                g.create_dataset("homography", data=np.stack(
                    [np.eye(3) if h is None else h for h in homs]).astype(np.float64))
            if self._pairs:
                pg = f.create_group("pairs")
                pg.create_dataset("index", data=np.concatenate([p[0] for p in self._pairs]))
                pg.create_dataset("match", data=np.concatenate([p[1] for p in self._pairs]))
            kinds = f["kind"][...]
            splits = f["split"][...]
            f.attrs.update({
                "schema": SCHEMA_NAME, "schema_version": SCHEMA_VERSION,
                "patch_size": self.patch_size, "support_sigma": self.support_sigma,
                "builder": self.builder, "source": self.source,
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(
                    timespec="seconds"),
                "params": json.dumps(self.params, sort_keys=True, default=str),
                "library_version": _library_version(),
                "num_patches": self._n, "split_names": json.dumps(SPLITS),
                "kind_names": json.dumps(KINDS),
                "num_train": int((splits == 0).sum()), "num_val": int((splits == 1).sum()),
                "num_test": int((splits == 2).sum()),
                "num_keypoint_patches": int((kinds == 0).sum()),
            })
            f.close()
            self._file = None
            validate_patch_file(self._tmp, check_values=True)
            os.replace(self._tmp, self.path)
            self._tmp = None
        except BaseException:
            self.abort()
            raise
        return self.path

    # ------------------------------------------------------------------ content
    def add_image(self, name: str, size: Tuple[int, int], source: Optional[str] = None,
                  scale: float = 1.0, homography: Optional[np.ndarray] = None) -> int:
        """Register an image (view) and return its id for ``add_patches``.

        Args:
            name: unique name of the image the patches are cut from.
            size: (W, H) of that image, in the pixels the keypoints refer to.
            source: file it was made from (default: ``name``).
            scale: the image is the source file resized by this factor.
            homography: optional 3 x 3 map from source-file pixels to image pixels.
        """
        if name in self._names:
            raise ValueError(f"image name '{name}' was already added")
        h = None
        if homography is not None:
            h = np.asarray(homography, np.float64)
            if h.shape != (3, 3):
                raise ValueError(f"homography must be 3 x 3, got {h.shape}")
        self._names.add(name)
        self._images.append((str(name), str(source if source is not None else name),
                             (int(size[0]), int(size[1])), float(scale), h))
        return len(self._images) - 1

    def add_patches(self, patches: np.ndarray, track_id: Sequence[int], image_id: Sequence[int],
                    keypoints: np.ndarray, split: Sequence[int], kind: Sequence[int]) -> np.ndarray:
        """Append patches; returns their row indices in the file.

        Args:
            patches: ``n x S x S`` uint8.
            track_id: ``n`` ints (-1 for non-keypoint patches).
            image_id: ``n`` ids returned by :meth:`add_image`.
            keypoints: ``n x 4`` (x, y, sigma, ori) in pixels of that image, ori in radians
                clockwise on screen.
            split: ``n`` split codes (0 train, 1 val, 2 test).
            kind: ``n`` kind codes (0 track, 1 other keypoint, 2 random location).
        """
        if self._file is None:
            raise RuntimeError("PatchWriter is not open (use it as a context manager)")
        s = self.patch_size
        patches = np.asarray(patches)
        if patches.dtype != np.uint8 or patches.ndim != 3 or patches.shape[1:] != (s, s):
            raise ValueError(f"patches must be n x {s} x {s} uint8, got {patches.shape} "
                             f"{patches.dtype}")
        n = len(patches)
        cols = {
            "track_id": np.asarray(track_id, np.int64).reshape(-1),
            "image_id": np.asarray(image_id, np.int32).reshape(-1),
            "keypoints": np.asarray(keypoints, np.float32).reshape(-1, 4),
            "split": np.asarray(split, np.uint8).reshape(-1),
            "kind": np.asarray(kind, np.uint8).reshape(-1),
        }
        for k, v in cols.items():
            if len(v) != n:
                raise ValueError(f"{k} has {len(v)} rows for {n} patches")
        if n and (cols["image_id"].min() < 0 or cols["image_id"].max() >= len(self._images)):
            raise ValueError("image_id refers to an image that was not added with add_image")
        if n and cols["split"].max() >= len(SPLITS):
            raise ValueError(f"split codes must be < {len(SPLITS)}")
        start = self._n
        for name, arr in (("patches", patches), *cols.items()):
            ds = self._file[name]
            ds.resize(start + n, axis=0)
            ds[start:start + n] = arr
        self._n += n
        return np.arange(start, start + n)

    def add_pairs(self, index: np.ndarray, match: np.ndarray):
        """Append patch pairs (``P x 2`` row indices, ``P`` 0/1 labels), e.g. Brown m50 lists."""
        index = np.asarray(index, np.int64).reshape(-1, 2)
        match = np.asarray(match, np.uint8).reshape(-1)
        if len(index) != len(match):
            raise ValueError(f"{len(index)} pairs but {len(match)} labels")
        self._pairs.append((index, match))

    @property
    def num_patches(self) -> int:
        return self._n
