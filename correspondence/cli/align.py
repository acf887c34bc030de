"""``lift-align``: dense alignment of two images with RANSAC-Flow.

Examples::

    lift-align                          # the built-in sample pair (lift/assets)
    lift-align source.jpg target.jpg --output out/pair --max-homographies 5
    lift-align a.png b.png --coarse-only

Writes ``<output>_warped.png`` (the source warped into the target frame), ``<output>_flow.png``
(source | target | warped source | flow colour wheel, brightness = matchability) and
``<output>_flow.npz`` (``flow``, ``matchability``, ``reverse_flow``, ``reverse_matchability``,
``homographies``). With the built-in pair, whose ground-truth homography is known, the mean
end-point error of the flow is printed.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

import cv2
import numpy as np

__all__ = ["main", "run", "flow_to_colour", "flow_picture", "read_colour"]


def read_colour(path) -> np.ndarray:
    """Read an image file as RGB uint8 (``H x W x 3``) or grey (``H x W``)."""
    from lift.image import ImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no image file at {path}")
    img = cv2.imdecode(np.fromfile(str(path), np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ImageError(f"cannot decode image file {path}")
    if img.dtype != np.uint8:
        img = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if img.ndim == 3:
        img = cv2.cvtColor(img[..., :3], cv2.COLOR_BGR2RGB)
    return img


def flow_to_colour(flow: np.ndarray, matchability: Optional[np.ndarray] = None,
                   max_flow: Optional[float] = None) -> np.ndarray:
    """Middlebury-style picture of an ``H x W x 2`` flow: hue = direction, saturation =
    magnitude / ``max_flow`` (default: the 99th percentile), value = matchability (1 if None).
    Returns RGB uint8."""
    mag = np.linalg.norm(flow, axis=-1)
    ang = np.arctan2(flow[..., 1], flow[..., 0])
    top = max_flow if max_flow else max(float(np.percentile(mag, 99)), 1e-6)
    hsv = np.zeros(flow.shape[:2] + (3,), np.uint8)
    hsv[..., 0] = ((ang + np.pi) / (2 * np.pi) * 179).astype(np.uint8)
    hsv[..., 1] = np.clip(mag / top * 255, 0, 255).astype(np.uint8)
    val = np.ones(flow.shape[:2]) if matchability is None else np.clip(matchability, 0, 1)
    hsv[..., 2] = (55 + 200 * val).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def _rgb(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.dtype != np.uint8:
        img = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB) if img.ndim == 2 else img


def flow_picture(source, target, alignment, height: int = 240) -> np.ndarray:
    """One row: source | target | warped source | flow colour (brightness = matchability),
    each resized to ``height`` px. RGB uint8."""
    tiles = [_rgb(source), _rgb(target), _rgb(alignment.warped),
             flow_to_colour(alignment.flow, alignment.matchability)]
    out = []
    for t in tiles:
        s = height / t.shape[0]
        out.append(cv2.resize(t, (max(1, int(round(t.shape[1] * s))), height),
                              interpolation=cv2.INTER_AREA))
        out.append(np.full((height, 6, 3), 255, np.uint8))
    return np.concatenate(out[:-1], 1)


def _write_png(path: Path, rgb: np.ndarray):
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if rgb.ndim == 3 else rgb)
    if not ok:
        raise RuntimeError(f"cannot encode {path}")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}", suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(buf.tobytes())
    os.replace(tmp, path)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point: 0 on success, 1 with a message on bad input."""
    try:
        run(argv)
    except (FileNotFoundError, ValueError) as err:  # ImageError is a ValueError
        print(f"lift-align: error: {err}", file=sys.stderr)
        return 1
    return 0


def run(argv: Optional[Sequence[str]] = None) -> Path:
    """Parse ``argv``, align, write the outputs; returns the path of the flow picture."""
    parser = argparse.ArgumentParser(prog="lift-align", description=__doc__.split("\n")[0])
    parser.add_argument("images", nargs="*", help="source and target (default: built-in pair)")
    parser.add_argument("--output", "-o", default="lift_align", help="output prefix")
    parser.add_argument("--model", default="default", help="fine-network weights (name or path)")
    parser.add_argument("--coarse-only", action="store_true", help="homographies only")
    parser.add_argument("--max-homographies", type=int, default=3)
    parser.add_argument("--fine-size", type=int, default=1024,
                        help="long side of the fine network's working resolution")
    parser.add_argument("--coarse-size", type=int, default=256)
    parser.add_argument("--no-refine", action="store_true",
                        help="skip the final variational refinement of the flows")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)

    import torch

    from lift.cli.match import sample_pair
    from ..ransac_flow import align

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    H_gt = None
    if not args.images:
        p0, p1, H_gt = sample_pair()
    elif len(args.images) == 2:
        p0, p1 = map(Path, args.images)
    else:
        parser.error("give two images (source target) or none for the built-in pair")
    src, tgt = read_colour(p0), read_colour(p1)
    t0 = time.perf_counter()
    res = align(src, tgt, model=None if args.coarse_only else args.model,
                max_homographies=args.max_homographies, fine_size=args.fine_size,
                coarse_size=args.coarse_size, device=args.device,
                refine=None if args.no_refine else "variational")
    dt = time.perf_counter() - t0
    out = Path(args.output)
    _write_png(out.with_name(out.name + "_warped.png"), _rgb(res.warped))
    pic = out.with_name(out.name + "_flow.png")
    _write_png(pic, flow_picture(src, tgt, res))
    npz = out.with_name(out.name + "_flow.npz")
    fd, tmp = tempfile.mkstemp(dir=npz.parent, prefix=f".{npz.name}", suffix=".npz")
    os.close(fd)
    np.savez_compressed(tmp, flow=res.flow, matchability=res.matchability,
                        reverse_flow=res.reverse_flow,
                        reverse_matchability=res.reverse_matchability,
                        homographies=res.homographies)
    os.replace(tmp, npz)
    print(f"{p0.name} -> {p1.name}: {len(res.homographies)} homograph"
          f"{'y' if len(res.homographies) == 1 else 'ies'}, mean matchability "
          f"{res.matchability.mean():.3f}, {dt:.2f} s")
    if H_gt is not None:
        h, w = res.flow.shape[:2]
        ys, xs = np.mgrid[0:h, 0:w]
        q = np.stack([xs, ys, np.ones_like(xs)], -1) @ H_gt.T
        q = q[..., :2] / q[..., 2:]
        th, tw = tgt.shape[:2]
        ok = (q[..., 0] >= 0) & (q[..., 0] <= tw - 1) & (q[..., 1] >= 0) & (q[..., 1] <= th - 1)
        err = np.linalg.norm(np.stack([xs, ys], -1) + res.flow - q, axis=-1)[ok]
        print(f"ground-truth homography: mean end-point error {err.mean():.2f} px, "
              f"PCK@1 {np.mean(err < 1):.3f}, PCK@3 {np.mean(err < 3):.3f}")
    print(f"wrote {pic}, {out.name}_warped.png, {npz.name}")
    return pic


if __name__ == "__main__":
    sys.exit(main())
