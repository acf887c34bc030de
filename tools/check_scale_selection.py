"""Scale-selection check of a LIFT model against SIFT on image pairs with a known homography.

For every keypoint of image 0 that is re-detected in image 1 within 2 px (after mapping by the
ground-truth homography H), compare the detected scale ratio sigma1 / sigma0 with the local
scale change of H (sqrt |det J_H|): the median |log2| error is printed per pair, for LIFT and
for OpenCV SIFT. Pairs: the built-in sample pair and Oxford boat 1-2, 1-3.

    python tools/check_scale_selection.py lift/weights/lift_default.pt [more weights files]
"""
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from lift import LIFT, LIFTModel  # noqa: E402
from lift.cli.match import sample_pair  # noqa: E402

BOAT = Path(__file__).resolve().parents[2] / "shared" / "data" / "homography" / "boat"


def local_scale(H, pts, eps=0.5):
    def f(q):
        return cv2.perspectiveTransform(q[None], H)[0]
    p = pts.astype(np.float64)
    jx = (f(p + [eps, 0]) - f(p - [eps, 0])) / (2 * eps)
    jy = (f(p + [0, eps]) - f(p - [0, eps])) / (2 * eps)
    return np.sqrt(np.abs(jx[:, 0] * jy[:, 1] - jx[:, 1] * jy[:, 0]))


def scale_errors(k0, s0, k1, s1, H):
    m = cv2.perspectiveTransform(k0[None].astype(np.float64), H)[0]
    d = np.linalg.norm(m[:, None] - k1[None], axis=2)
    j, ok = d.argmin(1), d.min(1) < 2
    return int(ok.sum()), np.log2(s1[j[ok]] / s0[ok] / local_scale(H, k0[ok]))


def main(paths):
    torch.set_num_threads(2)
    p0, p1, H = sample_pair()
    pairs = [("sample", cv2.imread(str(p0), 0), cv2.imread(str(p1), 0), H)]
    if BOAT.exists():
        pairs += [(f"boat1-{k}", cv2.imread(str(BOAT / "img1.pgm"), 0),
                   cv2.imread(str(BOAT / f"img{k}.pgm"), 0), np.loadtxt(BOAT / f"H1to{k}p"))
                  for k in (2, 3)]
    sift = cv2.SIFT_create(2048)
    for name, a, b, H in pairs:
        rows = []
        for path in paths:
            f0, f1 = LIFT(LIFTModel.load(path), max_keypoints=2048).extract([a, b])
            n, e = scale_errors(f0.keypoints, f0.scales, f1.keypoints, f1.scales, H)
            rows.append(f"{Path(path).parent.name}/{Path(path).name}: {n} re-detected, median "
                        f"|log2 scale error| {np.median(np.abs(e)):.3f}")
        q0, q1 = sift.detect(a, None), sift.detect(b, None)
        n, e = scale_errors(np.float32([k.pt for k in q0]), np.float32([k.size / 2 for k in q0]),
                            np.float32([k.pt for k in q1]), np.float32([k.size / 2 for k in q1]), H)
        rows.append(f"SIFT: {n} re-detected, median |log2 scale error| {np.median(np.abs(e)):.3f}")
        print(name + "\n  " + "\n  ".join(rows))


if __name__ == "__main__":
    main(sys.argv[1:] or ["default"])
