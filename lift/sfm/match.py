"""SfM step 3: match the descriptors of every listed pair into an hloc ``matches.h5``.

Pairs are matched in batches (one padded ``B x N0 x D`` / ``B x N1 x D`` distance computation per
batch, :func:`correspondence.match_descriptors_batch`), the batch size bounded by
``max_elements`` distance entries so memory stays fixed whatever the keypoint count. Features are
read lazily through a small cache, so a collection larger than memory streams through.

Layout (hloc's): group ``name0'/name1'`` (``/`` in names -> ``-``, :func:`names_to_pair`)
holding ``matches0`` ``(N0,)`` int16, index into image 1's keypoints or -1 (int32 when image 1
has more than 32767 keypoints), and ``matching_scores0`` ``(N0,)`` float16 (``1 - d^2 / 4``).
Only the listed orientation is stored. Pairs already in the file are skipped unless
``overwrite``.

Example::

    python -m lift.sfm.match out/pairs.txt out/features.h5 out/matches.h5 --method mnn
"""
from __future__ import annotations

import argparse
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import h5py
import numpy as np
import torch
from tqdm import tqdm

from correspondence.matching import match_descriptors_batch

from ..h5io import atomic_h5
from .pairs import names_to_pair, parse_pairs

__all__ = ["MatchConf", "match_pairs", "read_matches", "main"]


@dataclass
class MatchConf:
    """Matching settings.

    Attributes:
        method: ``mnn`` (mutual nearest neighbours), ``ratio`` (Lowe's ratio test on nearest
            neighbours) or ``mnn_ratio`` (both) [mnn].
        ratio: the ratio threshold for ``ratio`` / ``mnn_ratio`` [0.8].
        device: torch device.
        max_elements: bound on B x N0 x N1 distance entries per batch [2**24].
    """

    method: str = "mnn"
    ratio: float = 0.8
    device: Optional[str] = None
    max_elements: int = 1 << 24

    def __post_init__(self):
        if self.method not in ("mnn", "ratio", "mnn_ratio"):
            raise ValueError(f"matching method must be mnn, ratio or mnn_ratio, got {self.method!r}")


class _FeatureCache:
    """Descriptors read from an open features.h5, least-recently-used first out."""

    def __init__(self, f: h5py.File, size: int = 256):
        self.f, self.size, self.items = f, size, OrderedDict()

    def __call__(self, name: str) -> torch.Tensor:
        if name in self.items:
            self.items.move_to_end(name)
            return self.items[name]
        if name not in self.f or "descriptors" not in self.f[name]:
            raise KeyError(f"features.h5 has no descriptors for {name!r}")
        d = torch.from_numpy(np.ascontiguousarray(self.f[name]["descriptors"][()].T, np.float32))
        self.items[name] = d
        if len(self.items) > self.size:
            self.items.popitem(last=False)
        return d


def _batches(pairs, sizes: Dict[str, int], max_elements: int):
    batch, n0, n1 = [], 0, 0
    for a, b in pairs:
        m0, m1 = max(n0, sizes[a]), max(n1, sizes[b])
        if batch and (len(batch) + 1) * max(m0, 1) * max(m1, 1) > max_elements:
            yield batch
            batch, m0, m1 = [], sizes[a], sizes[b]
        batch.append((a, b))
        n0, n1 = m0, m1
    if batch:
        yield batch


def _pad(descs: List[torch.Tensor], device) -> Tuple[torch.Tensor, torch.Tensor]:
    n = max(len(d) for d in descs)
    dim = max(d.shape[1] for d in descs)
    out = torch.zeros(len(descs), n, dim, device=device)
    mask = torch.zeros(len(descs), n, dtype=torch.bool, device=device)
    for i, d in enumerate(descs):
        out[i, :len(d), :d.shape[1]] = d.to(device)
        mask[i, :len(d)] = True
    return out, mask


