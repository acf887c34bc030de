"""``lift-sfm``: structure from motion from a folder of images in one command.

Example::

    lift-sfm images/ out/ --extractor lift --max-keypoints 2048
    lift-sfm images/ out/ --extractor sift --pairs sequential:5 \\
        --camera-model PINHOLE --camera-params 1380,1382,768,512

Writes ``out/features.h5``, ``out/pairs.txt``, ``out/matches.h5`` (hloc layouts),
``out/database.db`` (COLMAP; the keypoints of every verified track moved onto one common point
by patch alignment, ``correspondence.refine``, unless ``--no-refine``) and the models in COLMAP's
binary format under ``out/sparse/`` (largest first, ``sparse/0``). Re-running skips finished steps unless ``--overwrite``; a
step whose settings changed (``out/lift-sfm.json``, ``features.h5``'s ``extract_conf``) is
recomputed with the steps after it.
Under ``torchrun --nproc_per_node N -m lift.cli.sfm ...`` extraction is split over N
processes. Unreadable images are skipped and listed at the end.

Exit status: 0 success; 1 the scene did not reconstruct (or too few readable images);
2 usage errors (missing folder, bad options).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

__all__ = ["main"]


def _params(text: Optional[str]):
    if text is None:
        return None
    try:
        return [float(x) for x in text.replace(" ", ",").split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"camera params must be comma-separated numbers, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    from ..sfm.extract import EXTRACTORS

    p = argparse.ArgumentParser(prog="lift-sfm", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image_dir", type=Path, help="folder of images (searched recursively)")
    p.add_argument("output_dir", type=Path, help="where features, matches, database and sparse/ go")
    g = p.add_argument_group("features")
    g.add_argument("--extractor", default="lift", choices=sorted(EXTRACTORS))
    g.add_argument("--max-keypoints", type=int, default=2048, help="per image; <= 0 keeps all")
    g.add_argument("--resize-max", type=int, default=None,
                   help="downscale images to this long side for extraction (keypoints are mapped back)")
    g.add_argument("--model", default="default", help="LIFT weights: shipped name or .pt path")
    g.add_argument("--device", default=None, help="torch device (cpu, cuda, ...)")
    g.add_argument("--num-workers", type=int, default=2, help="image-decoding worker processes")
    g.add_argument("--scale-nms", type=int, default=1,
                   help="lift: neighbouring scales a keypoint must beat (0, the matching default, "
                        "gives near-duplicate tracks)")
    g.add_argument("--noise-threshold", type=float, default=8.0,
                   help="lift: smooth images whose estimated noise std exceeds this (grey levels); "
                        "<= 0 disables (lift.denoise)")
    g.add_argument("--subpixel", default="response", choices=["response", "quadratic"],
                   help="lift: sub-pixel positions from the detector's continuous response "
                        "(precise; also the matching default) or a quadratic fit to its scores")
    g = p.add_argument_group("matching")
    g.add_argument("--pairs", default="exhaustive", help="exhaustive | sequential:K | an hloc pairs file")
    g.add_argument("--matcher", default="mnn", choices=["mnn", "ratio", "mnn_ratio"])
    g.add_argument("--ratio", type=float, default=0.8)
    g.add_argument("--verifier", default="lift", choices=["lift", "colmap"],
                   help="lift: our batched F-RANSAC; colmap: pycolmap.verify_matches")
    g.add_argument("--verify-threshold", type=float, default=None,
                   help="inlier threshold px (default 1.0 Sampson for lift, 4.0 for colmap)")
    g.add_argument("--no-refine", action="store_true",
                   help="store the detected keypoint positions instead of moving the keypoints of "
                        "each verified track onto one common point (correspondence.refine)")
    g = p.add_argument_group("cameras")
    g.add_argument("--camera-model", default="SIMPLE_RADIAL", help="COLMAP camera model name")
    g.add_argument("--camera-params", type=_params, default=None,
                   help="known intrinsics in COLMAP's order, comma-separated (then kept fixed)")
    g.add_argument("--camera-mode", default="auto", choices=["auto", "single", "per_image"])
    g.add_argument("--refine-intrinsics", action="store_true",
                   help="refine given --camera-params in bundle adjustment")
    p.add_argument("--mapper-threads", type=int, default=-1,
                   help="COLMAP mapper threads (-1: all cores; 1: the same model on every run)")
    p.add_argument("--overwrite", action="store_true", help="recompute every step")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--verbose", action="store_true", help="show COLMAP's log")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    from ..colmap.database import CameraSpec
    from ..sfm import ExtractConf, MatchConf, RefineConf, SfMConfig, SfMError, VerifyConf, run

    args = build_parser().parse_args(argv)
    try:
        threshold = args.verify_threshold or (1.0 if args.verifier == "lift" else 4.0)
        conf = SfMConfig(
            extract=ExtractConf(args.extractor, args.max_keypoints, args.resize_max, args.model,
                                args.device, args.num_workers, args.scale_nms, args.subpixel,
                                args.noise_threshold if args.noise_threshold > 0 else None),
            pairs=args.pairs,
            match=MatchConf(args.matcher, args.ratio, args.device),
            verify=VerifyConf(args.verifier, threshold, device=args.device,
                              refine=None if args.no_refine else RefineConf()),
            camera=CameraSpec(args.camera_model, args.camera_params, args.camera_mode),
            fix_intrinsics=None if not args.refine_intrinsics else False,
            mapper_threads=args.mapper_threads)
        result = run(args.image_dir, args.output_dir, conf, args.overwrite,
                     progress=not args.quiet, verbose=args.verbose)
    except SfMError as err:
        print(f"lift-sfm: {err}", file=sys.stderr)
        return 1
    except (FileNotFoundError, ValueError, KeyError) as err:
        print(f"lift-sfm: {err}", file=sys.stderr)
        return 2
    except ImportError as err:
        print(f"lift-sfm: {err}", file=sys.stderr)
        return 2
    if result is None:  # a torchrun rank other than 0: its share of extraction is done
        return 0
    for name, reason in result.failed:
        print(f"lift-sfm: skipped {name}: {reason}", file=sys.stderr)
    times = ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items())
    print(f"lift-sfm: {result.stats}\n  model: {result.model}\n  times: {times}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
