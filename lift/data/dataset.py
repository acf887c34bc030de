"""torch Datasets over SfM patch files (schema in :mod:`lift.data.schema`).

* :class:`PatchDataset`: one patch per item (descriptor evaluation, FPR95, plain training).
* :class:`QuadrupletDataset`: LIFT's training item: P1, P2 (two views of one track), P3 (a view of
  another track) and P4 (a non-keypoint patch), re-drawn every epoch from ``(seed, epoch, index)``
  so the result does not depend on the number of workers or on the order items are asked for.

Both accept one file or a list of files (e.g. ``synthetic.h5`` + ``colmap_*.h5``): track ids are
renumbered into one dense range across files, so two files never share a track. The small
per-patch arrays are read once at construction; the HDF5 file itself is opened lazily, once per
process, on the first ``__getitem__`` (so ``DataLoader`` workers each get their own handle and
nothing unpicklable is carried across ``fork``/``spawn``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from .schema import KIND_TRACK, SchemaError, open_patch_file, split_codes

__all__ = ["PatchDataset", "QuadrupletDataset", "PatchStore"]

PathLike = Union[str, Path]


class PatchStore:
    """Metadata of the selected patches of one or more files, plus lazy per-process reading.

    Attributes (numpy, one row per selected patch, in file order):
        file: int64 file index; row: int64 row in that file; track: int64 dense track index
        across all files (-1 = non-keypoint); track_id: int64 the file's own track id;
        image_id: int64; keypoints: float32 ``n x 4`` (x, y, sigma, ori); split, kind: uint8.
    """

    def __init__(self, paths: Union[PathLike, Sequence[PathLike]], split=None,
                 kinds: Optional[Sequence[int]] = None, in_memory: bool = False,
                 cache_mb: float = 64.0):
        if isinstance(paths, (str, Path)):
            paths = [paths]
        self.paths = [Path(p) for p in paths]
        if not self.paths:
            raise ValueError("no patch file given")
        codes = split_codes(split)
        self.in_memory = bool(in_memory)
        self.cache_bytes = int(cache_mb * 2 ** 20)
        cols: Dict[str, List[np.ndarray]] = {k: [] for k in
                                             ("file", "row", "track_id", "image_id", "keypoints",
                                              "split", "kind")}
        sizes, supports, self.image_names = set(), set(), []
        for fi, path in enumerate(self.paths):
            with open_patch_file(path) as f:
                sizes.add(int(f.attrs["patch_size"]))
                supports.add(float(f.attrs["support_sigma"]))
                sp, kd = f["split"][...], f["kind"][...]
                keep = np.isin(sp, codes)
                if kinds is not None:
                    keep &= np.isin(kd, np.asarray(kinds))
                rows = np.flatnonzero(keep)
                cols["file"].append(np.full(len(rows), fi, np.int64))
                cols["row"].append(rows.astype(np.int64))
                cols["track_id"].append(f["track_id"][...][rows])
                cols["image_id"].append(f["image_id"][...][rows].astype(np.int64))
                cols["keypoints"].append(f["keypoints"][...][rows])
                cols["split"].append(sp[rows])
                cols["kind"].append(kd[rows])
                self.image_names.append([n.decode() if isinstance(n, bytes) else str(n)
                                         for n in f["images/name"][...]])
        if len(sizes) != 1 or len(supports) != 1:
            raise SchemaError(f"files mix patch geometries (patch_size {sorted(sizes)}, "
                              f"support_sigma {sorted(supports)}); use files built alike")
        self.patch_size, self.support_sigma = sizes.pop(), supports.pop()
        for k, v in cols.items():
            setattr(self, k, np.concatenate(v))
        # dense track index across files
        self.track = np.full(len(self.row), -1, np.int64)
        pos = self.track_id >= 0
        if pos.any():
            key = self.file[pos] * (2 ** 40) + self.track_id[pos]
            _, self.track[pos] = np.unique(key, return_inverse=True)
        self._handles: Dict[int, object] = {}
        self._memory: Dict[int, np.ndarray] = {}
        self._pid = None

    def __len__(self) -> int:
        return len(self.row)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_handles"], state["_memory"], state["_pid"] = {}, {}, None
        return state

    def _patches(self, fi: int):
        if self._pid != os.getpid():  # first use in this process (or after fork): reopen
            self._handles, self._memory, self._pid = {}, {}, os.getpid()
        if fi in self._memory:
            return self._memory[fi]
        if fi not in self._handles:
            f = open_patch_file(self.paths[fi], rdcc_nbytes=self.cache_bytes)
            self._handles[fi] = (f, f["patches"])  # dataset lookups cost ~1 ms: keep it
        ds = self._handles[fi][1]
        if self.in_memory:
            self._memory[fi] = ds[...]
            return self._memory[fi]
        return ds

    def read(self, i: int) -> np.ndarray:
        """Patch of selected row ``i`` as an ``S x S`` uint8 array."""
        return np.asarray(self._patches(int(self.file[i]))[int(self.row[i])])

    def close(self):
        for f, _ in self._handles.values():
            f.close()
        self._handles, self._memory = {}, {}


def _to_tensor(patches: np.ndarray, as_float: bool) -> torch.Tensor:
    # numpy, not torch, converts: torch's intra-op thread pool costs ~10 ms per small tensor
    # on a busy machine, more than the HDF5 read itself
    if as_float:
        return torch.from_numpy(patches.astype(np.float32) * np.float32(1.0 / 255.0))
    return torch.from_numpy(np.ascontiguousarray(patches))


class PatchDataset(Dataset):
    """One patch per item.

    Args:
        paths: one patch file or a list of them.
        split: ``"train"``, ``"val"``, ``"test"``, a list of them, or ``None`` (all).
        kinds: keep only these kind codes (0 track, 1 other keypoint, 2 random), ``None`` = all.
        as_float: patches as float32 in [0, 1] (default) or raw uint8.
        in_memory: load each file's patches into RAM on first use (per process).

    Item (dict of tensors):
        ``patch``: ``1 x S x S`` float32 in [0, 1] (uint8 if ``as_float=False``);
        ``keypoint``: float32 (4,) = (x, y, sigma, ori) in the source image (ori radians,
        clockwise on screen); ``track``: int64 dense track index across files (-1 non-keypoint);
        ``image_id``: int64; ``file``: int64 file index; ``index``: int64 row in that file;
        ``kind``: int64; ``split``: int64.
    """

    def __init__(self, paths, split: Optional[Union[str, Sequence[str]]] = "train",
                 kinds: Optional[Sequence[int]] = None, as_float: bool = True,
                 in_memory: bool = False):
        self.store = PatchStore(paths, split, kinds, in_memory)
        self.as_float = as_float
        self.patch_size = self.store.patch_size
        self.support_sigma = self.store.support_sigma

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, i: int) -> Dict[str, torch.Tensor]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} patches")
        i = int(i) % len(self)
        st = self.store
        return {
            "patch": _to_tensor(st.read(i)[None], self.as_float),
            "keypoint": torch.from_numpy(st.keypoints[i].copy()),
            "track": torch.tensor(st.track[i]),
            "image_id": torch.tensor(st.image_id[i]),
            "file": torch.tensor(st.file[i]),
            "index": torch.tensor(st.row[i]),
            "kind": torch.tensor(int(st.kind[i])),
            "split": torch.tensor(int(st.split[i])),
        }


class QuadrupletDataset(Dataset):
    """LIFT quadruplets: P1, P2 same track; P3 another track; P4 a non-keypoint patch.

    Item ``i`` of epoch ``e`` is drawn with ``numpy.random.default_rng((seed, e, i))`` from the
    epoch's permutation of tracks, so it is reproducible and independent of worker count. Call
    :meth:`set_epoch` at the start of each epoch to draw new pairs (as LIFT regenerates them).

    Args:
        paths: one patch file or a list of them.
        split: split name(s) to draw from (tracks never cross splits).
        seed: base seed.
        length: items per epoch (default: the number of usable tracks; larger values cycle
            through the permuted tracks again with new views).
        with_negative: draw P4; raises :class:`ValueError` at construction if the split has no
            non-keypoint patch. With ``False`` the item has 3 patches.
        negative_kinds: kind codes allowed for P4 (default both 1 and 2).
        as_float, in_memory: as in :class:`PatchDataset`.

    Item (dict of tensors, K = 4, or 3 without negatives, in the order P1, P2, P3, P4):
        ``patches``: ``K x 1 x S x S`` float32 in [0, 1] (uint8 if ``as_float=False``);
        ``keypoints``: ``K x 4`` float32 (x, y, sigma, ori) in each patch's source image;
        ``track``: ``K`` int64 (P1 = P2 != P3, P4 = -1); ``image_id``, ``file``, ``index``:
        ``K`` int64 (``index`` = row in its file).
    """

    def __init__(self, paths, split: Optional[Union[str, Sequence[str]]] = "train", seed: int = 0,
                 length: Optional[int] = None, with_negative: bool = True,
                 negative_kinds: Sequence[int] = (1, 2), as_float: bool = True,
                 in_memory: bool = False):
        self.store = PatchStore(paths, split, None, in_memory)
        st = self.store
        self.patch_size, self.support_sigma = st.patch_size, st.support_sigma
        self.seed, self.epoch, self.as_float = int(seed), 0, as_float
        self.with_negative = bool(with_negative)
        pos = np.flatnonzero(st.kind == KIND_TRACK)
        order = pos[np.argsort(st.track[pos], kind="stable")]
        tracks, starts, counts = np.unique(st.track[order], return_index=True, return_counts=True)
        usable = counts >= 2
        self._members = order  # keypoint rows grouped by track
        self._starts, self._counts = starts[usable], counts[usable]
        self._positive_rows = pos
        self._negative_rows = np.flatnonzero(np.isin(st.kind, np.asarray(negative_kinds)) &
                                             (st.kind != KIND_TRACK))
        split_txt = split if split is not None else "all"
        if len(self._starts) == 0:
            raise ValueError(f"no track with at least 2 views in split {split_txt} of "
                             f"{[str(p) for p in st.paths]}")
        if len(tracks) < 2:
            raise ValueError(f"split {split_txt} has a single track; P3 needs another one")
        if self.with_negative and len(self._negative_rows) == 0:
            raise ValueError(f"split {split_txt} has no non-keypoint patch (kinds "
                             f"{list(negative_kinds)}) for P4; pass with_negative=False")
        self.length = int(length) if length is not None else len(self._starts)
        self._perm_epoch, self._perm = None, None

    @property
    def num_tracks(self) -> int:
        """Number of tracks with at least two views (the default epoch length)."""
        return len(self._starts)

    def set_epoch(self, epoch: int):
        """Select the epoch whose quadruplets ``__getitem__`` draws."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def _permutation(self) -> np.ndarray:
        if self._perm_epoch != self.epoch:
            rng = np.random.default_rng((self.seed, self.epoch, 2 ** 31))
            self._perm, self._perm_epoch = rng.permutation(len(self._starts)), self.epoch
        return self._perm

    def rows(self, i: int) -> np.ndarray:
        """Selected-row indices (into ``self.store``) of item ``i``'s P1, P2, P3[, P4]."""
        if not 0 <= i < self.length:
            raise IndexError(f"index {i} out of range for {self.length} quadruplets")
        rng = np.random.default_rng((self.seed, self.epoch, int(i)))
        t = self._permutation()[i % len(self._starts)]
        start, count = self._starts[t], self._counts[t]
        a, b = rng.choice(count, 2, replace=False)
        p1, p2 = self._members[start + a], self._members[start + b]
        track = self.store.track[p1]
        while True:  # another track: rejection sampling, terminates since >= 2 tracks exist
            p3 = self._positive_rows[rng.integers(len(self._positive_rows))]
            if self.store.track[p3] != track:
                break
        rows = [p1, p2, p3]
        if self.with_negative:
            rows.append(self._negative_rows[rng.integers(len(self._negative_rows))])
        return np.array(rows, np.int64)

    def __getitem__(self, i: int) -> Dict[str, torch.Tensor]:
        rows = self.rows(int(i))
        st = self.store
        patches = np.stack([st.read(r) for r in rows])[:, None]
        return {
            "patches": _to_tensor(patches, self.as_float),
            "keypoints": torch.from_numpy(st.keypoints[rows].copy()),
            "track": torch.from_numpy(st.track[rows].copy()),
            "image_id": torch.from_numpy(st.image_id[rows].copy()),
            "file": torch.from_numpy(st.file[rows].copy()),
            "index": torch.from_numpy(st.row[rows].copy()),
        }

