"""SfM step 2: the image pairs to match, written as an hloc pairs file (``pairs.txt``).

Format: one pair per line, ``name0 name1``, names relative to the image root with ``/``
separators, whitespace-separated (names cannot contain spaces). Strategies:

- ``exhaustive``: every unordered pair (N (N - 1) / 2);
- ``sequential:K``: each image with the next K images in name order (video, ordered captures);
- a path to an existing hloc pairs file (pairs naming unknown images are dropped with a warning;
  duplicates and reversed duplicates are removed).

Example::

    python -m lift.sfm.pairs out/features.h5 out/pairs.txt --pairs sequential:5
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import h5py

from ..h5io import list_feature_names

__all__ = ["exhaustive_pairs", "sequential_pairs", "parse_pairs", "write_pairs", "make_pairs",
           "names_to_pair", "main"]

Pair = Tuple[str, str]


def names_to_pair(name0: str, name1: str, separator: str = "/") -> str:
    """hloc's key of a pair in ``matches.h5``: ``name0'/name1'`` with ``/`` in names -> ``-``."""
    return separator.join((name0.replace("/", "-"), name1.replace("/", "-")))


def exhaustive_pairs(names: Sequence[str]) -> List[Pair]:
    names = list(names)
    return [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]


def sequential_pairs(names: Sequence[str], window: int) -> List[Pair]:
    if window < 1:
        raise ValueError(f"sequential window must be >= 1, got {window}")
    names = sorted(names)
    return [(a, b) for i, a in enumerate(names) for b in names[i + 1:i + 1 + window]]


def parse_pairs(path: Union[str, Path]) -> List[Pair]:
    """Read an hloc pairs file (blank lines ignored). Raises ValueError on a malformed line."""
    pairs = []
    for k, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 2:
            raise ValueError(f"{path}:{k}: expected 'name0 name1', got {line!r}")
        pairs.append((parts[0], parts[1]))
    return pairs


def _dedupe(pairs, known=None) -> Tuple[List[Pair], int]:
    seen, out, dropped = set(), [], 0
    for a, b in pairs:
        if a == b or (known is not None and (a not in known or b not in known)):
            dropped += known is not None and a != b
            continue
        key = (a, b) if a < b else (b, a)
        if key not in seen:
            seen.add(key)
            out.append((a, b))
    return out, dropped


def make_pairs(names: Sequence[str], strategy: str = "exhaustive") -> List[Pair]:
    """Pairs of ``names`` by ``strategy`` (``exhaustive``, ``sequential:K`` or a pairs file)."""
    if strategy == "exhaustive":
        return exhaustive_pairs(names)
    if strategy.startswith("sequential"):
        _, _, k = strategy.partition(":")
        try:
            window = int(k) if k else 10
        except ValueError:
            raise ValueError(f"bad pairs strategy {strategy!r}: use sequential:K with an integer K")
        return sequential_pairs(names, window)
    path = Path(strategy)
    if not path.is_file():
        raise ValueError(f"pairs must be 'exhaustive', 'sequential:K' or an existing pairs file; "
                         f"got {strategy!r}")
    pairs, dropped = _dedupe(parse_pairs(path), set(names))
    if dropped:
        print(f"lift.sfm.pairs: dropped {dropped} pairs of {path} naming images without features",
              file=sys.stderr)
    return pairs


def write_pairs(pairs: Sequence[Pair], path: Union[str, Path]) -> Path:
    """Write an hloc pairs file atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for a, b in pairs:
        if any(c.isspace() for c in a + b):
            raise ValueError(f"image names with whitespace cannot go in a pairs file: {a!r} {b!r}")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("\n".join(f"{a} {b}" for a, b in pairs) + ("\n" if pairs else ""))
    os.replace(tmp, path)
    return path


def main(features: Path, output: Path, strategy: str = "exhaustive") -> Path:
    """Write the pairs of the images in ``features`` (hloc features.h5) to ``output``."""
    with h5py.File(features, "r") as f:
        names = list_feature_names(f)
    return write_pairs(make_pairs(names, strategy), output)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m lift.sfm.pairs", description=__doc__.split("\n")[0])
    parser.add_argument("features", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--pairs", default="exhaustive")
    a = parser.parse_args()
    print(main(a.features, a.output, a.pairs))
