"""``lift-extract``: detect and describe images into an hloc-layout ``features.h5``.

Example::

    lift-extract images/ --output features.h5 --max-keypoints 2048
    lift-extract images/ --output features.h5 --scale-nms 1 --subpixel response   # for SfM

Images that are already in the output are skipped unless ``--overwrite``; an output extracted
with other settings (``--max-keypoints``, ``--model`` or the weights' content; the file's
``extract_conf`` attribute) is refused with exit status 2 rather than mixed. Unreadable images
are reported and skipped; the exit status is 1 if any image failed, 2 for usage errors. An
interrupted run resumes where it stopped (the part file ``features.h5.part-0-of-1`` beside the
output); this is lift-sfm's extraction path (:mod:`lift.sfm.extract`), with the matching
defaults of :class:`lift.LIFTConfig` instead of lift-sfm's.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import h5py

from ..image import IMAGE_EXTENSIONS

__all__ = ["main", "find_images", "extract_to_h5"]


def find_images(inputs: Sequence[str]) -> List[Tuple[Path, str]]:
    """Expand files and folders into ``(path, name)`` pairs; a folder's images are named by
    their path relative to the folder (``/`` separators), a file by its file name."""
    out = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS:
                    out.append((f, f.relative_to(p).as_posix()))
        elif p.is_file():
            out.append((p, p.name))
        else:
            raise FileNotFoundError(f"no such file or folder: {p}")
    names = [n for _, n in out]
    if len(set(names)) != len(names):
        raise ValueError("two inputs have the same image name; pass one folder instead of files")
    return out


def extract_to_h5(images: Sequence[Tuple[Path, str]], output: Path, max_keypoints: int = 2048,
                  device: Optional[str] = None, model: str = "default", overwrite: bool = False,
                  progress: bool = True, scale_nms: Optional[int] = None,
                  subpixel: Optional[str] = None, num_workers: int = 2) -> Tuple[Path, List[Tuple[str, str]]]:
    """Extract features for ``(path, name)`` images into ``output``. Returns the output path
    and the list of ``(name, error)`` for the given images that failed. ``scale_nms`` /
    ``subpixel``: :class:`lift.LIFTConfig` knobs (None: the runtime's defaults, tuned for
    matching; lift-sfm uses 1 / "response").

    The same code path as lift-sfm's extraction (:func:`lift.sfm.extract.extract_and_merge`):
    images decoded by ``num_workers`` DataLoader workers, written one complete group at a time
    to a part file beside ``output`` that an interrupted run resumes, then merged into
    ``output`` atomically (under torchrun: one part per rank, merged by rank 0).

    Raises:
        lift.h5io.StaleFeaturesError: ``output`` holds features extracted with other settings
            (and not ``overwrite``).
    """
    from ..pipeline import LIFTConfig
    from ..sfm.extract import ExtractConf, extract_and_merge, read_failures

    conf = ExtractConf("lift", max_keypoints, None, model, device, num_workers,
                       scale_nms=LIFTConfig.scale_nms if scale_nms is None else int(scale_nms),
                       subpixel=LIFTConfig.subpixel if subpixel is None else subpixel)
    output = Path(output)
    extract_and_merge(images, output, conf, overwrite, progress)
    names = {n for _, n in images}
    with h5py.File(output, "r") as f:
        failed = [(n, e) for n, e in read_failures(f) if n in names]
    return output, failed


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="lift-extract", description=__doc__.split("\n")[0])
    parser.add_argument("inputs", nargs="+", help="image files and/or folders (searched recursively)")
    parser.add_argument("--output", "-o", type=Path, default=Path("features.h5"))
    parser.add_argument("--max-keypoints", type=int, default=2048, help="<= 0 keeps all")
    parser.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda")
    parser.add_argument("--model", default="default", help="shipped weights name or a .pt path")
    parser.add_argument("--scale-nms", type=int, default=None,
                        help="neighbouring scales a keypoint must beat (default 0, for matching; "
                             "1 as lift-sfm: one keypoint per blob, for SfM)")
    parser.add_argument("--subpixel", default=None, choices=["quadratic", "response"],
                        help="sub-pixel positions: the soft-argmax of the detector's continuous "
                             "response (default, as lift-sfm) or a quadratic fit to its scores")
    parser.add_argument("--num-workers", type=int, default=2, help="image decoding worker processes")
    parser.add_argument("--overwrite", action="store_true", help="recompute images already in the output")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        images = find_images(args.inputs)
    except (FileNotFoundError, ValueError) as err:
        print(f"lift-extract: {err}", file=sys.stderr)
        return 2
    if not images:
        print("lift-extract: no images found in the inputs", file=sys.stderr)
        return 2
    try:
        out, failed = extract_to_h5(images, args.output, args.max_keypoints, args.device,
                                    args.model, args.overwrite, not args.quiet, args.scale_nms,
                                    args.subpixel, args.num_workers)
    except (FileNotFoundError, ValueError) as err:
        print(f"lift-extract: {err}", file=sys.stderr)
        return 2
    for name, err in failed:
        print(f"lift-extract: skipped {name}: {err}", file=sys.stderr)
    print(f"wrote {out} ({len(images) - len(failed)} images)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
