"""``lift-bench``: matching benchmarks from the command line.

Examples::

    lift-bench homography --data hpatches-sequences-release --methods lift,sift,orb --output out/hp
    lift-bench homography --data my_photos/ --output out/mine      # seeded synthetic warps
    lift-bench pose --data strecha/ --methods lift,sift --output out/pose
    lift-bench speed --data my_photos/ --methods lift,sift --output out/speed

``--data skimage`` uses the scikit-image sample photos (present wherever scikit-image is
installed): synthetic homographies for ``homography``, rendered two-plane scenes for ``pose``.
Each command writes ``results.json``, ``results.md`` (and figures) under ``--output`` and
``main`` returns the path of ``results.json``.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from .estimators import HOMOGRAPHY_ESTIMATORS, POSE_ESTIMATORS, EstimatorUnavailable
from .methods import DEFAULT_METHODS, available_methods, parse_method_list
from .readers import (ImageRef, list_images, read_homography_dataset, read_pose_dataset,
                      resize_max, synthetic_homography_pairs, synthetic_pose_pairs)

__all__ = ["main", "skimage_photos", "build_parser"]

#: scikit-image photos used by ``--data skimage`` (textured, various content).
SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "brick", "grass", "gravel", "camera")


def skimage_photos(names: Sequence[str] = SKIMAGE_PHOTOS) -> List[np.ndarray]:
    """Sample photos shipped with scikit-image (arrays as scikit-image returns them)."""
    from skimage import data as skdata

    return [getattr(skdata, n)() for n in names]


def _refine_arg(text):
    """``--refine`` -> run_homography_benchmark's ``refine``: absent False, bare True, else a list."""
    if text is None:
        return False
    return True if text == "all" else parse_method_list(text)


