"""Export trained weights as the shipped default and check that they work.

    python tools/export_default.py runs/train/joint/best.pt lift/weights/lift_default.pt

Copies the networks and their config (``lift.LIFTModel`` weights format, written atomically),
records the training provenance in ``meta``, then validates the file: it must load with
``lift.LIFTModel.load`` and ``lift.detect_and_describe`` must find keypoints with finite,
unit-norm descriptors on a real photo (skimage's camera man). Returns the path written.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def export(src, dst) -> Path:
    import torch
    from skimage import data

    import lift
    from lift.model import LIFTModel

    torch.set_num_threads(2)
    model = LIFTModel.load(src)
    model.meta = dict(model.meta, name="lift_default", source=Path(src).as_posix(),
                      record="lift/weights/README.md", library_version=lift.__version__)
    path = model.save(dst)
    check = LIFTModel.load(path)
    feats = lift.detect_and_describe(data.camera(), max_keypoints=1024, model=check)
    norms = np.linalg.norm(feats.descriptors, axis=1)
    if len(feats) < 100 or not np.allclose(norms, 1.0, atol=1e-3):
        raise RuntimeError(f"exported weights fail the check: {len(feats)} keypoints, "
                           f"descriptor norms {norms.min() if len(norms) else None}..")
    print(f"{path}: {path.stat().st_size / 1e6:.2f} MB, {len(feats)} keypoints on skimage camera")
    return path


def main(argv=None) -> Path:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        sys.exit("usage: python tools/export_default.py SRC.pt DST.pt")
    return export(*argv)


if __name__ == "__main__":
    main()
