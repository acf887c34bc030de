"""SfM step 5: COLMAP incremental mapping from the verified database.

Models are written in COLMAP's binary format under ``sfm_dir/sparse/<k>/`` (``cameras.bin``,
``images.bin``, ``points3D.bin``, plus rigs/frames with pycolmap >= 3.12), sorted by number of
registered images: ``sparse/0`` is the largest model. The folder is built under a temporary
name and renamed when complete; an existing ``sparse/0`` is kept unless ``overwrite``.

Example::

    python -m lift.sfm.reconstruct out/database.db images/ out/
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from ..colmap.compat import incremental_mapping, write_model
from .errors import SfMError

__all__ = ["main"]


def main(database: Path, image_dir: Path, sfm_dir: Path, fix_intrinsics: bool = False,
         min_num_matches: int = 15, overwrite: bool = False, seed: int = 0,
         verbose: bool = False, num_threads: int = -1) -> Path:
    """Reconstruct and write the models; returns ``sfm_dir/sparse/0`` (the largest).

    ``num_threads``: mapper threads (-1: all cores); only 1 is deterministic under ``seed``.

    Raises:
        SfMError: no model could be reconstructed (too few verified matches).
    """
    sfm_dir = Path(sfm_dir)
    sparse = sfm_dir / "sparse"
    if (sparse / "0").is_dir() and not overwrite:
        return sparse / "0"
    sfm_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=sfm_dir, prefix=".mapping-"))
    try:
        models = incremental_mapping(database, image_dir, work / "raw", fix_intrinsics,
                                     min_num_matches, num_threads=num_threads, seed=seed,
                                     verbose=verbose)
        if not models or models[0].num_reg_images() < 2:
            raise SfMError("the scene did not reconstruct: no initial image pair with enough "
                           "verified matches (try more keypoints, exhaustive pairs or other images)")
        staged = work / "sparse"
        for k, model in enumerate(models):
            write_model(model, staged / str(k))
        if sparse.exists():
            shutil.rmtree(sparse)
        os.replace(staged, sparse)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return sparse / "0"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m lift.sfm.reconstruct", description=__doc__.split("\n")[0])
    parser.add_argument("database", type=Path)
    parser.add_argument("image_dir", type=Path)
    parser.add_argument("sfm_dir", type=Path)
    parser.add_argument("--fix-intrinsics", action="store_true")
    parser.add_argument("--overwrite", action="store_true")
    a = parser.parse_args()
    print(main(a.database, a.image_dir, a.sfm_dir, a.fix_intrinsics, overwrite=a.overwrite))
