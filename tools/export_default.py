"""Export trained weights as the shipped default and check that they work.

    python tools/export_default.py runs/train/ori2/best.pt lift/weights/lift_default.pt \
        --detector runs/train/det3/best.pt

Takes the networks of SRC, optionally replacing single networks by those of other weights files
(``--detector``, ``--orientation``, ``--descriptor``: stages that trained only that network),

copies the networks and their config (``lift.LIFTModel`` weights format, written atomically),
records the training provenance in ``meta``, then validates the file: it must load with
``lift.LIFTModel.load`` and ``lift.detect_and_describe`` must find keypoints with finite,
unit-norm descriptors on a real photo (skimage's camera man). Returns the path written.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def export(src, dst, parts=None, check: bool = True) -> Path:
    import torch
    from skimage import data

    import lift
    from lift.model import LIFTModel

    torch.set_num_threads(2)
    model = LIFTModel.load(src)
    sources = {"base": Path(src).as_posix()}
    for net, other in (parts or {}).items():
        if other:
            donor = LIFTModel.load(other)
            getattr(model, net).load_state_dict(getattr(donor, net).state_dict())
            model.meta.setdefault("stages", {}).update(
                {f"{k} ({net})": v for k, v in donor.meta.get("stages", {}).items()})
            sources[net] = Path(other).as_posix()
    model.meta = dict(model.meta, name=Path(dst).stem, sources=sources,
                      record="lift/weights/README.md", library_version=lift.__version__)
    path = model.save(dst)
    if not check:
        return path
    check = LIFTModel.load(path)
    feats = lift.detect_and_describe(data.camera(), max_keypoints=1024, model=check)
    norms = np.linalg.norm(feats.descriptors, axis=1)
    if len(feats) < 100 or not np.allclose(norms, 1.0, atol=1e-3):
        raise RuntimeError(f"exported weights fail the check: {len(feats)} keypoints, "
                           f"descriptor norms {norms.min() if len(norms) else None}..")
    print(f"{path}: {path.stat().st_size / 1e6:.2f} MB, {len(feats)} keypoints on skimage camera")
    return path


def main(argv=None) -> Path:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src")
    ap.add_argument("dst")
    for net in ("detector", "orientation", "descriptor"):
        ap.add_argument(f"--{net}", default=None, help=f"take the {net} from this file")
    ap.add_argument("--no-check", action="store_true", help="skip the detect_and_describe check")
    a = ap.parse_args(argv)
    return export(a.src, a.dst, {n: getattr(a, n) for n in ("detector", "orientation",
                                                             "descriptor")}, not a.no_check)


if __name__ == "__main__":
    main()