def match_pairs(pairs: Sequence[Tuple[str, str]], features: Path, conf: MatchConf = MatchConf(),
                progress: bool = True):
    """Yield ``(name0, name1, matches0 N0 int64, scores0 N0 float32)`` for every pair, batched."""
    method = "mnn" if conf.method in ("mnn", "mnn_ratio") else "nn"
    ratio = conf.ratio if conf.method in ("ratio", "mnn_ratio") else None
    device = torch.device(conf.device) if conf.device else torch.device("cpu")
    with h5py.File(features, "r") as f:
        names = {n for p in pairs for n in p}
        missing = [n for n in names if n not in f or "keypoints" not in f[n]]
        if missing:
            raise KeyError(f"{features} has no features for {sorted(missing)[:5]}")
        sizes = {n: len(f[n]["keypoints"]) for n in names}
        cache = _FeatureCache(f)
        bar = tqdm(total=len(pairs), desc="match", unit="pair", disable=not progress)
        for batch in _batches(pairs, sizes, conf.max_elements):
            d0, m0 = _pad([cache(a) for a, _ in batch], device)
            d1, m1 = _pad([cache(b) for _, b in batch], device)
            with torch.inference_mode():
                matches0, scores0 = match_descriptors_batch(d0, d1, m0, m1, method=method, ratio=ratio)
            matches0, scores0 = matches0.cpu().numpy(), scores0.cpu().numpy()
            for i, (a, b) in enumerate(batch):
                yield a, b, matches0[i, :sizes[a]], scores0[i, :sizes[a]]
            bar.update(len(batch))
        bar.close()


def read_matches(source, name0: str, name1: str) -> Tuple[np.ndarray, np.ndarray]:
    """``(K x 2 int64 index pairs, K float32 scores)`` of a pair from an hloc matches file
    (a path or an open ``h5py.File``), found in either orientation and returned as
    (name0, name1)."""
    if not isinstance(source, h5py.File):
        with h5py.File(source, "r") as f:
            return read_matches(f, name0, name1)
    for a, b, flip in ((name0, name1, False), (name1, name0, True)):
        key = names_to_pair(a, b)
        if key in source:
            m = source[key]["matches0"][()].astype(np.int64)
            s = source[key]["matching_scores0"][()].astype(np.float32)
            i0 = np.nonzero(m >= 0)[0]
            pairs = np.stack([i0, m[i0]], 1)
            return (pairs[:, ::-1].copy() if flip else pairs), s[i0]
    raise KeyError(f"{source.filename} has no matches for the pair {name0!r} {name1!r}")


def main(pairs_path: Path, features: Path, output: Path, conf: MatchConf = MatchConf(),
         overwrite: bool = False, progress: bool = True) -> Path:
    """Match the pairs listed in ``pairs_path`` and write ``output`` (hloc matches.h5)."""
    pairs = parse_pairs(pairs_path)
    done = set()
    if Path(output).exists() and not overwrite:
        with h5py.File(output, "r") as f:
            done = {p for p in pairs if names_to_pair(*p) in f}
    todo = [p for p in pairs if p not in done]
    with atomic_h5(output, keep_existing=not overwrite) as f:
        for a, b, m, s in match_pairs(todo, features, conf, progress):
            key = names_to_pair(a, b)
            if key in f:
                del f[key]
            g = f.create_group(key)
            n1 = int(m.max()) + 1 if len(m) else 0
            g.create_dataset("matches0", data=m.astype(np.int16 if n1 <= 32767 else np.int32))
            g.create_dataset("matching_scores0", data=s.astype(np.float16))
    return Path(output)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m lift.sfm.match", description=__doc__.split("\n")[0])
    parser.add_argument("pairs", type=Path)
    parser.add_argument("features", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--method", default="mnn", choices=["mnn", "ratio", "mnn_ratio"])
    parser.add_argument("--ratio", type=float, default=0.8)
    parser.add_argument("--device", default=None)
    parser.add_argument("--overwrite", action="store_true")
    a = parser.parse_args()
    print(main(a.pairs, a.features, a.output, MatchConf(a.method, a.ratio, a.device), a.overwrite))
