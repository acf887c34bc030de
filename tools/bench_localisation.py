"""Keypoint localisation benchmark: how precisely a detector re-detects its keypoints after a
known warp of the image.

    python tools/bench_localisation.py                 # -> benchmarks/localisation.md

Protocol: each photo (Urban100 img_091-095 from ``../shared/data/photos``, held out of training,
resized to 640 px wide; scikit-image photos where the shared data is absent) is warped by a
known transform with bicubic interpolation: a translation by (0.5, 0.25) px, a zoom by 2^0.5 and
rotations by 10 and 30 degrees about the image centre. A keypoint of the original whose warped
position lies at least 10 px inside the image is *re-detected* when the warped image has a
keypoint within 3 px of that position at a scale within 2^+-0.2 of the warped scale (sigma, px);
the distance to it is its localisation error. Reported per method and warp: re-detected keypoints
(mean per photo), the median and 90th percentile of the error, and the median error of the
keypoints with sigma >= 3 px (the coarse levels, where a detector pixel is largest). The first
octave of SIFT is upsampled, so its keypoints sit on a finer grid than LIFT's (23/24 detector
pixels per sigma, ``lift.model.FAST_CONFIG``).

Methods: LIFT (shipped weights, runtime defaults: ``subpixel="response"``, :mod:`lift.subpixel`),
LIFT with ``subpixel="quadratic"`` (a quadratic fit to the 3 x 3 scores, the default until
2026-12-01), OpenCV SIFT; 2048 keypoints.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
from pathlib import Path
from typing import Callable, Dict, List

import cv2
import numpy as np
import torch
from scipy.spatial import cKDTree

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"

from lift import Features, LIFT  # noqa: E402

WARPS = {"shift (0.5, 0.25) px": ("shift", (0.5, 0.25)), "zoom 2^0.5": ("zoom", 2 ** 0.5),
         "rotation 10 deg": ("rot", 10.0), "rotation 30 deg": ("rot", 30.0)}


def photos() -> List[np.ndarray]:
    paths = sorted((SHARED / "photos" / "Urban100").glob("img_09[1-5].*"))
    if paths:
        imgs = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in paths]
    else:
        from skimage import data

        imgs = [cv2.cvtColor(f(), cv2.COLOR_RGB2GRAY) for f in (data.astronaut, data.coffee, data.chelsea)]
    return [cv2.resize(i, (640, round(640 * i.shape[0] / i.shape[1])), interpolation=cv2.INTER_AREA)
            for i in imgs]


def warp_matrix(kind: str, arg, w: int, h: int) -> np.ndarray:
    """3 x 3 map from original to warped pixel centres (library convention)."""
    if kind == "shift":
        return np.array([[1, 0, arg[0]], [0, 1, arg[1]], [0, 0, 1]], np.float64)
    c = np.array([(w - 1) / 2, (h - 1) / 2])
    if kind == "zoom":
        A = np.eye(2) * arg
    else:
        t = np.radians(arg)
        A = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    M = np.eye(3)
    M[:2, :2] = A
    M[:2, 2] = c - A @ c
    return M


def methods(max_keypoints: int) -> Dict[str, Callable[[np.ndarray], Features]]:
    quad = LIFT("default", max_keypoints=max_keypoints, subpixel="quadratic")
    resp = LIFT("default", max_keypoints=max_keypoints)
    sift = cv2.SIFT_create(max_keypoints)

    def run_sift(image):
        kps, desc = sift.detectAndCompute(image, None)
        return Features.from_cv2(kps, desc, (image.shape[1], image.shape[0]))
    return {"LIFT (subpixel='response', default)": resp.extract,
            "LIFT (subpixel='quadratic')": quad.extract,
            "OpenCV SIFT": run_sift}


def measure(extract, images) -> Dict[str, dict]:
    out = {}
    for name, (kind, arg) in WARPS.items():
        errs, big, counts = [], [], []
        for im in images:
            h, w = im.shape
            M = warp_matrix(kind, arg, w, h)
            moved = cv2.warpAffine(im, M[:2].astype(np.float32), (w, h), flags=cv2.INTER_CUBIC,
                                   borderMode=cv2.BORDER_REFLECT)
            a, b = extract(im), extract(moved)
            zoom = float(np.sqrt(abs(np.linalg.det(M[:2, :2]))))
            q = a.keypoints.astype(np.float64) @ M[:2, :2].T + M[:2, 2]
            inside = (q[:, 0] >= 10) & (q[:, 0] <= w - 11) & (q[:, 1] >= 10) & (q[:, 1] <= h - 11)
            d, j = cKDTree(b.keypoints).query(q)
            ok = inside & (d < 3) & (np.abs(np.log2(b.scales[j] / (a.scales * zoom))) < 0.2)
            errs.append(d[ok])
            big.append(d[ok & (a.scales >= 3)])
            counts.append(int(ok.sum()))
        e, g = np.concatenate(errs), np.concatenate(big)
        out[name] = {"n": float(np.mean(counts)), "median": float(np.median(e)),
                     "p90": float(np.percentile(e, 90)), "median_big": float(np.median(g)) if len(g) else float("nan")}
    return out


def report(results, images, command: str, wall: float) -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
               platform.processor())
    lines = ["# Keypoint localisation under known warps", "",
             f"- date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
             f"- machine: {platform.machine()}, {cpu}, torch {torch.__version__} "
             f"({torch.get_num_threads()} threads), OpenCV {cv2.__version__}",
             f"- command: `{command}`", f"- wall time: {wall:.0f} s",
             f"- data: {len(images)} photos, 640 px wide; protocol in the docstring of "
             "`tools/bench_localisation.py` (re-detected = within 3 px and 2^+-0.2 in scale of the "
             "warped position)", "",
             "Per warp: re-detected keypoints per photo / median / 90th percentile of the localisation "
             "error (px) / median error of the keypoints with sigma >= 3 px.", "",
             "| method | " + " | ".join(WARPS) + " |", "|---|" + "---|" * len(WARPS)]
    for m, res in results.items():
        cells = [f"{r['n']:.0f} / {r['median']:.3f} / {r['p90']:.3f} / {r['median_big']:.3f}"
                 for r in (res[w] for w in WARPS)]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-keypoints", type=int, default=2048)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "localisation.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    t0 = dt.datetime.now()
    images = photos()
    results = {name: measure(fn, images) for name, fn in methods(args.max_keypoints).items()}
    for m, res in results.items():
        print(m, {w: {k: round(v, 3) for k, v in r.items()} for w, r in res.items()}, flush=True)
    command = "python tools/bench_localisation.py" + ("" if argv is None and len(sys.argv) == 1
                                                       else " " + " ".join(sys.argv[1:] if argv is None else argv))
    text = report(results, images, command, (dt.datetime.now() - t0).total_seconds())
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_name(f".{args.output.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, args.output)
    print(f"wrote {args.output}")
    return args.output


if __name__ == "__main__":
    main()