def build_parser() -> argparse.ArgumentParser:
    methods_help = "comma-separated method specs (default: %(default)s); registered: " + \
        ", ".join(available_methods()) + "; 'lift:<name>' selects named weights"
    parser = argparse.ArgumentParser(prog="lift-bench", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="task", required=True)

    def common(p):
        p.add_argument("--data", required=True,
                       help="data folder (see the task's help) or 'skimage' for built-in photos")
        p.add_argument("--methods", default=",".join(DEFAULT_METHODS), help=methods_help)
        p.add_argument("--output", required=True, type=Path, help="output folder")
        p.add_argument("--max-keypoints", type=int, default=2048)
        p.add_argument("--max-size", type=int, default=None,
                       help="downscale images so the long side is at most this (px)")
        p.add_argument("--device", default=None, help="torch device for learned methods (default: auto)")
        p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
        p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("homography", help="MMA, homography accuracy, repeatability, matching score",
                       description="DATA: an HPatches/Oxford sequence or a folder of them, or any "
                                   "folder of images (seeded synthetic homographies + photometric change).")
    common(p)
    p.add_argument("--estimator", choices=HOMOGRAPHY_ESTIMATORS, default="cv2",
                   help="robust homography estimator: cv2 (USAC_MAGSAC) or lift (correspondence.find_homography)")
    p.add_argument("--ransac-threshold", type=float, default=3.0, help="inlier threshold (px)")
    p.add_argument("--eps", type=float, default=3.0, help="repeatability / matching-score threshold (px)")
    p.add_argument("--refine", nargs="?", const="all", default=None, metavar="METHODS",
                   help="also score each method (or the comma-separated METHODS) with its matches "
                        "refined before the fit (correspondence.refine_matches): rows '<method>+refine'")
    p.add_argument("--pairs-per-image", type=int, default=5, help="synthetic pairs per image")
    p.add_argument("--max-images", type=int, default=None, help="use at most this many images (synthetic)")
    p.add_argument("--glob", default=None, help="select images of the folder by pattern, e.g. 'img_09*'")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic homographies")
    p.add_argument("--max-zoom", type=float, default=2.0, help="largest synthetic zoom factor")
    p.add_argument("--max-rotation", type=float, default=30.0, help="largest synthetic rotation (deg)")
    p.add_argument("--no-figures", action="store_true")

    p = sub.add_parser("pose", help="relative-pose AUC@5/10/20 on pairs with ground-truth cameras",
                       description="DATA: Strecha scene(s) (images/ + gt_dense_cameras/), a COLMAP "
                                   "model or project (sparse/0 + images/), or a folder of photos "
                                   "(rendered two-plane scenes with exact poses).")
    common(p)
    p.add_argument("--estimator", choices=POSE_ESTIMATORS, default="cv2")
    p.add_argument("--ransac-threshold", type=float, default=1.0, help="epipolar inlier threshold (px)")
    p.add_argument("--gaps", default="1,2", help="pair views i and i+gap of ordered scenes")
    p.add_argument("--max-pairs", type=int, default=None)
    p.add_argument("--images", type=Path, default=None, help="image folder of a COLMAP model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-figures", action="store_true")

    p = sub.add_parser("speed", help="extraction time (median after warm-up) and keypoint counts",
                       description="DATA: any folder of images.")
    common(p)
    p.add_argument("--max-images", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    return parser


def _figure_pairs(pairs) -> List[str]:
    """The hardest (last) pair of the first and of the last sequence/group."""
    by_seq = {}
    for p in pairs:
        by_seq.setdefault(getattr(p, "sequence", p.group), []).append(p.name)
    seqs = list(by_seq.values())
    return sorted({seqs[0][-1], seqs[-1][-1]})


def _run(args) -> Path:
    from .report import run_metadata, write_report
    from .runner import run_homography_benchmark, run_pose_benchmark, run_speed_benchmark

    methods = parse_method_list(args.methods)
    unknown = [m for m in methods if m.partition(":")[0].lower() not in available_methods()]
    if unknown:
        raise ValueError(f"unknown method {unknown[0]!r}; registered: {', '.join(available_methods())}")
    fig_dir = args.output / "figures"
    builtin = args.data == "skimage"
    if args.task == "homography":
        warp = {"max_zoom": args.max_zoom, "max_rotation_deg": args.max_rotation}
        if builtin:
            pairs = synthetic_homography_pairs(skimage_photos()[: args.max_images], args.pairs_per_image,
                                               args.seed, max_size=args.max_size or 640, **warp)
        else:
            pairs = read_homography_dataset(args.data, args.max_size, pairs_per_image=args.pairs_per_image,
                                            max_images=args.max_images, seed=args.seed,
                                            pattern=args.glob, **warp)
        results = run_homography_benchmark(
            pairs, methods, args.max_keypoints, args.estimator, args.ransac_threshold, args.eps,
            None if args.no_figures else fig_dir, _figure_pairs(pairs), args.device, args.quiet,
            refine=_refine_arg(args.refine))
    elif args.task == "pose":
        data = Path(args.data)
        if builtin or (data.is_dir() and not any(data.rglob("*.camera"))
                       and not any(data.rglob("cameras.*")) and list_images(data)):
            textures = skimage_photos() if builtin else [ImageRef.from_path(p, 1024).load()
                                                         for p in list_images(data)]
            pairs = synthetic_pose_pairs(textures, n_pairs=args.max_pairs or 6, seed=args.seed)
        else:
            gaps = [int(g) for g in args.gaps.split(",") if g.strip()]
            pairs = read_pose_dataset(data, args.max_size or 1024, gaps, args.max_pairs, args.images)
        results = run_pose_benchmark(pairs, methods, args.max_keypoints, args.estimator,
                                     args.ransac_threshold, figure_dir=None if args.no_figures else fig_dir,
                                     figure_pairs=_figure_pairs(pairs), device=args.device, quiet=args.quiet)
    else:
        if builtin:
            from .readers import _to_gray_uint8

            refs = [ImageRef.from_array(f"skimage/{n}", resize_max(_to_gray_uint8(im), args.max_size)[0])
                    for n, im in zip(SKIMAGE_PHOTOS, skimage_photos())]
        else:
            files = list_images(args.data)
            if not files:
                raise FileNotFoundError(f"no image in {args.data}")
            refs = [ImageRef.from_path(p, args.max_size) for p in files]
        results = run_speed_benchmark(refs[: args.max_images], methods, args.max_keypoints,
                                      args.repeats, args.warmup, args.device, args.quiet)
    results["meta"] = run_metadata(args.command)
    paths = write_report(results, args.output)
    print(Path(paths["markdown"]).read_text())
    return paths["json"]


def main(argv: Optional[Sequence[str]] = None) -> Path:
    """Entry point of ``lift-bench``; returns the path of the ``results.json`` it wrote.

    Data and estimator problems exit with status 2 and a one-line message.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.command = "lift-bench " + " ".join(shlex.quote(a) for a in argv)
    import torch

    torch.set_num_threads(max(1, args.threads))
    try:
        return _run(args)
    except (FileNotFoundError, EstimatorUnavailable, ValueError) as exc:
        print(f"lift-bench {args.task}: error: {exc}", file=sys.stderr)
        raise SystemExit(2)


if __name__ == "__main__":  # pragma: no cover
    main()
