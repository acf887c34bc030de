"""``lift-build-patches``: build SfM patch files (schema ``lift-sfm-patches`` v1).

Examples::

    lift-build-patches synthetic --photos ../shared/data/photos --output runs/data/synthetic.h5
    lift-build-patches colmap --images ../shared/data/sfm/sceaux_castle/images \\
        --output runs/data/colmap_sceaux_castle.h5 --max-side 1600 --num-threads 2
    lift-build-patches colmap --images photos/ --model sparse/0 --database database.db \\
        --output scene.h5
    lift-build-patches brown --root liberty/ --output liberty.h5 --split test

Every command writes its file atomically and prints its summary; :func:`main` returns the path.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from .patches import PATCH_SIZE, PATCH_SUPPORT
from .schema import SPLITS, validate_patch_file

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="lift-build-patches", description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = ap.add_subparsers(dest="builder", required=True)

    def common(p):
        p.add_argument("--output", "-o", type=Path, required=True, help="target .h5 file")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--quiet", action="store_true", help="no progress bar")

    s = sub.add_parser("synthetic", help="random homographies + photometric change of photos",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    common(s)
    s.add_argument("--photos", type=Path, required=True, help="folder of photos (recursive)")
    s.add_argument("--groups-per-photo", type=int, default=1)
    s.add_argument("--tracks-per-group", type=int, default=64)
    s.add_argument("--views", type=int, nargs=2, default=(2, 4), metavar=("MIN", "MAX"))
    s.add_argument("--negatives-per-view", type=int, default=16)
    s.add_argument("--test-photos", nargs="*", default=None,
                   help="glob patterns (relative to --photos) held out as split 'test' "
                        "(default: lift.data.synthetic.DEFAULT_TEST_PHOTOS)")
    s.add_argument("--val-fraction", type=float, default=0.05)
    s.add_argument("--max-photos", type=int, default=None)
    s.add_argument("--min-sigma", type=float, default=1.6)
    s.add_argument("--patch-size", type=int, default=PATCH_SIZE)
    s.add_argument("--support", type=float, default=PATCH_SUPPORT,
                   help="patch half-width in units of sigma")

    c = sub.add_parser("colmap", help="SfM tracks from pycolmap (or an existing COLMAP model)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    common(c)
    c.add_argument("--images", type=Path, required=True, help="folder of photos")
    c.add_argument("--model", type=Path, default=None,
                   help="existing COLMAP model folder (skips SfM)")
    c.add_argument("--database", type=Path, default=None, help="database.db of --model")
    c.add_argument("--work-dir", type=Path, default=None,
                   help="where SfM writes images/, database.db, sparse/ (default: next to output)")
    c.add_argument("--max-side", type=int, default=1600)
    c.add_argument("--split", default="auto", choices=("auto",) + SPLITS)
    c.add_argument("--val-fraction", type=float, default=0.1)
    c.add_argument("--negatives-per-image", type=int, default=300)
    c.add_argument("--random-fraction", type=float, default=0.5)
    c.add_argument("--min-sigma", type=float, default=1.6)
    c.add_argument("--num-threads", type=int, default=2)
    c.add_argument("--camera-mode", default="auto", choices=("auto", "single", "per_image"))
    c.add_argument("--patch-size", type=int, default=PATCH_SIZE)
    c.add_argument("--support", type=float, default=PATCH_SUPPORT)

    b = sub.add_parser("brown", help="convert a Brown/UBC patch set (bmp grids, info.txt)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    common(b)
    b.add_argument("--root", type=Path, required=True, help="folder with patches*.bmp, info.txt")
    b.add_argument("--split", default="auto", choices=("auto",) + SPLITS)
    b.add_argument("--val-fraction", type=float, default=0.1)
    b.add_argument("--max-patches", type=int, default=None)
    return ap


def main(argv: Optional[Sequence[str]] = None) -> Path:
    """Run the console script; returns the path of the file written.

    Bad input (missing folders, wrong arguments, failed SfM) exits with status 2 and a one-line
    message instead of a traceback.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except (FileNotFoundError, ValueError, RuntimeError, ImportError) as exc:
        parser.error(f"{args.builder}: {exc}")


def _run(args) -> Path:
    progress = not args.quiet
    if args.builder == "synthetic":
        from .synthetic import DEFAULT_TEST_PHOTOS, build_synthetic

        path = build_synthetic(
            args.photos, args.output, groups_per_photo=args.groups_per_photo,
            tracks_per_group=args.tracks_per_group, views=tuple(args.views),
            negatives_per_view=args.negatives_per_view,
            test_photos=DEFAULT_TEST_PHOTOS if args.test_photos is None else args.test_photos,
            val_fraction=args.val_fraction, seed=args.seed, max_photos=args.max_photos,
            min_sigma=args.min_sigma, patch_size=args.patch_size, support=args.support,
            progress=progress)
    elif args.builder == "colmap":
        from .colmap import build_colmap

        path = build_colmap(
            args.output, images=args.images, model=args.model, database=args.database,
            work_dir=args.work_dir, max_side=args.max_side, split=args.split,
            val_fraction=args.val_fraction, negatives_per_image=args.negatives_per_image,
            random_fraction=args.random_fraction, min_sigma=args.min_sigma,
            num_threads=args.num_threads, camera_mode=args.camera_mode, seed=args.seed,
            patch_size=args.patch_size, support=args.support, progress=progress)
    else:
        from .brown import build_brown

        path = build_brown(args.root, args.output, split=args.split,
                           val_fraction=args.val_fraction, seed=args.seed,
                           max_patches=args.max_patches, progress=progress)
    info = validate_patch_file(path)
    print(f"wrote {path}: {info.num_patches} patches, {info.num_tracks} tracks, "
          f"{info.num_images} images, splits {info.split_counts}, kinds {info.kind_counts}",
          file=sys.stderr)
    return path


if __name__ == "__main__":  # pragma: no cover
    main()
